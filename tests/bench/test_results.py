import pytest

from decodekit.bench.results import check_document, figures
from decodekit.bench.runner import Record


def _record(method, seconds, new_tokens=10, forwards=10, computed=9, identical=True, peak=None, near_tie=None):
    return Record(method=method, question_id=0, category="c", turn=0, prompt_tokens=5, new_tokens=new_tokens,
                  seconds=seconds, forwards=forwards, tokens_computed=computed, identical=identical,
                  peak_memory_bytes=peak, memory_added_bytes=None, near_tie=near_tie)


def test_figures_definitions():
    reference = [_record("hf-greedy", 2.0), _record("hf-greedy", 2.0)]
    fast = [_record("m", 1.0, forwards=4, computed=30, peak=2 * 1024 * 1024),
            _record("m", 1.0, forwards=6, computed=50, identical=False)]
    got = figures(fast, reference)
    assert got.prompts == 2 and got.new_tokens == 20 and got.seconds == 2.0
    assert got.tokens_per_second == pytest.approx(10.0)
    assert got.speedup == pytest.approx(2.0) and got.time_ratio == pytest.approx(2.0)
    assert got.mean_tokens_per_forward == pytest.approx(20 / 10)
    assert got.tokens_computed_per_step == pytest.approx(80 / (10 - 2))  # prefills are not steps
    assert got.identical_fraction == 0.5
    assert (got.near_ties, got.other_differences) == (0, 1)  # a difference not classified as a near-tie
    ties = figures([_record("m", 1.0, identical=False, near_tie=True), _record("m", 1.0, identical=False,
                    near_tie=False), _record("m", 1.0, identical=False, near_tie=True), _record("m", 1.0)], reference)
    assert (ties.identical_fraction, ties.near_ties, ties.other_differences) == (0.25, 2, 1)
    assert got.peak_memory_mib == pytest.approx(2.0) and got.memory_added_mib is None


def test_unknown_counts_give_none_not_a_guess():
    got = figures([_record("m", 1.0, forwards=None, computed=None)], [_record("hf-greedy", 1.0)])
    assert got.mean_tokens_per_forward is None and got.tokens_computed_per_step is None


def test_check_document_names_what_is_missing():
    with pytest.raises(ValueError, match="lacks .*summary"):
        check_document({"schema": "decodekit-bench/1"})


def _batch_record(method, ids, seconds, batch_size=None, new_tokens=None):
    from decodekit.bench.batches import BatchRecord

    rows = len(ids)
    return BatchRecord(method=method, batch_size=batch_size or rows, batch_index=0, question_ids=ids,
                       categories=["c"] * rows, prompt_tokens=[5] * rows, padded_length=5,
                       new_tokens=new_tokens or [10] * rows, seconds=seconds, forwards=None,
                       identical=[True] * rows, peak_memory_bytes=None, memory_added_bytes=None)


def test_slowest_row_alone_is_each_batchs_longest_row_decoded_alone():
    from decodekit.bench.results import batch_figures, slowest_row_alone_seconds

    alone = [_batch_record("m", [q], s) for q, s in [(1, 2.0), (2, 5.0), (3, 1.0), (4, 4.0), (5, 3.0)]]
    pairs = [_batch_record("m", [1, 2], 6.0), _batch_record("m", [3, 4], 5.0), _batch_record("m", [5], 3.5, batch_size=2)]
    assert slowest_row_alone_seconds(pairs, alone) == 5.0 + 4.0 + 3.0
    assert slowest_row_alone_seconds(pairs, alone[:4]) is None  # row 5 never ran alone
    assert slowest_row_alone_seconds([], alone) is None
    reference = [_batch_record("hf-greedy", [1, 2], 7.0), _batch_record("hf-greedy", [3, 4], 7.0),
                 _batch_record("hf-greedy", [5], 7.0, batch_size=2)]
    got = batch_figures(pairs, reference, batch_size=2, method="m", alone=alone)
    assert got.speedup == pytest.approx(21.0 / 14.5)
    assert got.slowest_row_alone == pytest.approx(21.0 / 12.0)  # hf-greedy's 21 s against 12 s for the same tokens
    assert batch_figures(pairs, reference, batch_size=2, method="m").slowest_row_alone is None

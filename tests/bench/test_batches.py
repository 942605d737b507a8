"""Batch runs of the bench: padding and grouping, refusals, the batch section of results.json and results.md,
and the batch-size-1 run left as it was."""

import json

import pytest
import torch

from decodekit.bench import check_document, run_bench
from decodekit.bench.api import plan_methods
from decodekit.bench.batches import check_batch_sizes, group, pad_id_for
from decodekit.bench.methods import (default_method_texts, parse_method, pad_left, run_hf, run_hf_batch,
                                     until_eos)
from decodekit.bench.results import BATCH_FIGURE_KEYS, TOP_LEVEL_KEYS
from decodekit.bench.runner import as_prompts
from decodekit.cli import main, parse_args
from decodekit.errors import InputError

EQUAL = [[1, 5, 7, 9, 5, 7, 9], [1, 3, 4, 3, 4, 3, 4], [1, 6, 6, 8, 6, 6, 8]]  # equal lengths: no pads
UNEQUAL = [[1, 5, 7, 9, 5, 7, 9, 5, 7], [1, 3, 4], [1, 6, 6, 8, 6]]


def test_pad_left_right_aligns_rows_and_masks_the_pads():
    batch = pad_left([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert batch.input_ids.dtype == torch.long and batch.pad_id == 0
    assert pad_left([[4, 4], [5, 5]], pad_id=3).attention_mask.tolist() == [[1, 1], [1, 1]]
    with pytest.raises(InputError, match="every row at least one token"):
        pad_left([[1], []], pad_id=0)


def test_prompts_are_grouped_in_order_the_last_batch_holding_the_remainder():
    prompts = as_prompts([[1, i] for i in range(5)])
    batches = group(prompts, 2)
    assert [[p.question_id for p in b] for b in batches] == [[0, 1], [2, 3], [4]]
    assert [[p.question_id for p in b] for b in group(prompts, 8)] == [[0, 1, 2, 3, 4]]


def test_new_tokens_are_counted_up_to_and_including_the_first_eos():
    assert until_eos([4, 2, 0, 0], frozenset({2})) == [4, 2]
    assert until_eos([4, 5, 6], frozenset({2})) == [4, 5, 6]
    assert until_eos([4, 7, 2, 7], frozenset({2, 7})) == [4, 7]
    assert until_eos([0, 0, 3], frozenset()) == [0, 0, 3]


class _Tok:
    def __init__(self, pad, eos):
        self.pad_token_id, self.eos_token_id = pad, eos


def test_pad_id_is_the_tokenizers_pad_else_its_eos_else_the_models(tiny, monkeypatch):
    config = tiny.generation_config  # tiny models are cached: changed through monkeypatch, restored after
    assert pad_id_for(_Tok(pad=5, eos=7), tiny) == 5
    assert pad_id_for(_Tok(pad=None, eos=7), tiny) == 7
    monkeypatch.setattr(config, "pad_token_id", None)
    monkeypatch.setattr(config, "eos_token_id", [9, 2])
    assert pad_id_for(None, tiny) == 9
    monkeypatch.setattr(config, "pad_token_id", 4)
    assert pad_id_for(None, tiny) == 4


def test_batch_sizes_are_checked():
    assert check_batch_sizes([1, 2, 8]) == (1, 2, 8)
    with pytest.raises(InputError, match="given twice: 2"):
        check_batch_sizes([2, 4, 2])
    with pytest.raises(InputError, match="integer >= 1, got 0"):
        check_batch_sizes([0])


@pytest.mark.parametrize("method", ["hf-prompt-lookup", "hf-prompt-lookup:num_tokens=4", "hf-assisted:draft=x"])
def test_hf_methods_that_decode_one_prompt_are_refused_for_batches(method):
    with pytest.raises(InputError, match=rf"method '{method}' cannot run batch size 4: .*batch size 1 only"):
        plan_methods(["hf-greedy", method], batch_sizes=[1, 4])
    specs, _ = plan_methods(["hf-greedy", method], batch_sizes=[1])
    assert specs[1].label == method


def test_batch_defaults_leave_out_the_hf_methods_of_batch_size_one():
    batch = [s.label for s in plan_methods(None, batch_sizes=[1, 2])[0]]
    assert "hf-prompt-lookup" not in batch and batch[:2] == ["hf-greedy", "greedy"]
    assert [s.label for s in plan_methods(None, batch_sizes=[1])[0]] == default_method_texts()
    assert "hf-prompt-lookup" in default_method_texts()


@pytest.mark.parametrize("argv, says", [
    (["bench", "--batch-size", "2", "--strategies", "hf-prompt-lookup"],
     "method 'hf-prompt-lookup' cannot run batch size 2"),
    (["bench", "--batch-sizes", "1", "2", "--sweep", "lookahead"], "--sweep runs with batch size 1 only"),
    (["bench", "--batch-size", "4", "--multi-turn"], "--multi-turn runs with batch size 1 only"),
    (["bench", "--batch-size", "2", "2"], "batch size(s) given twice: 2"),
    (["bench", "--device", "cuda:x"], "--device must be 'cpu', 'cuda' or 'cuda:N', got 'cuda:x'"),
    (["bench", "--device", f"cuda:{torch.cuda.device_count()}"], f"torch sees {torch.cuda.device_count()} CUDA device(s)"),
])
def test_cli_refuses_before_loading_any_model(argv, says, capsys):
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_cli_batch_size_spellings():
    assert parse_args(["bench"]).batch_sizes is None
    assert parse_args(["bench", "--batch-size", "4"]).batch_sizes == [4]
    assert parse_args(["bench", "--batch-sizes", "1", "2", "8"]).batch_sizes == [1, 2, 8]
    with pytest.raises(SystemExit):
        parse_args(["bench", "--batch-size", "0"])


def test_hf_greedy_on_a_left_padded_batch_equals_each_prompt_alone(tiny, monkeypatch):
    """The pads and the mask are what model.generate expects: each row as if decoded alone, its eos included,
    the pad fill after it not counted."""
    spec = parse_method("hf-greedy")
    alone = [run_hf(spec, tiny, torch.tensor([row]), 12).new_tokens for row in UNEQUAL]
    assert alone[0][3] not in alone[0][:3]
    # row 0 now stops after 4 tokens, the others may not (the cached model's config is restored after the test)
    monkeypatch.setattr(tiny.generation_config, "eos_token_id", alone[0][3])
    alone = [run_hf(spec, tiny, torch.tensor([row]), 12).new_tokens for row in UNEQUAL]
    assert len(alone[0]) == 4
    batch = pad_left(UNEQUAL, pad_id=1)  # the bos id, in every prompt: only the mask tells pads from prompt
    got = run_hf_batch(spec, tiny, batch, 12)
    assert got.new_tokens == tuple(alone)
    assert got.forwards == max(len(a) for a in alone)  # one forward per step for the whole batch


def _spy_generate(monkeypatch):
    import decodekit.api

    real, calls = decodekit.api.generate, []

    def generate(model, input_ids, *args, **kwargs):
        calls.append((input_ids.clone(), kwargs["attention_mask"].clone(), kwargs["pad_token_id"]))
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(decodekit.api, "generate", generate)
    return calls


def test_batch_run_writes_the_batch_section(tiny, tmp_path, chunk_strategy, monkeypatch):
    calls = _spy_generate(monkeypatch)
    methods = ["hf-greedy", "greedy", f"{chunk_strategy}:k=2"]
    doc = run_bench(tiny, prompts=EQUAL, methods=methods, max_new_tokens=6, progress=False, warmup=False,
                    batch_sizes=[1, 2], out=tmp_path, command=["decodekit", "bench", "batch"])
    check_document(doc)
    check_document(json.loads((tmp_path / "results.json").read_text()))
    batch = doc["batch"]
    assert doc["config"]["batch_sizes"] == [1, 2] and batch["batch_sizes"] == [1, 2] and batch["padding"] == "left"
    assert doc["summary"] is None and doc["records"] == []
    assert "cpu_family" in doc["machine"] and doc["machine"]["cost_curve"]["cached"] == 256
    table = {(row["batch_size"], row["method"]): row for row in batch["table"]}
    assert list(table) == [(1, m) for m in methods] + [(2, m) for m in methods]
    for row in batch["table"]:
        assert set(BATCH_FIGURE_KEYS) <= set(row)
        assert row["identical_fraction"] == 1.0 and row["prompts"] == 3 and row["tokens_per_second"] > 0
    assert table[(2, "hf-greedy")]["speedup"] == pytest.approx(1.0)
    assert [r["batches_run"] for r in batch["runs"]] == [3, 2]

    records = [r for r in batch["records"] if r["batch_size"] == 2 and r["method"] == "greedy"]
    assert [len(r["new_tokens"]) for r in records] == [2, 1] and records[0]["question_ids"] == [0, 1]
    figs = table[(2, "greedy")]
    assert figs["new_tokens"] == sum(sum(r["new_tokens"]) for r in records)
    assert figs["mean_row_latency_s"] == pytest.approx((2 * records[0]["seconds"] + records[1]["seconds"]) / 3)
    assert figs["tokens_per_second"] == pytest.approx(figs["new_tokens"] / sum(r["seconds"] for r in records))
    reference = sum(r["seconds"] for r in batch["records"] if r["batch_size"] == 2 and r["method"] == "hf-greedy")
    assert figs["speedup"] == pytest.approx(figs["tokens_per_second"]
                                            / (table[(2, "hf-greedy")]["new_tokens"] / reference))
    # the batch-size-1 run gives each batch's slowest row alone: greedy's batches against its rows' own calls
    alone = {r["question_ids"][0]: r["seconds"] for r in batch["records"] if r["batch_size"] == 1 and r["method"] == "greedy"}
    slowest = alone[2] + max(alone[0], alone[1])
    assert figs["slowest_row_alone"] == pytest.approx(figs["new_tokens"] / slowest
                                                      / (table[(2, "hf-greedy")]["new_tokens"] / reference))
    assert all(table[(1, m)]["slowest_row_alone"] is None for m in methods)

    two_rows = [c for c in calls if c[0].shape[0] == 2]  # decodekit got each batch whole, with its mask
    assert two_rows and all(mask.tolist() == [[1] * 7, [1] * 7] and pad == 0 for _, mask, pad in two_rows)

    markdown = (tmp_path / "results.md").read_text()
    assert "## Batches" in markdown and "batch sizes 1, 2" in markdown and "left-padded with id 0" in markdown
    assert "| 2 | greedy | 3 |" in markdown and "## Overall" not in markdown
    assert (tmp_path / "throughput_vs_batch_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "speedup_by_category.png").exists()


@pytest.mark.parametrize("threshold", [None, 1e9])
def test_a_non_identical_row_lowers_the_identical_fraction(tiny, monkeypatch, threshold):
    from decodekit.bench import divergence, methods

    real = methods.run_decodekit_batch

    def off_by_one(*args, **kwargs):
        got = real(*args, **kwargs)
        rows = [list(r) for r in got.new_tokens]
        rows[0][-1] += 1  # one token of the first row differs from hf-greedy's
        return methods.BatchResult(new_tokens=rows, seconds=got.seconds, forwards=got.forwards)

    monkeypatch.setattr(methods, "run_decodekit_batch", off_by_one)
    if threshold is not None:  # every difference now counts as a near-tie
        monkeypatch.setitem(divergence.NEAR_TIE_MARGIN, "float64", threshold)
    doc = run_bench(tiny, prompts=EQUAL, methods=["greedy"], max_new_tokens=4, progress=False, warmup=False,
                    batch_sizes=[3])
    figs = {row["method"]: row for row in doc["batch"]["table"]}
    assert figs["greedy"]["identical_fraction"] == pytest.approx(2 / 3)
    reference, greedy = doc["batch"]["records"]
    assert greedy["identical"] == [False, True, True]
    # the differing row is classified by hf-greedy's top-2 margin at its first differing token (the last)
    assert greedy["first_difference"] == [3, None, None] and reference["first_difference"] == [None] * 3
    shared = EQUAL[0] + list(_hf_rows(tiny, EQUAL, 4)[0][:3])
    assert greedy["margin"][0] == pytest.approx(divergence.top2_margin(tiny, shared), abs=1e-12)
    assert greedy["margin"][0] > 1e-6  # fp64: far above float64's near-tie margin
    near = threshold is not None
    assert greedy["near_tie"] == [near, None, None]
    assert (figs["greedy"]["near_ties"], figs["greedy"]["other_differences"]) == ((1, 0) if near else (0, 1))
    assert doc["config"]["near_tie_margin"] == (threshold or divergence.NEAR_TIE_MARGIN["float64"])


def _hf_rows(model, prompts, new):
    """HF greedy's new tokens for each prompt alone (a tiny model; no eos in EQUAL's prompts' continuations)."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt])  # (1, T)
        got = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        out.append(got[0, ids.shape[1]:].tolist())
    return out


def test_check_document_names_a_missing_batch_row(tiny):
    doc = run_bench(tiny, prompts=EQUAL[:2], methods=["greedy"], max_new_tokens=3, progress=False, warmup=False,
                    batch_sizes=[2])
    doc["batch"]["table"] = [row for row in doc["batch"]["table"] if row["method"] != "greedy"]
    with pytest.raises(ValueError, match="batch table lacks batch size 2 / 'greedy'"):
        check_document(doc)


def test_time_limit_is_shared_by_the_batch_sizes(tiny):
    doc = run_bench(tiny, prompts=EQUAL + EQUAL[:1], methods=["greedy"], max_new_tokens=3, progress=False,
                    warmup=False, batch_sizes=[1, 2], time_limit=1e-9)
    assert [(r["batch_size"], r["batches_run"], r["prompts_run"]) for r in doc["batch"]["runs"]] == [(1, 1, 1), (2, 1, 2)]
    assert doc["config"]["prompts_run"] == 1 and doc["config"]["prompts_planned"] == 4


def test_an_interrupt_keeps_the_finished_batches(tiny, tmp_path, monkeypatch):
    from decodekit.bench import batches

    real, calls = batches.run_batch, []

    def run_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(batches, "run_batch", run_batch)
    doc = run_bench(tiny, prompts=EQUAL, methods=["greedy"], max_new_tokens=3, progress=False, warmup=False,
                    batch_sizes=[1, 2], out=tmp_path)
    assert doc["config"]["interrupted"] is True and [r["batches_run"] for r in doc["batch"]["runs"]] == [2]
    assert "**not run: batch size 2**" in (tmp_path / "results.md").read_text()


def test_batch_size_one_alone_is_the_prompt_by_prompt_run(tiny, tmp_path):
    plain = run_bench(tiny, prompts=UNEQUAL, methods=["greedy"], max_new_tokens=4, progress=False, warmup=False)
    one = run_bench(tiny, prompts=UNEQUAL, methods=["greedy"], max_new_tokens=4, progress=False, warmup=False,
                    batch_sizes=[1], out=tmp_path)
    assert list(one) == list(plain) == list(TOP_LEVEL_KEYS) and "batch" not in one
    assert "batch_sizes" not in one["config"] and set(one["config"]) == set(plain["config"])
    assert [(r["method"], r["question_id"], r["new_tokens"]) for r in one["records"]] == \
        [(r["method"], r["question_id"], r["new_tokens"]) for r in plain["records"]]
    assert one["summary"]["overall"]["greedy"]["prompts"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json", "results.md", "speedup_by_category.png", "tokens_per_step_vs_compute.png"]
    assert "## Overall" in (tmp_path / "results.md").read_text()


def test_decodekit_methods_on_left_padded_batches(tiny):
    doc = run_bench(tiny, prompts=UNEQUAL, methods=["greedy", "lookahead"], max_new_tokens=6, progress=False,
                    warmup=False, batch_sizes=[3])
    assert all(row["identical_fraction"] == 1.0 for row in doc["batch"]["table"])
    # the batch of 3 goes through one forward per step: fewer forwards than tokens
    greedy = [r for r in doc["batch"]["records"] if r["method"] == "greedy"]
    assert all(r["forwards"] < sum(r["new_tokens"]) for r in greedy)


LONG = "Tell me, at some length and in plain words, how a river finds its way to the sea"


def test_cli_batch_run_end_to_end(tiny, toy_tokenizer, tmp_path, monkeypatch, capsys):
    """`decodekit bench --batch-size 1 2` on questions through a chat template; the model loading stubbed."""
    import decodekit.bench.api
    import decodekit.core.backend

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": c, "turns": [f"{LONG} ({i})"]}) + "\n"
                                 for i, c in enumerate(["writing", "writing", "qa"])))
    monkeypatch.setattr(decodekit.bench.api, "model_folder", lambda name: tmp_path)
    monkeypatch.setattr(decodekit.bench.api, "load_model", lambda name, dtype="float32", tp_size=None, device="cpu": (tiny, toy_tokenizer))
    monkeypatch.setattr(decodekit.core.backend, "load_tokenizer", lambda folder: toy_tokenizer)
    monkeypatch.setattr(decodekit.core.backend, "load_config", lambda folder: tiny.config)
    out = tmp_path / "out"
    argv = ["bench", "--questions", str(questions), "--batch-size", "1", "2", "--strategies", "hf-greedy", "greedy",
            "--max-new-tokens", "4", "--no-warmup", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "batch sizes 1 2" in printed.err
    assert printed.out.splitlines()[0].split()[:3] == ["batch", "size", "method"]
    assert len(printed.out.splitlines()) == 2 + 2 * 2  # header, rule, (1, 2) x (hf-greedy, greedy)
    doc = json.loads((out / "results.json").read_text())
    check_document(doc)
    assert doc["command"] == ["decodekit", *argv] and doc["config"]["per_category"] == 2
    records = [r for r in doc["batch"]["records"] if r["batch_size"] == 2 and r["method"] == "greedy"]
    # batches follow the selection's order (round robin over the categories)
    assert [r["question_ids"] for r in records] == [[0, 2], [1]]
    assert [r["categories"] for r in records] == [["writing", "qa"], ["writing"]]
    assert records[0]["prompt_tokens"] == [61, 61] and records[0]["padded_length"] == 61


def test_device_names_a_gpu_torch_sees_and_one_process(monkeypatch, capsys):
    """--device is checked against torch's CUDA devices (faked here: one GPU) and refused beside --nproc."""
    from decodekit.cli import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert [check_device(name) for name in ("cpu", "cuda", "cuda:0")] == ["cpu", "cuda", "cuda:0"]
    with pytest.raises(InputError, match=r"--device 'cuda:1': torch sees 1 CUDA device\(s\)"):
        check_device("cuda:1")
    for command in (["bench"], ["generate", "Hi"]):
        assert main([*command, "--device", "cuda", "--nproc", "2"]) == 2
        assert "--device cuda runs one process; --nproc 2 shards the model" in capsys.readouterr().err

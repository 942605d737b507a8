"""Lookahead decoding: edge cases, the pool, the trie, and the statistics it reports."""

import attrs
import pytest
import torch

import decodekit
from decodekit.errors import StrategyParameterError
from decodekit.strategies.lookahead import LookaheadParams, choose_candidates
from decodekit.strategies.ngram_pool import ContextIndex, NgramPool, Trie
from decodekit.testing import tiny_model

LOOPING = dict(arch="gpt2", seed=1, vocab_size=12, init=0.3)  # greedy falls into a loop: the pool hits


def run(strategy, max_new=48, eos=(), prompt=(5, 6, 7, 8, 5, 6, 7, 8, 5, 6), **params):
    model = tiny_model(**LOOPING)
    ids = torch.tensor([list(prompt)])
    return decodekit.generate(model, ids, strategy, max_new_tokens=max_new, eos_token_id=list(eos), **params)


def test_repetitive_output_commits_several_tokens_per_step():
    greedy, out = run("greedy"), run("lookahead", W=4, N=5, G=8, C=0)  # the paper's pool only
    assert out.sequences.tolist() == greedy.sequences.tolist()
    assert out.stats.mean_accepted > 2.0 and max(out.stats.accepted_histogram) == 5  # N tokens, bonus included
    assert out.stats.steps < greedy.stats.steps


def test_context_candidates_commit_up_to_l_plus_one_tokens():
    greedy = run("greedy")
    paper = run("lookahead", W=1, N=3, G=2, C=0)
    out = run("lookahead", W=1, N=3, G=2, C=1, L=9)
    assert out.sequences.tolist() == greedy.sequences.tolist()
    assert max(paper.stats.accepted_histogram) == 3
    assert 3 < max(out.stats.accepted_histogram) <= 10  # past N's limit; at most L tokens plus the bonus
    assert out.stats.steps < paper.stats.steps


def test_g0_is_greedy_one_token_per_step():
    out = run("lookahead", W=3, N=4, G=0)
    assert out.sequences.tolist() == run("greedy").sequences.tolist()
    assert dict(out.stats.accepted_histogram) == {1: 48}


@pytest.mark.parametrize("params", [dict(W=1, N=2, G=1), dict(W=1, N=8, G=16), dict(W=16, N=2, G=3)])
def test_extreme_shapes(params):
    assert run("lookahead", **params).sequences.tolist() == run("greedy").sequences.tolist()


@pytest.mark.parametrize("max_new", [1, 2, 3, 7, 13])
def test_max_new_tokens_inside_an_accepted_ngram(max_new):
    out = run("lookahead", max_new=max_new, W=4, N=6, G=8)
    assert out.sequences.tolist() == run("greedy", max_new=max_new).sequences.tolist()
    assert out.stats.new_tokens == max_new


def test_eos_inside_an_accepted_ngram_cuts_there():
    free = run("greedy").sequences[0, 10:].tolist()
    eos = free[20]
    out = run("lookahead", eos=[eos], W=4, N=6, G=8)
    expected = run("greedy", eos=[eos])
    assert out.sequences.tolist() == expected.sequences.tolist()
    assert out.sequences[0, -1].item() == eos and eos not in out.sequences[0, 10:-1].tolist()


def test_parameter_errors():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(StrategyParameterError, match=r"lookahead: W must be >= 1, got 0"):
        decodekit.generate(model, ids, "lookahead", W=0)
    with pytest.raises(StrategyParameterError, match=r"unknown parameter 'w' for 'lookahead'; did you mean 'W'\?"):
        decodekit.generate(model, ids, "lookahead", w=15)
    with pytest.raises(StrategyParameterError, match=r"lookahead: N must be >= 2, got 1"):
        decodekit.generate(model, ids, "lookahead", N=1)


def test_pool_keeps_g_most_recent_without_duplicates():
    pool = NgramPool(n=3, capacity=2)
    pool.add(1, (2, 3))
    pool.add(1, (4, 5))
    pool.add(1, (2, 3))  # seen again: becomes the most recent, no duplicate
    pool.add(1, (6, 7))
    assert pool.candidates(1, 2) == [(6, 7), (2, 3)]
    assert pool.candidates(1, 1) == [(6,), (2,)]
    assert pool.candidates(9, 2) == [] and pool.candidates(1, 0) == []


def test_pool_from_sequence_adds_every_full_ngram_once():
    pool = NgramPool(n=3, capacity=4)
    pool.add_sequence([1, 2, 3, 1, 2, 4])
    assert pool.table == {1: [(2, 4), (2, 3)], 2: [(3, 1)], 3: [(1, 2)]}
    pool.add_sequence([1, 2, 3, 1, 2, 4, 7], first_end=6)  # only n-grams ending at the new token
    assert pool.table[2] == [(4, 7), (3, 1)]


def test_context_index_prefers_the_longest_match_then_the_most_recent():
    index = ContextIndex(max_context=3)
    index.extend([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3])
    # suffix (1, 2, 3) occurred once before, followed by 4; (2, 3) also before 5; (3,) adds nothing new
    assert index.candidates(count=3, max_length=2) == [(4, 9), (5, 1)]
    assert index.candidates(count=1, max_length=4) == [(4, 9, 2, 3)]
    index.extend([7])  # suffix (7,): only the occurrence that is the suffix itself
    assert index.candidates(count=2, max_length=2) == []
    index.extend([1, 2, 3])  # two earlier (1, 2, 3): the most recent first
    assert index.candidates(count=3, max_length=3) == [(7, 1, 2), (4, 9, 2), (5, 1, 2)]
    assert index.candidates(count=0, max_length=3) == [] and index.candidates(count=2, max_length=0) == []


def test_candidates_put_context_first_then_the_pool_at_most_g():
    index = ContextIndex(max_context=4)
    index.extend([7, 1, 2, 3, 4, 9, 7])  # the suffix (7,) occurred before, followed by 1 2 3 4
    pool = NgramPool(n=3, capacity=4)
    for continuation in [(5, 6), (1, 2), (1, 8), (2, 2)]:  # the most recent first: (2, 2) (1, 8) (1, 2) (5, 6)
        pool.add(7, continuation)
    params = LookaheadParams(C=1, L=3, N=3, G=3)
    assert choose_candidates(params, index, pool, pending=7, room=10) == [(1, 2, 3), (2, 2), (1, 8)]
    assert choose_candidates(attrs.evolve(params, G=5), index, pool, 7, 10) == [(1, 2, 3), (2, 2), (1, 8), (1, 2), (5, 6)]
    assert choose_candidates(attrs.evolve(params, C=0), index, pool, 7, 10) == [(2, 2), (1, 8), (1, 2)]
    assert choose_candidates(params, index, pool, 7, room=1) == [(1,), (2,), (1,)]  # every candidate cut to the room
    assert choose_candidates(attrs.evolve(params, G=0), index, pool, 7, 10) == []


def test_trie_merges_shared_prefixes():
    trie = Trie.build([(4, 5, 6), (4, 5, 7), (8,), (4, 9)])
    assert trie.tokens == [4, 5, 6, 7, 8, 9]
    assert trie.parents == [-1, 0, 1, 1, -1, 0]
    assert trie.child(-1, 4) == 0 and trie.child(0, 5) == 1 and trie.child(1, 9) is None
    assert trie.child_tokens(-1) == [(4, 0), (8, 4)]


@pytest.mark.parametrize("idle_window, W, window_on_idle_steps", [
    ("on", 1, True), ("off", 3, False), ("auto", 1, False), ("auto", 3, True)])
def test_idle_window_decides_whether_a_step_without_candidates_carries_the_window(idle_window, W, window_on_idle_steps):
    model = tiny_model("llama", seed=2)
    ids = torch.tensor([[3, 17, 29, 41, 53]])  # no repeats: the first steps have nothing to verify
    sizes = []
    model.register_forward_pre_hook(lambda _m, args, kwargs: sizes.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    out = decodekit.generate(model, ids, "lookahead", W=W, N=4, G=2, idle_window=idle_window, max_new_tokens=3,
                             eos_token_id=[])
    assert out.sequences.tolist() == decodekit.generate(model, ids, max_new_tokens=3, eos_token_id=[]).sequences.tolist()
    assert sizes[0] == 5 and sizes[1] == (1 + W if window_on_idle_steps else 1)  # prefill, then the first step


def test_window_beyond_the_models_positions_is_left_out():
    model = tiny_model("gpt2", seed=3)  # learned positions: 512 of them
    ids = torch.tensor([[5, 6, 7] * 160])  # 480 prompt tokens
    out = decodekit.generate(model, ids, "lookahead", W=16, N=8, G=4, max_new_tokens=32, eos_token_id=[])
    assert out.sequences.tolist() == decodekit.generate(model, ids, max_new_tokens=32, eos_token_id=[]).sequences.tolist()


def test_generate_compare_line_uses_tokens_per_second_and_says_where_outputs_part():
    from decodekit.cli_generate import comparison

    fast, slow = run("lookahead", W=4, N=5, G=8), run("greedy")
    fast.stats = attrs.evolve(fast.stats, seconds=1.0)  # 48 tokens in 1 s
    slow.stats = attrs.evolve(slow.stats, seconds=2.0)  # 48 tokens in 2 s
    assert comparison("greedy", fast, slow) == "speedup over greedy (tokens/s): 2.00x; outputs identical: yes"
    short = run("greedy", max_new=24)  # 24 tokens in 1 s: the same rate as `slow`, half the time
    short.stats = attrs.evolve(short.stats, seconds=1.0)
    assert comparison("greedy", short, slow) == ("speedup over greedy (tokens/s): 1.00x; "
                                                 "outputs identical: NO (they part at new token 24)")

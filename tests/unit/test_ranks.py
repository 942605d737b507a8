"""decodekit.core.ranks without torchrun: the checksums, and what a mismatch says, with scripted gathers."""

from __future__ import annotations

import attrs
import pytest
import torch

from decodekit.core import ranks as ranks_sync
from decodekit.core.ranks import confirm_commits, confirm_proposals, confirm_same, digest, tensor_digest
from decodekit.errors import DecodekitError, RankMismatchError


@attrs.define
class ScriptedRanks:
    """Stands in for Ranks: rank 0 gathers what it holds itself, the other ranks what `others` computes from it."""

    others: list  # per other rank: values -> what that rank would have gathered
    calls: list = attrs.Factory(list)

    def gather(self, values):
        values = list(values)
        self.calls.append(values)
        return [values] + [other(values, len(self.calls)) for other in self.others]


def same(values, call):
    return list(values)


def test_digest_sees_order_length_and_values():
    assert digest([1, 2, 3]) == digest([1, 2, 3])
    assert len({digest([1, 2, 3]), digest([3, 2, 1]), digest([1, 2]), digest([1, 2, 3, 0]), digest([])}) == 5
    assert 0 <= digest(range(1000)) < 2**63
    a = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    assert tensor_digest(a) != tensor_digest(a.T) and tensor_digest(a) != tensor_digest(a.flatten())


def test_one_rank_confirms_nothing_and_keeps_its_timing():
    assert confirm_commits(None, 3, [0], [[5]], 0.25) == 0.25
    confirm_proposals(None, 3, [0], [1])
    confirm_same(None, "x", 1, "fix")


def test_agreeing_ranks_take_rank_0s_timing():
    later = ScriptedRanks([lambda v, c: [v[0], v[1], v[2] + 7_000_000, v[3]]])  # rank 1 measured 7 ms more
    assert confirm_commits(later, 4, [0, 1], [[5, 6], [7]], 0.010) == pytest.approx(0.010)
    assert len(later.calls) == 1  # one gather a check when the ranks agree


def test_a_row_that_differs_is_named_with_the_step_and_the_rank():
    def row_1_differs(values, call):
        if call == 1:  # the header: the digest over the rows differs
            return [*values[:3], values[3] + 1]
        return [values[0], values[1], values[2], values[3] + 1]  # [rows..., per-row digests...]: row 1's
    ranks = ScriptedRanks([same, row_1_differs])
    with pytest.raises(RankMismatchError, match=r"^step 9: the ranks disagree on the committed tokens of row 1: "
                                                r"rank\(s\) \[2\] differ from rank 0"):
        confirm_commits(ranks, 9, [0, 1], [[5], [6]], 0.0)
    assert len(ranks.calls) == 2  # the second gather only on a mismatch


def test_ranks_with_different_row_counts_or_steps_say_so():
    fewer = ScriptedRanks([lambda v, c: [v[0], v[1] - 1, v[2], v[3] + 1]])
    with pytest.raises(RankMismatchError, match=r"step 2: the ranks disagree on .*proposals.*step numbers \[2, 2\], "
                                                r"active row counts \[2, 1\] by rank"):
        confirm_proposals(fewer, 2, [0, 1], [11, 12])
    later = ScriptedRanks([lambda v, c: [v[0] + 1, *v[1:]]])
    with pytest.raises(RankMismatchError, match=r"step numbers \[5, 6\]"):
        confirm_proposals(later, 5, [0], [11])


def test_a_value_that_differs_names_what_and_how_to_fix_it():
    ranks = ScriptedRanks([same, lambda v, c: [v[0] + 1]])
    with pytest.raises(RankMismatchError, match=r"generator= differs between ranks: rank\(s\) \[2\] .*; seed it"):
        confirm_same(ranks, "generator=", 42, "seed it")
    assert issubclass(RankMismatchError, DecodekitError)


def test_proposals_digest_covers_tokens_outputs_and_layout():
    from decodekit.core.masks import causal_layout

    chain = causal_layout(3)
    base = ranks_sync.proposals_digest([1, 2, 3], None, chain.offsets, chain.visible)
    tree_visible = chain.visible.clone()
    tree_visible[2, 1] = False
    assert base != ranks_sync.proposals_digest([1, 2, 4], None, chain.offsets, chain.visible)
    assert base != ranks_sync.proposals_digest([1, 2, 3], [2], chain.offsets, chain.visible)
    assert base != ranks_sync.proposals_digest([1, 2, 3], None, chain.offsets, tree_visible)
    assert base != ranks_sync.proposals_digest([1, 2, 3], None, torch.tensor([0, 1, 1]), chain.visible)
    assert ranks_sync.proposals_digest([1, 2, 3], None) != ranks_sync.proposals_digest([1, 2, 4], None)  # a chain


def test_collectives_run_on_the_device_the_backend_takes():
    assert ranks_sync.collective_device_type("nccl") == "cuda"
    assert ranks_sync.collective_device_type("gloo") == "cpu"
    assert ranks_sync.collective_device_type("cpu:gloo,cuda:nccl") == "cpu"

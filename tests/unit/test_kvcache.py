"""The KV-cache manager against a naive reference: a list of the ids whose keys are cached."""

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from decodekit.core.backend import HFBackend
from decodekit.core.kvcache import KVCacheManager
from decodekit.testing import tiny_model

LAYERS, HEADS, DIM = 2, 2, 3


def backend():
    return HFBackend.for_model(tiny_model("llama"))


def append(kv: KVCacheManager, ids: list[int]) -> None:
    """Append positions whose keys/values encode their id (layer-dependent, so layers can't be confused)."""
    for layer in range(LAYERS):
        base = torch.tensor(ids, dtype=torch.float64).view(1, 1, -1, 1)  # (1, 1, T, 1)
        keys = (base + 1000 * layer).expand(1, HEADS, len(ids), DIM).contiguous()  # (1, H, T, D)
        kv.cache.update(keys, -keys, layer)


def cached_ids(kv: KVCacheManager) -> list[list[int]]:
    out = []
    for layer_idx, layer in enumerate(kv.cache.layers):
        if layer.keys is None or layer.keys.numel() == 0:
            out.append([])
            continue
        assert torch.equal(layer.values, -layer.keys)
        out.append([int(x) - 1000 * layer_idx for x in layer.keys[0, 0, :, 0].tolist()])
    return out


class CacheMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.kv = KVCacheManager(backend())
        self.reference: list[int] = []
        self.next_id = 1
        self.last_append: tuple[int, int] | None = None  # (start, count) of the latest append

    @rule(count=st.integers(1, 8))
    def append(self, count):
        ids = list(range(self.next_id, self.next_id + count))
        self.next_id += count
        self.last_append = (len(self.reference), count)
        append(self.kv, ids)
        self.reference += ids

    @precondition(lambda self: self.reference)
    @rule(data=st.data())
    def rollback(self, data):
        length = data.draw(st.integers(0, len(self.reference)))
        self.kv.rollback(length)
        self.reference = self.reference[:length]
        self.last_append = None

    @precondition(lambda self: self.last_append is not None)
    @rule(data=st.data())
    def keep_appended(self, data):
        start, count = self.last_append
        keep = sorted(data.draw(st.sets(st.integers(0, count - 1))))
        self.kv.keep_appended(start, keep)
        self.reference = self.reference[:start] + [self.reference[start + k] for k in keep]
        self.last_append = None

    @invariant()
    def matches_reference(self):
        assert self.kv.length == len(self.reference)
        if self.reference:
            assert cached_ids(self.kv) == [self.reference] * LAYERS


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(stateful_step_count=20)


def test_rollback_out_of_range_is_refused():
    kv = KVCacheManager(backend())
    append(kv, [1, 2, 3])
    with pytest.raises(ValueError, match=r"rollback length must be in \[0, 3\], got 4"):
        kv.rollback(4)


@pytest.mark.parametrize("keep, message", [([2, 1], "strictly increasing"), ([0, 5], r"\[0, 3\)")])
def test_bad_keep_is_refused_and_leaves_cache_alone(keep, message):
    kv = KVCacheManager(backend())
    append(kv, [1, 2])
    append(kv, [3, 4, 5])
    with pytest.raises(ValueError, match=message):
        kv.keep_appended(2, keep)
    assert cached_ids(kv) == [[1, 2, 3, 4, 5]] * LAYERS

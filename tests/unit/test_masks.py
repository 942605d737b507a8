import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from decodekit.core.masks import additive_mask, causal_layout, position_ids, tree_layout


@st.composite
def parent_arrays(draw, max_size=24):
    size = draw(st.integers(1, max_size))
    return [-1] + [draw(st.integers(0, i - 1)) for i in range(1, size)]


def ancestors(parents, i):
    chain = [i]
    while parents[chain[-1]] != -1:
        chain.append(parents[chain[-1]])
    return chain


@given(parent_arrays(), st.integers(0, 9), st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_tree_mask_matches_brute_force(parents, past, dtype):
    layout = tree_layout(parents)
    size = len(parents)
    mask = additive_mask(layout, past, dtype)
    assert mask.shape == (1, 1, size, past + size) and mask.dtype == dtype
    for i in range(size):
        seen = set(ancestors(parents, i))
        assert int(layout.offsets[i]) == len(seen) - 1
        for j in range(size):
            assert bool(layout.visible[i, j]) == (j in seen)
            expected = 0.0 if j in seen else torch.finfo(dtype).min
            assert mask[0, 0, i, past + j].item() == expected
        assert torch.all(mask[0, 0, i, :past] == 0)
    assert position_ids(layout, past).tolist() == [past + int(o) for o in layout.offsets]


def test_chain_tree_equals_causal():
    chain = tree_layout([-1, 0, 1, 2, 3])
    causal = causal_layout(5)
    assert torch.equal(chain.visible, causal.visible) and torch.equal(chain.offsets, causal.offsets)


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-1, 0, 3, 1], []])
def test_bad_parents_are_refused(parents):
    with pytest.raises(ValueError, match="parents|root"):
        tree_layout(parents)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tree_forward_equals_each_path_run_causally(arch):
    """What the mask is for: a token in a tree sees exactly its path, so its logits equal a causal run of that path."""
    from decodekit.core.backend import HFBackend
    from decodekit.core.kvcache import KVCacheManager
    from decodekit.testing import tiny_model

    model = tiny_model(arch)
    backend = HFBackend.for_model(model)
    prompt = torch.tensor([3, 9, 4, 11, 5])
    parents = [-1, 0, 1, 0, 3, 4, 1, 6]
    tokens = torch.tensor([7, 20, 21, 30, 31, 32, 40, 41])
    layout = tree_layout(parents)

    def fresh():
        kv = KVCacheManager(backend)
        backend.forward(prompt, torch.arange(5), kv.cache)
        return kv

    with torch.inference_mode():
        kv = fresh()
        tree_logits = backend.forward(tokens, position_ids(layout, 5), kv.cache, additive_mask(layout, 5, model.dtype))
        for i in range(len(parents)):
            path = list(reversed(ancestors(parents, i)))
            kv = fresh()
            chain = backend.forward(tokens[path], torch.arange(5, 5 + len(path)), kv.cache)
            torch.testing.assert_close(tree_logits[i], chain[-1], rtol=1e-9, atol=1e-9)

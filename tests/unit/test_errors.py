"""Bad input gets a decodekit error naming the parameter, before any forward pass."""

import pytest
import torch

import decodekit
from decodekit.errors import InputError, ModelNotSupportedError, StrategyParameterError, UnknownStrategyError
from decodekit.testing import tiny_model


@pytest.fixture
def model():
    m = tiny_model("llama")
    calls = []
    handle = m.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield m
    handle.remove()
    assert not calls, "a forward pass ran before the error"


IDS = torch.tensor([[5, 6, 7]])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(strategy="greedyy"), UnknownStrategyError, r"unknown strategy 'greedyy'; did you mean 'greedy'\?.*known strategies: .*greedy"),
    (dict(strategy="greedy", W=3), StrategyParameterError, r"unknown parameter 'W' for 'greedy'"),
    (dict(max_new_tokens=0), InputError, r"max_new_tokens must be an integer >= 1, got 0"),
    (dict(max_new_tokens=2.5), InputError, r"max_new_tokens must be an integer >= 1, got 2.5"),
    (dict(max_new_tokens=600), InputError, r"prompt length 3 \+ max_new_tokens 600 = 603 exceeds the model's max_position_embeddings \(512\)"),
    (dict(eos_token_id=1000), InputError, r"eos_token_id must be a token id in \[0, 96\)"),
    (dict(do_sample=True, temperature=0), InputError, r"temperature must be a number > 0, got 0"),
    (dict(do_sample=True, top_p=1.5), InputError, r"top_p must be a number in \(0, 1\], got 1.5"),
    (dict(draft_model="x"), InputError, r"draft_model= was given but strategy 'greedy' does not use a draft model"),
])
def test_bad_arguments(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        decodekit.generate(model, IDS, **kwargs)


@pytest.mark.parametrize("ids, message", [
    ([[5, 6]], r"input_ids must be a torch.LongTensor of shape \(batch, length\), got list"),
    (torch.tensor([[5.0, 6.0]]), r"input_ids must hold integer token ids \(torch.long\), got dtype torch.float32"),
    (torch.tensor([5, 6]), r"input_ids must have shape \(batch, length\), got shape \(2,\)"),
    (torch.zeros(1, 0, dtype=torch.long), r"at least one token"),
    (torch.tensor([[5, 96]]), r"input_ids must be token ids in \[0, 96\), got values in \[5, 96\]"),
])
def test_bad_input_ids(model, ids, message):
    with pytest.raises(InputError, match=message):
        decodekit.generate(model, ids)


def test_errors_are_value_errors_and_decodekit_errors(model):
    with pytest.raises(ValueError):
        decodekit.generate(model, IDS, max_new_tokens=-1)
    with pytest.raises(decodekit.DecodekitError):
        decodekit.generate(model, IDS, strategy="nope")


def test_model_without_cache_or_mask_is_refused():
    class NotAModel:
        def forward(self, input_ids):
            raise AssertionError("must not run")

    with pytest.raises(ModelNotSupportedError, match="model must be a transformers PreTrainedModel"):
        decodekit.generate(NotAModel(), IDS)


def test_attention_without_4d_masks_is_refused():
    model = tiny_model("llama", attn="sdpa")
    model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ModelNotSupportedError, match="attn_implementation='flash_attention_2'"):
            decodekit.generate(model, IDS)
    finally:
        model.config._attn_implementation = "sdpa"


def test_encoder_decoder_is_refused():
    model = tiny_model("llama")
    model.config.is_encoder_decoder = True
    try:
        with pytest.raises(ModelNotSupportedError, match="encoder-decoder"):
            decodekit.generate(model, IDS)
    finally:
        model.config.is_encoder_decoder = False


def test_forward_without_cache_keyword_is_refused(monkeypatch):
    model = tiny_model("gpt2", seed=3)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None):
        raise AssertionError("must not run")

    monkeypatch.setattr(type(model), "forward", forward)
    with pytest.raises(ModelNotSupportedError, match="takes no cache"):
        decodekit.generate(model, IDS)

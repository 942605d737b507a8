"""Bad input gets a decodekit error naming the parameter, before any forward pass."""

import warnings

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
    # sampling values are checked whether or not do_sample is set
    (dict(temperature=-1), InputError, r"temperature must be a number > 0, got -1"),
    (dict(temperature=0), InputError, r"temperature must be a number > 0, got 0"),
    (dict(do_sample=False, top_p=1.5), InputError, r"top_p must be a number in \(0, 1\], got 1.5"),
    (dict(do_sample=True, temperature=float("inf")), InputError, r"temperature must be a finite number > 0, got inf"),
    (dict(top_k=-1), InputError, r"top_k must be an integer >= 0 \(0 disables it\), got -1"),
    (dict(do_sample="yes"), InputError, r"do_sample must be True or False, got 'yes'"),
    (dict(repetition_penalty=0), InputError, r"repetition_penalty must be a finite number > 0, got 0"),
    (dict(min_new_tokens=-2), InputError, r"min_new_tokens must be an integer >= 0, got -2"),
    (dict(max_length=3), InputError, r"max_length \(3\) must exceed the prompt length \(3\)"),
    (dict(eos_token_id=-1), InputError, r"eos_token_id must be a token id in \[0, 96\)"),
    (dict(eos_token_id=torch.tensor([[2]])), InputError, r"eos_token_id must be .*0-d / 1-d integer tensor"),
    (dict(eos_token_id=torch.tensor(2.0)), InputError, r"eos_token_id must be .*dtype torch.float32"),
    (dict(eos_token_id=torch.tensor(2, device="meta")), InputError, r"eos_token_id must be .*meta tensor"),
    (dict(pad_token_id=[0, 1]), InputError, r"pad_token_id must be one token id"),
    (dict(bad_words_ids=[[5], []]), InputError, r"bad_words_ids must be a non-empty list of non-empty lists"),
    (dict(suppress_tokens=[200]), InputError, r"suppress_tokens must be a token id in \[0, 96\)"),
    (dict(sequence_bias={5: 1.0}), InputError, r"sequence_bias must be a dict from tuples of token ids"),
    (dict(on_step=5), InputError, r"on_step must be a callable .* got int 5"),
    (dict(generator=5), InputError, r"generator must be a torch.Generator or None, got int"),
    (dict(streamer=object()), InputError, r"streamer must have put\(\) and end\(\)"),
    (dict(stop_strings=["x"]), InputError, r"stop_strings=\['x'\] needs tokenizer="),
    (dict(generation_config={"max_new_tokens": 3}), InputError, r"generation_config must be a transformers GenerationConfig"),
    (dict(attention_mask=torch.tensor([[1, 1, 0]])), InputError, r"attention_mask row 0 has padding after a token .* pad on the left"),
    (dict(attention_mask=torch.tensor([[0, 0, 0]])), InputError, r"attention_mask row 0 is all zeros"),
    (dict(attention_mask=torch.tensor([[2, 1, 1]])), InputError, r"attention_mask must hold only 0 \(padding\) and 1 \(token\), got values \[2\]"),
    (dict(attention_mask=torch.ones(1, 4)), InputError, r"attention_mask must be None or a tensor of input_ids' shape \(1, 3\)"),
    # settings whose output decodekit cannot reproduce exactly are refused by name
    (dict(num_beams=2), InputError, r"generation mode 'beam_search' .* is not supported"),
    (dict(num_return_sequences=2, do_sample=True), InputError, r"num_return_sequences must be 1"),
    (dict(guidance_scale=1.5), InputError, r"guidance_scale=1.5 is not supported"),
    (dict(output_scores=True, return_dict_in_generate=True), InputError, r"output_scores=True is not supported"),
    (dict(return_dict_in_generate=True), InputError, r"return_dict_in_generate=True is not supported by decodekit.generate"),
    (dict(do_sample=True, min_p=0.1), InputError, r"min_p=0.1 is not supported with do_sample=True"),
    (dict(do_sample=True, typical_p=0.5), InputError, r"typical_p=0.5 is not supported with do_sample=True"),
    (dict(strategy="jacobi", max_new_token=5), StrategyParameterError,
     r"unknown parameter 'max_new_token' for 'jacobi'; did you mean the generation setting 'max_new_tokens'\?"),
    (dict(strategy="lookahead", w=3), StrategyParameterError, r"unknown parameter 'w' for 'lookahead'; did you mean 'W'\?"),
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


def test_streamer_needs_batch_size_one(model):
    class Streamer:
        def put(self, value):
            raise AssertionError("nothing may be streamed before the error")

        def end(self):
            raise AssertionError("nothing may be streamed before the error")

    with pytest.raises(InputError, match=r"streamer= streams one sequence: input_ids must have batch size 1, got 2"):
        decodekit.generate(model, torch.tensor([[5, 6], [7, 8]]), streamer=Streamer())


def test_meta_input_ids_are_refused(model):
    with pytest.raises(InputError, match=r"input_ids is on the meta device"):
        decodekit.generate(model, torch.zeros(1, 3, dtype=torch.long, device="meta"))


def test_meta_model_is_refused():
    model = tiny_model("llama", seed=5)
    with torch.device("meta"):
        meta = type(model)(model.config)
    with pytest.raises(ModelNotSupportedError, match=r"model has weights on the meta device"):
        decodekit.generate(meta, IDS)
    with pytest.raises(ModelNotSupportedError, match=r"draft_model has weights on the meta device"):
        decodekit.generate(model, IDS, "speculative", draft_model=meta, max_new_tokens=4)


def test_valid_but_unused_sampling_values_warn(model):
    # max_new_tokens=600 is refused after the settings are resolved, still before any forward
    with pytest.warns(UserWarning, match=r"temperature=0.7, top_k=5 only apply when sampling; do_sample is not True"):
        with pytest.raises(InputError, match="exceeds the model's max_position_embeddings"):
            decodekit.generate(model, IDS, temperature=0.7, top_k=5, max_new_tokens=600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # used values, and HF's defaults, are not warned about
        for kwargs in (dict(do_sample=True, temperature=0.7, top_k=5), dict(temperature=1.0, top_k=50, top_p=1.0)):
            with pytest.raises(InputError, match="exceeds the model's max_position_embeddings"):
                decodekit.generate(model, IDS, max_new_tokens=600, **kwargs)


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

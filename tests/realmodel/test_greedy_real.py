"""On the real default model, decodekit greedy equals model.generate(do_sample=False) in float32."""

import pytest
import torch

import decodekit
from tests.helpers import first_difference, spec_bench_prompts

pytestmark = pytest.mark.realmodel
PROMPTS = spec_bench_prompts(per_category=1, limit=10)


@pytest.mark.parametrize("category, prompt", PROMPTS, ids=[c for c, _ in PROMPTS])
def test_greedy_equals_generate_on_spec_bench(default_model_fp32, category, prompt):
    model, tokenizer = default_model_fp32
    ids = decodekit.models.chat_ids(tokenizer, prompt)
    with torch.inference_mode():
        expected = model.generate(ids, max_new_tokens=64, do_sample=False)
    out = decodekit.generate(model, ids, "greedy", max_new_tokens=64)
    got, want = out.sequences[0].tolist(), expected[0].tolist()
    assert got == want, f"{category}: first difference at position {first_difference(got, want)}"


def test_default_model_is_the_real_chat_model(default_model_fp32):
    model, tokenizer = default_model_fp32
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    ids = decodekit.models.chat_ids(tokenizer, "What is the capital of France? Answer in one word.")
    out = decodekit.generate(model, ids, max_new_tokens=12)
    assert "Paris" in tokenizer.decode(out.sequences[0, ids.shape[1]:])
    assert out.sequences[0, -1].item() in {tokenizer.eos_token_id} | set([model.generation_config.eos_token_id])

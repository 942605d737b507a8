"""streamer=: HF's TextStreamer and TextIteratorStreamer get the prompt, then each step's tokens as they are committed."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import TextIteratorStreamer, TextStreamer

import decodekit
from decodekit.testing import tiny_model

PROMPT = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6]])


class WordTokenizer:
    """Enough of a tokenizer for HF's text streamers: token i decodes to the word "wi " ("\\n" for 4)."""

    def decode(self, ids, skip_special_tokens=False, **kwargs):
        return "".join("\n" if i == 4 else f"w{i} " for i in ids)


class Recorder:
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


def model():
    return tiny_model("llama", seed=1, vocab_size=12, init=1.0)


@pytest.mark.parametrize("strategy, params", [("greedy", {}), ("lookahead", {"W": 2, "N": 3}),
                                              ("jacobi", {"block_size": 4}), ("prompt-lookup", {})])
def test_each_step_goes_out_as_it_is_committed(strategy, params):
    recorder, steps = Recorder(), []
    out = decodekit.generate(model(), PROMPT, strategy, max_new_tokens=24, eos_token_id=None, streamer=recorder,
                             on_step=steps.append, **params)
    assert torch.equal(recorder.puts[0], PROMPT)  # the prompt first, as model.generate puts it
    assert [p.tolist() for p in recorder.puts[1:]] == steps  # then one put per step, its committed tokens
    assert torch.cat(recorder.puts[1:]).tolist() == out.sequences[0, PROMPT.shape[1]:].tolist()
    assert recorder.ended == 1
    if strategy != "greedy":
        assert max(len(s) for s in steps) > 1  # multi-token steps were streamed as one put


def test_text_streamer_prints_what_hf_prints(capsys):
    m = model()
    with torch.inference_mode():
        m.generate(PROMPT, do_sample=False, max_new_tokens=24, streamer=TextStreamer(WordTokenizer(), skip_prompt=True))
    expected = capsys.readouterr().out
    decodekit.generate(m, PROMPT, "lookahead", max_new_tokens=24, streamer=TextStreamer(WordTokenizer(), skip_prompt=True))
    assert capsys.readouterr().out == expected and expected.strip()


def test_text_iterator_streamer_from_another_thread():
    m = model()
    streamer = TextIteratorStreamer(WordTokenizer(), skip_prompt=True, timeout=60)
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=decodekit.generate(m, PROMPT, "lookahead", max_new_tokens=24, streamer=streamer)))
    worker.start()
    text = "".join(streamer)
    worker.join()
    new = result["out"].sequences[0, PROMPT.shape[1]:].tolist()
    assert text == WordTokenizer().decode(new)

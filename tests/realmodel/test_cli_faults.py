"""The command line on the real default model: lengths refused before the model loads, and Ctrl-C.

A Ctrl-C (SIGINT) at any moment of `decodekit generate`, `bench` or `verify` ends the process with
exit status 130 and one line on stderr, no traceback, and leaves no half-written result file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import decodekit
from decodekit.cli import INTERRUPTED, main
from decodekit.bench.questions import ENV_QUESTIONS
from tests.helpers import questions_file

pytestmark = pytest.mark.realmodel
CLI = str(Path(sys.executable).with_name("decodekit"))
LONG_PROMPT = "Repeat after me: " + "the quick brown fox " * 2500  # ~10,000 tokens > 8,192 positions


@pytest.fixture
def no_model_load(monkeypatch):
    """Make any load of the model's weights fail the test (the checks must come first)."""
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model's weights were loaded before the arguments were checked")

    monkeypatch.setattr(decodekit.models, "load_default", must_not_load)
    monkeypatch.setattr("decodekit.core.backend.load_pretrained", must_not_load)


@pytest.fixture
def questions(monkeypatch, tmp_path):
    """DECODEKIT_SPEC_BENCH names a question file (Spec-Bench's, else the project's own prompts); children inherit it."""
    monkeypatch.setenv(ENV_QUESTIONS, str(questions_file(tmp_path)))


@pytest.mark.parametrize("argv, says", [
    (["generate", LONG_PROMPT, "--max-new-tokens", "64"],
     r"the prompt: its \d{5} tokens \+ --max-new-tokens 64 = \d{5} exceeds the model's max_position_embeddings \(8192\)"),
    (["generate", "Hi", "--max-new-tokens", "1000000000"],
     r"--max-new-tokens 1000000000 = 1000000000 exceeds the model's max_position_embeddings \(8192\)"),
    (["bench", "--max-new-tokens", "1000000000", "--per-category", "1"],
     r"--max-new-tokens 1000000000 = 1000000000 exceeds the model's max_position_embeddings \(8192\)"),
    (["verify", "--strategy", "greedy", "--max-new-tokens", "8190", "--limit", "1"],
     r"prompt q\w+ \(\w+\): its \d+ tokens \+ --max-new-tokens 8190 = \d+ exceeds the model's max_position_embeddings"),
])
def test_lengths_are_refused_before_the_model_loads(argv, says, no_model_load, questions, capsys):
    began = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(says, err), err
    assert err.count("\n") == 1 and "max_new_tokens 2" not in err
    assert time.perf_counter() - began < 30  # no prefill of the long prompt, no model load


class Running:
    """A CLI process whose stdout and stderr are read as they come, so a test can wait for a moment in its run."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
        # SIGINT at its default in the child, as in a terminal: a pytest started with SIGINT ignored (a
        # script's background job) would pass SIG_IGN on, and the CLI rightly keeps ignoring it then
        self.proc = subprocess.Popen([CLI, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.out, self.err = bytearray(), bytearray()
        self.readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, buffer: bytearray) -> None:
        while chunk := stream.read1(4096):
            buffer.extend(chunk)

    def wait_for(self, stream: str, pattern: str, timeout: float = 180) -> None:
        buffer = self.out if stream == "stdout" else self.err
        deadline = time.monotonic() + timeout
        while not re.search(pattern.encode(), bytes(buffer)):
            assert self.proc.poll() is None, f"the process ended first: {bytes(self.err).decode()[-2000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} on {stream} within {timeout} s"
            time.sleep(0.02)

    def interrupt(self, timeout: float = 30) -> tuple[int, str, str]:
        """SIGINT, as Ctrl-C sends it; the process must be gone within `timeout` seconds."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=5)
        return code, bytes(self.out).decode(errors="replace"), bytes(self.err).decode(errors="replace")


def _assert_one_line_interrupt(code: int, err: str, line: str = "decodekit: interrupted") -> None:
    assert code == INTERRUPTED, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.rstrip("\n").splitlines()[-1] == line, err


@pytest.mark.parametrize("moment", ["importing", "loading the model", "generating"])
def test_ctrl_c_in_generate(moment, tmp_path):
    run = Running(["generate", "Tell me a long story about a dragon and a knight.", "--max-new-tokens", "400"],
                  cwd=tmp_path)
    if moment == "importing":
        time.sleep(0.5)  # the process is still importing torch and transformers
    elif moment == "loading the model":
        run.wait_for("stderr", "loading SmolLM2")
    else:
        run.wait_for("stdout", r"\w+ \w+ \w+")  # a few streamed words
    code, out, err = run.interrupt()
    _assert_one_line_interrupt(code, err)
    if moment == "generating":
        assert out.endswith("\n")  # the streamed text ends its line; the shell's prompt starts on a new one
        assert "tokens/s" not in err  # no statistics of a cut-short run


def test_ctrl_c_in_bench_keeps_the_finished_prompts(tmp_path, questions):
    out_dir = tmp_path / "out"
    run = Running(["bench", "--per-category", "1", "--categories", "writing", "roleplay", "coding",
                   "--max-new-tokens", "48", "--strategies", "greedy", "--no-warmup", "--out", str(out_dir)],
                  cwd=tmp_path)
    run.wait_for("stderr", r"\| 2/6 \[")  # hf-greedy and greedy done on the first prompt, the second one running
    code, _, err = run.interrupt()
    _assert_one_line_interrupt(code, err, f"decodekit: interrupted; partial results (1 of 3 prompts) in {out_dir}/")
    doc = json.loads((out_dir / "results.json").read_text())
    assert doc["config"]["interrupted"] is True and doc["config"]["prompts_run"] == 1
    assert {r["category"] for r in doc["records"]} == {"writing"}
    assert "cut short by an interrupt (Ctrl-C): 1 of 3 prompts ran" in (out_dir / "results.md").read_text()
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "results.json", "results.md", "speedup_by_category.png", "tokens_per_step_vs_compute.png"]


def test_ctrl_c_in_verify_writes_no_golden_file(tmp_path, questions, monkeypatch, capsys):
    real_generate = decodekit.generate
    calls = []

    def interrupted_on_the_third_call(*args, **kwargs):  # greedy and the strategy on prompt 1, then Ctrl-C
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(decodekit, "generate", interrupted_on_the_third_call)
    out = tmp_path / "out"
    out.mkdir()
    golden = out / "golden.jsonl"
    code = main(["verify", "--strategy", "lookahead", "--limit", "3", "--max-new-tokens", "8", "--record", str(golden)])
    _assert_one_line_interrupt(code, capsys.readouterr().err)
    assert len(calls) == 3
    assert list(out.iterdir()) == []  # neither the golden file nor a temporary one

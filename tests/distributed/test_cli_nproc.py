"""`decodekit generate ... --nproc 2`: the command starts its own ranks (torch.distributed.run, gloo on the
CPU), shards the default model over them, and rank 0 alone prints; the launcher's failures end every rank
with a clear message, in bounded time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import decodekit
import decodekit.cli
from decodekit.cli import INTERRUPTED
from tests.distributed.test_tensor_parallel import pytestmark as _distributed
from tests.helpers import questions_file
from tests.realmodel.test_cli_faults import Running

pytestmark = [*_distributed, pytest.mark.realmodel]
CLI = str(Path(sys.executable).with_name("decodekit"))
PROMPT = "Repeat this list twice: apples, pears, plums, figs."
NEW = 24
TAG = "DECODEKIT_TEST_RUN"  # an environment variable naming the test whose ranks these are


def _run(argv: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *argv], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": "120", **env})


def test_generate_on_two_ranks_prints_hf_greedys_text_once_and_lookahead_equals_greedy():
    model, tokenizer = decodekit.models.load_default("float32")
    ids = decodekit.models.chat_ids(tokenizer, PROMPT)  # (1, T)
    with torch.inference_mode():
        expected = model.generate(ids, do_sample=False, max_new_tokens=NEW)[0, ids.shape[1]:]  # (NEW,)
    text = tokenizer.decode(expected, skip_special_tokens=True)
    run = _run(["generate", PROMPT, "--strategy", "lookahead", "--nproc", "2", "--compare", "greedy",
                "--max-new-tokens", str(NEW)])
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip() == text.strip()  # rank 0's streamed text, once: rank 1 prints nothing
    assert "outputs identical: yes" in run.stderr, run.stderr[-2000:]
    assert run.stderr.count("[lookahead]") == 1 and "sharded over 2 ranks" in run.stderr


@pytest.mark.parametrize("argv, says", [
    (["generate", "Hi", "--nproc", "0"], "argument --nproc: must be an integer >= 1 (ranks to shard the model over), got '0'"),
    (["bench", "--nproc", "two"], "argument --nproc: must be an integer >= 1 (ranks to shard the model over), got 'two'"),
    (["generate", "Hi", "--nproc", "7"], "cannot split over 7 ranks, and an MLP of 1536 that it cannot split over them "
                                         "either; allowed tp_size (rank counts): 1, 3; with attention kept whole: 2, 4"),
    (["bench", "--per-category", "1", "--nproc", "5"], "cannot split over 5 ranks"),
])
def test_a_rank_count_that_cannot_work_is_refused_before_any_rank_starts(argv, says, capsys, monkeypatch, tmp_path):
    from decodekit import cli_ranks

    if argv[0] == "bench":  # a question file that exists, so the rank check is reached where Spec-Bench is absent
        argv = [*argv, "--questions", str(questions_file(tmp_path))]

    def must_not_launch(*args, **kwargs):
        raise AssertionError("ranks were started")

    monkeypatch.setattr(cli_ranks, "launch", must_not_launch)
    try:
        code = decodekit.cli.main(argv)
    except SystemExit as exc:  # the parser's own refusal
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert says in err.strip().splitlines()[-1], err  # the last line (the parser prints its usage above it)


def test_a_port_in_use_ends_every_rank_with_a_clear_message():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        began = time.monotonic()
        run = _run(["generate", "Hi", "--nproc", "2", "--max-new-tokens", "4"], timeout=200, MASTER_PORT=str(port))
    assert run.returncode == 2
    assert run.stderr.rstrip().splitlines()[-1].startswith("decodekit: error: the 2 ranks ended with exit status")
    assert f"port {port}" in run.stderr
    assert time.monotonic() - began < 200


def test_a_rank_that_dies_ends_the_others_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv(TAG, str(tmp_path))  # inherited by this command's ranks alone
    run = Running(["generate", "Tell me a long story about a dragon.", "--nproc", "2", "--max-new-tokens", "400"],
                  cwd=tmp_path)
    run.wait_for("stdout", r"\w+ \w+ \w+")  # rank 0 streams: the ranks are decoding, in their collectives
    rank1 = [pid for pid, rank in _ranks().items() if rank == 1]
    assert len(rank1) == 1, _ranks()
    os.kill(rank1[0], signal.SIGKILL)
    began = time.monotonic()
    code = run.proc.wait(timeout=180)
    for reader in run.readers:
        reader.join(timeout=5)
    err = bytes(run.err).decode(errors="replace")
    assert code == 2, err[-3000:]
    assert err.rstrip().splitlines()[-1].startswith("decodekit: error: the 2 ranks ended with exit status"), err[-3000:]
    assert time.monotonic() - began < 180
    assert _ranks() == {}, "a rank outlived the command"


def _ranks() -> dict[int, int]:
    """pid -> RANK of every live process that this test's `--nproc` command started: they carry
    DECODEKIT_NPROC, and the test's TAG (other decodekit runs on the machine carry another or none)."""
    tag = os.environ[TAG]
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if "DECODEKIT_NPROC" in env and "RANK" in env and env.get(TAG) == tag:
            found[int(entry.name)] = int(env["RANK"])
    return found


def test_ctrl_c_ends_every_rank_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(TAG, str(tmp_path))
    run = Running(["generate", "Tell me a long story about a dragon.", "--nproc", "2", "--max-new-tokens", "400"],
                  cwd=tmp_path)
    run.wait_for("stdout", r"\w+ \w+ \w+")
    code, out, err = run.interrupt(timeout=60)
    assert code == INTERRUPTED, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.rstrip("\n").splitlines()[-1] == "decodekit: interrupted", err[-3000:]
    assert _ranks() == {}, "a rank outlived the command"

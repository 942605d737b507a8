"""`--nproc N` on the command line: the command starts N ranks of itself and shards the model over them.

`decodekit generate ... --nproc 2` is what `torchrun --nproc_per_node 2 -m decodekit.cli generate ...`
would run, without the user writing it: the command checks its arguments, then starts torch's own
launcher (torch.distributed.run) on this same command line. Each rank joins the process group (gloo on
the CPU, nccl with one GPU per rank), loads its slice of the model (tensor parallelism, see
docs/scaling.md) and decodes; only rank 0 prints. The launcher's rendezvous, and each rank's process
group, have bounded timeouts, and a rank that fails makes the launcher end the others.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Sequence

# Set by `launch` for the ranks it starts: the rank count (a rank then joins instead of launching again), and
# the command line they run (JSON). The words do not go on torch.distributed.run's own command line: its
# parser would take some of them for its own options (`--nproc` for `--nproc-per-node`).
ENV_NPROC = "DECODEKIT_NPROC"
ENV_ARGV = "DECODEKIT_ARGV"
JOIN_TIMEOUT_S = 120  # how long a rank waits for the others to join the group (and for a collective)
STOP_GRACE_S = 15  # after a Ctrl-C: how long the ranks get to end before they are killed


def nproc_count(text: str) -> int:
    from decodekit.cli import positive_int

    return positive_int(text, "an integer >= 1 (ranks to shard the model over)")


def add_nproc_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=nproc_count, default=1, metavar="N",
                        help="shard the model over N ranks (tensor parallelism) that this command starts itself with "
                             "torch's launcher: gloo on the CPU (each rank gets an equal share of the cores), nccl "
                             "with one GPU per rank; only rank 0 prints (default: 1, no sharding)")


def is_rank() -> bool:
    """Whether this process is one of the ranks `launch` started."""
    return os.environ.get(ENV_NPROC) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _threads_per_rank(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run this command line (`argv`, the words after `decodekit`) on `nproc` ranks; their exit status."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus and nproc > gpus:
        from decodekit.errors import InputError

        raise InputError(f"--nproc {nproc}: this machine has {gpus} GPU(s), and each rank needs one; use --nproc <= {gpus}")
    port = os.environ.get("MASTER_PORT") or str(_free_port())  # torch's own variable, if the user set one
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={port}", "--max_restarts=0",
               "-m", "decodekit.cli_ranks"]
    env = {**os.environ, ENV_NPROC: str(nproc), ENV_ARGV: json.dumps(list(argv)),
           "OMP_NUM_THREADS": str(_threads_per_rank(nproc)),
           "PYTHONUNBUFFERED": "1"}
    print(f"decodekit: starting {nproc} ranks (torch.distributed.run, {'nccl' if gpus else 'gloo'})", file=sys.stderr,
          flush=True)
    # The ranks run in a session of their own, so that a Ctrl-C here reaches them only through `_stop`; their
    # stderr comes through `_Relay`, which drops what the launcher and the ranks write while they are stopped.
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    relay = _Relay(proc.stderr)
    try:
        code = proc.wait()
    except BaseException:
        relay.muted = True  # torch.distributed.run reports a signal with a traceback: the user pressed Ctrl-C
        _stop(proc)
        raise
    finally:
        relay.join(timeout=5)
    if code != 0:
        print(f"decodekit: error: the {nproc} ranks ended with exit status {code} (torch.distributed.run's report "
              f"is above; port {port} on 127.0.0.1 was their meeting point)", file=sys.stderr)
        return 2 if code > 0 else 1
    return 0


class _Relay(threading.Thread):
    """Copies the ranks' stderr (the launcher's and every rank's: they share it) to this process's stderr as it
    comes, progress bars included, until `muted`."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.muted = False
        self.start()

    def run(self) -> None:
        out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
        while chunk := os.read(self.stream.fileno(), 65536):
            if self.muted:
                continue
            if out is not None:
                out.write(chunk)
                out.flush()
            else:
                sys.stderr.write(chunk.decode(errors="replace"))


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C the launcher and its ranks (each rank ends with its one line); after STOP_GRACE_S, or once the
    launcher has ended, kill whatever is left of the group (a rank stuck in a collective)."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def join(nproc: int) -> Any:
    """In a rank `launch` started: join the process group, size this rank's threads, and silence every rank
    but 0 (they decode alike; rank 0 speaks for them). Returns the rank."""
    import torch
    import torch.distributed as dist

    from decodekit.errors import InputError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != nproc:
        raise InputError(f"--nproc {nproc} but this process is one of {world} ranks (WORLD_SIZE); "
                         f"under torchrun, give --nproc {world} or leave --nproc out")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or _threads_per_rank(nproc)))
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))
    rank = dist.get_rank()
    if rank != 0:
        quiet = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        sys.stdout = quiet
        sys.stderr = quiet
    return rank


def leave() -> None:
    """Leave the process group (if this process joined one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _rank_main() -> int:
    """A rank's entry point (`python -m decodekit.cli_ranks` under torch.distributed.run): the command line
    `launch` was given."""
    from decodekit.cli import main

    return main(json.loads(os.environ[ENV_ARGV]))


if __name__ == "__main__":
    sys.exit(_rank_main())

"""Ctrl-C inside torch's import: noted, and acted on once the import is done (the real-model timing
tests are in tests/realmodel/test_cli_faults.py)."""

import builtins
import signal

import pytest

from decodekit.cli import INTERRUPTED, main


@pytest.fixture
def sigint():
    """Sets SIGINT's handler for one test (pytest may itself have been started with SIGINT ignored, as a
    background job of a script is) and puts the one it found back afterwards."""
    found = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, found)


def test_a_ctrl_c_while_torch_imports_waits_for_the_import_then_ends_the_run(monkeypatch, capsys, sigint):
    # torch's import runs Python from C++ (pybind11); a KeyboardInterrupt raised there aborts the
    # process with SIGABRT, so the handler must not raise until the import has returned.
    sigint(signal.default_int_handler)
    real_import = builtins.__import__
    events: list[str] = []

    def importing(name, *args, **kwargs):
        if name == "torch" and not events:
            events.append("SIGINT")
            signal.raise_signal(signal.SIGINT)  # Python runs the handler here, inside the import
            events.append("the import went on")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    assert main(["strategies"]) == INTERRUPTED
    assert events == ["SIGINT", "the import went on"]
    assert capsys.readouterr().err == "decodekit: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main put the handler back


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it(monkeypatch, capsys, sigint):
    # nohup, or a background job of a non-interactive shell: a Ctrl-C at the terminal is not meant for it.
    sigint(signal.SIG_IGN)
    real_import = builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "torch":
            signal.raise_signal(signal.SIGINT)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    assert main(["strategies"]) == 0
    assert "greedy" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN

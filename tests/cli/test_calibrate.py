"""`decodekit calibrate`: arguments checked before the model loads, the table, the saved file, the plot."""

from __future__ import annotations

import json
import re
import weakref

import pytest
import torch

from decodekit import models
from decodekit.bench import api
from decodekit.cli import main
from decodekit.core import costmodel

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def costs(monkeypatch, tmp_path):
    """Cost models saved under tmp_path/costs, with an empty memo."""
    monkeypatch.setattr(costmodel, "costs_dir", lambda: tmp_path / "costs")
    monkeypatch.setattr(costmodel, "_MEMO", weakref.WeakKeyDictionary())
    return tmp_path / "costs"


@pytest.fixture
def no_model_load(monkeypatch, tmp_path):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(api, "load_model", must_not_load)
    # on a cold cache, resolving the default model converts it (seconds of work): that must wait for the checks too
    monkeypatch.setattr(models, "_convert", must_not_load)
    monkeypatch.setenv("DECODEKIT_CACHE", str(tmp_path / "empty-cache"))


@pytest.mark.parametrize("argv, says", [
    (["calibrate", "--plot", "curve.jpg"], "--plot must name a .png file, got 'curve.jpg'"),
    (["calibrate", "--plot", "/nonexistent/dir/curve.png"], "the folder '/nonexistent/dir' does not exist"),
    (["calibrate", "--model", "/nonexistent/model"], "--model must be 'default' or a local HuggingFace model folder"),
    (["calibrate", "--device", "gpu"], "--device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    (["calibrate", "--device", f"cuda:{torch.cuda.device_count()}"], f"torch sees {torch.cuda.device_count()} CUDA device(s)"),
])
def test_bad_arguments_fail_before_the_model_loads(argv, says, no_model_load, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_calibrate_measures_again_prints_saves_and_plots(costs, tmp_path, monkeypatch, capsys):
    from decodekit.testing.models import tiny_model

    model = tiny_model("llama", vocab_size=1024, hidden=64, dtype=torch.float32)
    monkeypatch.setattr(api, "load_model", lambda name, dtype, device="cpu": (model, None))
    stale = costmodel.CostModel.flat(9.0)
    costmodel.use_cost_model(model, stale)  # what an earlier measurement left: calibrate ignores it
    plot = tmp_path / "curve.png"
    measure = costmodel.measure
    monkeypatch.setattr(costmodel, "measure", lambda m, **kw: measure(m, **{**kw, "budget_s": 1.0}))

    assert main(["calibrate", "--dtype", "float32", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^model: default \(SmolLM2-135M-Instruct\) \(float32, cpu\), torch threads \d+$", out, re.M)
    assert re.search(r"^cpu: .+; flags ", out, re.M)
    assert re.search(r"^\| 1 \| [\d.]+ \| 1\.00 \| [\d.]+ \|$", out, re.M)
    assert "| tokens | ms at 256 cached | x one token | ms measured (before pooling) |" in out
    assert re.search(r"\| tokens \| ms at (?!256)\d+ cached \| x one token \|", out)
    [saved] = costs.iterdir()
    assert f"saved to {saved}" in out
    fresh = costmodel.cost_model_for(model)
    assert fresh is not stale and fresh.seconds(1, 256) < 9.0  # the memo holds the new measurement too
    assert json.loads(saved.read_text())["cost"]["points"][0][0] == 1
    assert plot.read_bytes()[:8] == PNG


@pytest.mark.realmodel
def test_calibrate_the_default_model(costs, monkeypatch, capsys):
    measure = costmodel.measure
    monkeypatch.setattr(costmodel, "measure", lambda m, **kw: measure(m, **{**kw, "budget_s": 2.0}))
    assert main(["calibrate"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|(?: ([\d.]+) \|)?$", out, re.M)
    assert rows[0][0] == "1" and rows[0][2] == "1.00" and len(rows) >= 2 * 4  # both cache lengths, >= 4 sizes each
    first = [r for r in rows if r[3]]  # the reference length's table: the medians as measured beside the curve
    assert len(first) >= 4
    assert "saved to" in out and len(list(costs.iterdir())) == 1

"""Every strategy on a tensor-parallel model: 2 ranks under torchrun, gloo on the CPU, a tiny float64 Llama.

One torchrun launch (tp_ranks.py) decodes everything on both ranks; the tests below judge what each rank
wrote: every exact strategy's output equals single-process HF greedy's (model.generate on the unsharded
model) on every rank, seeded sampling draws the same tokens on every rank, and ranks made to disagree raise
RankMismatchError on every rank instead of hanging. Select them with `-m distributed`.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from decodekit.core.backend import check_shardable, check_tp_size, config_for, load_model, shardable_sizes
from decodekit.errors import InputError, ModelNotSupportedError
from decodekit.strategies.speculative import truncated_draft
from decodekit.testing import tiny_model

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="needs torch.distributed with the gloo backend"),
]

RANKS = 2
LAUNCH_TIMEOUT_S = 240  # two CPU ranks of a tiny model take ~20 s; a hang ends here, with the ranks' output
SCRIPT = Path(__file__).with_name("tp_ranks.py")
# greedy, jacobi, lookahead fixed and planned, speculative with a whole and a sharded draft, prompt-lookup,
# a step-contract strategy (tests.helpers.RowByRow), lookahead through model.generate(custom_generate=...)
EXACT_RUNS = 9
LOOPING = dict(arch="llama", seed=1, vocab_size=12, init=0.3)  # greedy falls into loops: n-gram drafts hit

# prompts (left-padded as model.generate takes a batch) and the generation settings of each case
CASES = {
    "batch": dict(input_ids=[[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [0, 0, 0, 3, 4, 9, 3, 4, 9, 3]],
                  attention_mask=[[1] * 10, [0, 0, 0] + [1] * 7], settings=dict(max_new_tokens=32, eos_token_id=None)),
    "eos": dict(input_ids=[[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [0, 0, 0, 3, 4, 9, 3, 4, 9, 3]],
                attention_mask=[[1] * 10, [0, 0, 0] + [1] * 7], settings=dict(max_new_tokens=32)),  # eos 2: rows stop apart
    "single": dict(input_ids=[[4, 1, 1, 10, 8, 2, 4, 5, 7, 3, 2, 7, 3]], attention_mask=[[1] * 13],
                   settings=dict(max_new_tokens=40, eos_token_id=None)),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_models(folder: Path) -> None:
    target = tiny_model(**LOOPING)
    target.save_pretrained(folder / "target")
    truncated_draft(target, layers=1).save_pretrained(folder / "draft")  # agrees with the target often
    (folder / "cases.json").write_text(json.dumps(CASES))


def launch(script: Path, nproc: int, args: list[str], cache: Path) -> None:
    """torchrun with `nproc` ranks on `script`; the whole process group is killed if it outlives the timeout."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DECODEKIT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT_S} s (a hang?); its output:\n{output[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited with {proc.returncode}; its output:\n{output[-6000:]}")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each rank wrote (rank order), and single-process HF greedy's sequences per case."""
    root = tmp_path_factory.mktemp("tp")
    models, out = root / "models", root / "out"
    out.mkdir()
    _save_models(models)
    launch(SCRIPT, RANKS, [str(models), str(out)], root / "cache")
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(RANKS)]
    return reports, _hf_greedy(models)


def _hf_greedy(models: Path) -> dict[str, list[list[int]]]:
    """model.generate's greedy output on the unsharded target, per case."""
    model = load_model(models / "target", torch.float64)
    expected = {}
    with torch.inference_mode():
        for name, case in CASES.items():
            out = model.generate(torch.tensor(case["input_ids"]), attention_mask=torch.tensor(case["attention_mask"]),
                                 do_sample=False, **case["settings"])
            expected[name] = out.tolist()
    return expected


def test_the_model_is_sharded_on_every_rank(ranks):
    reports, _ = ranks
    assert [r["rank"] for r in reports] == list(range(RANKS))
    assert all(r["world"] == RANKS and r["sharded"] == "DTensor" for r in reports)


def test_every_exact_strategy_equals_single_process_hf_greedy_on_every_rank(ranks):
    reports, expected = ranks
    runs = reports[0]["exact"]
    assert len(runs) == len(CASES) * EXACT_RUNS
    for key in runs:
        case = key.split("/")[0]
        for report in reports:
            got = report["exact"][key]
            assert "error" not in got, f"rank {report['rank']}, {key}: {got}"
            assert got["sequences"] == expected[case], f"rank {report['rank']}, {key}"


def test_multi_token_strategies_took_fewer_steps_than_greedy(ranks):
    """The drafts were accepted (the test exercises cache compaction on sharded caches, not one token a step)."""
    reports, _ = ranks
    exact = reports[0]["exact"]
    for run in ("lookahead-fixed", "speculative-whole-draft", "speculative-sharded-draft"):
        assert exact[f"single/{run}"]["steps"] < exact["single/greedy"]["steps"], run


def test_seeded_sampling_draws_the_same_tokens_on_every_rank(ranks):
    reports, _ = ranks
    for key, got in reports[0]["sampling"].items():
        assert "error" not in got, f"rank 0, {key}: {got}"
        for report in reports[1:]:
            assert report["sampling"][key] == got, f"rank {report['rank']}, {key}"
    prompt = len(CASES["batch"]["input_ids"][0])
    new = reports[0]["sampling"]["greedy-seeded"]["sequences"][0][prompt:]
    assert len(set(new)) > 1  # sampled, not a constant


@pytest.mark.parametrize("case, step_zero, what", [
    ("processor", False, "the committed tokens of row 0"),
    ("prompt", True, "the proposals) of row 1"),
])
def test_ranks_that_disagree_raise_on_every_rank(ranks, case, step_zero, what):
    reports, _ = ranks
    for report in reports:
        got = report["disagree"][case]
        assert got.get("error") == "RankMismatchError", f"rank {report['rank']}: {got}"
        assert what in got["message"] and "rank(s) [1]" in got["message"], got["message"]
        assert got["message"].startswith("step 0:") == step_zero, got["message"]


def test_a_generator_seeded_differently_per_rank_is_refused(ranks):
    reports, _ = ranks
    for report in reports:
        got = report["disagree"]["generator"]
        assert got.get("error") == "RankMismatchError", f"rank {report['rank']}: {got}"
        assert "generator= differs" in got["message"] and "manual_seed" in got["message"]


# -- loading: what tp_size allows, in this process (no torchrun) ------------------------------------------

@pytest.mark.parametrize("value", [0, -2, 1.5, "2", True])
def test_tp_size_must_be_a_positive_integer(value):
    with pytest.raises(InputError, match=r"tp_size must be None or an integer >= 1.*got"):
        check_tp_size(value)


def test_tp_size_above_one_needs_torch_distributed():
    assert not dist.is_initialized()
    with pytest.raises(InputError, match=r"tp_size=2 .* torch.distributed is not initialised.*torchrun"):
        check_tp_size(2)
    assert check_tp_size(None) is None and check_tp_size(1) is None


def test_tp_size_must_equal_the_world_size(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        with pytest.raises(InputError, match=r"tp_size=2 must equal the number of ranks .* \(1\); allowed here: "
                                             r"None, 1 or 1"):
            check_tp_size(2)
    finally:
        dist.destroy_process_group()


def test_a_model_whose_heads_do_not_split_over_the_ranks_keeps_attention_whole():
    """SmolLM2-135M's shape: 9 heads and 3 key-value heads split over 3 ranks, not 2; over 2 ranks its attention
    stays whole on every rank and only its MLP (1536 wide) is sharded."""
    config = config_for("llama", hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536)
    assert shardable_sizes(config) == [1, 3]
    assert check_shardable(config, 3) is None  # the model's own plan, whole
    assert check_shardable(config, 2) == {f"model.layers.*.self_attn.{p}": "replicate"
                                          for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    with pytest.raises(ModelNotSupportedError, match=r"cannot split over 7 ranks, .*; allowed tp_size \(rank counts\): "
                                                     r"1, 3; with attention kept whole: 2, 4, 6, 8, 12, 16$"):
        check_shardable(config, 7)


def test_a_model_that_splits_over_the_ranks_neither_by_heads_nor_by_mlp_is_refused_before_loading():
    config = config_for("llama", hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1537)
    with pytest.raises(ModelNotSupportedError, match=r"9 attention heads and 3 key-value heads, which tensor "
                                                     r"parallelism cannot split over 2 ranks, and an MLP of 1537 .*; "
                                                     r"allowed tp_size \(rank counts\): 1, 3"):
        check_shardable(config, 2)

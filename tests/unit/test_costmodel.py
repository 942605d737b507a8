"""The forward cost model: interpolation, the cache-length term, online corrections, the disk cache, and
a real measurement on a small random model."""

from __future__ import annotations

import json
import os
import time
import weakref

import pytest
import torch

from decodekit.core import costmodel
from decodekit.core.costmodel import CostModel, _thin, cost_model_for, measure, plan
from decodekit.core.machine import parse_cpuinfo
from decodekit.testing.models import tiny_model

# -- the synthetic constructors and predictions -----------------------------------------------------


def test_piecewise_linear_between_points_and_exact_on_them():
    cost = CostModel.from_points({1: 1.0, 4: 2.5, 8: 3.0}, reference_cached=100)
    assert [cost.seconds(k, 100) for k in (1, 2, 4, 6, 8)] == pytest.approx([1.0, 1.5, 2.5, 2.75, 3.0])


def test_beyond_the_last_point_the_last_slope_never_below_the_last_value():
    rising = CostModel.from_points({1: 1.0, 4: 2.5, 8: 3.0}, reference_cached=0)
    assert rising.seconds(16, 0) == pytest.approx(3.0 + 8 * 0.5 / 4)
    falling = CostModel.from_points({1: 1.0, 2: 3.0, 4: 2.0}, reference_cached=0)
    assert falling.seconds(3, 0) == pytest.approx(2.5) and falling.seconds(64, 0) == pytest.approx(2.0)


def test_flat_and_linear():
    flat = CostModel.flat(0.02)
    assert all(flat.seconds(k, c) == 0.02 and flat.relative(k, c) == 1.0 for k in (1, 7, 64, 1000) for c in (0, 10**5))
    line = CostModel.linear(0.01, 0.001)
    assert line.seconds(11, 256) == pytest.approx(0.02) and line.relative(11, 256) == pytest.approx(2.0)
    assert line.seconds(200, 0) == pytest.approx(0.01 + 0.199)
    assert line.curve(256, (1, 3)) == [(1, pytest.approx(0.01)), (3, pytest.approx(0.012))]


def test_cost_grows_with_the_cache_and_never_drops_below_a_floor():
    cost = CostModel.from_points({1: 1.0, 16: 2.0}, reference_cached=100, per_cached=0.001, per_cached_token=0.0001)
    assert cost.seconds(1, 200) == pytest.approx(1.1) and cost.seconds(1, 0) == pytest.approx(0.9)
    assert cost.seconds(16, 200) == pytest.approx(2.0 + 100 * (0.001 + 15 * 0.0001))
    assert cost.relative(16, 1000) < cost.relative(16, 100) * 1.2  # both grow; the ratio stays sane
    steep = CostModel.from_points({1: 1.0}, reference_cached=100, per_cached=1.0)
    assert steep.seconds(1, 0) == pytest.approx(0.1)  # a tenth of base(k), not negative


def test_every_row_of_a_packed_forward_reads_its_own_cache():
    cost = CostModel.from_points({1: 1.0, 16: 2.0}, reference_cached=100, per_cached=0.001, per_cached_token=0.0001)
    # 2 rows x 4 tokens after 300 columns: the 8 tokens' cost, plus the second row's 300 cached keys and values
    assert cost.seconds(8, 300, rows=2) == pytest.approx(cost.seconds(8, 300) + 300 * 0.001)
    assert cost.seconds(8, 300, rows=1) == cost.seconds(8, 300)
    assert cost.relative(8, 300, rows=2) == pytest.approx(cost.seconds(8, 300, rows=2) / cost.seconds(2, 300, rows=2))
    with pytest.raises(ValueError, match=r"rows must be in \[1, tokens=3\] \(each row puts a token through\), got 4"):
        cost.seconds(3, 300, rows=4)
    # a packed forward that takes just what was predicted corrects nothing; one twice as slow corrects it upwards
    cost.observe(8, 300, cost.seconds(8, 300, rows=2), rows=2)
    assert cost.seconds(8, 300, rows=2) == pytest.approx(cost.raw(8, 300, rows=2))
    cost.observe(8, 300, 2 * cost.seconds(8, 300, rows=2), rows=2)
    assert cost.seconds(8, 300, rows=2) > cost.raw(8, 300, rows=2)


@pytest.mark.parametrize("build, says", [
    (lambda: CostModel.from_points({2: 1.0}), "points must include 1 token"),
    (lambda: CostModel.from_points({1: 1.0, 2: -1.0}), "got 2 -> -1.0"),
    (lambda: CostModel.from_points({1: 1.0}, per_cached=-1.0), "per_cached must be a finite number >= 0, got -1.0"),
    (lambda: CostModel.linear(0.01, -0.001), "per_token must be a finite number >= 0, got -0.001"),
    (lambda: CostModel.flat().seconds(0, 10), "tokens must be >= 1, got 0"),
    (lambda: CostModel.flat().relative(1, -1), "cached must be >= 0, got -1"),
    (lambda: CostModel.flat().observe(1, 0, float("nan")), "seconds must be a finite number > 0, got nan"),
])
def test_errors_name_the_parameter_and_value(build, says):
    with pytest.raises(ValueError, match=says):
        build()


# -- online refinement ------------------------------------------------------------------------------


def _feed(cost: CostModel, truth, sizes, rounds: int, cached: int = 256) -> None:
    for _ in range(rounds):
        for k in sizes:
            cost.observe(k, cached, truth(k))


def test_a_uniformly_slower_machine_is_corrected_everywhere():
    cost = CostModel.linear(0.01, 0.001)
    before = {k: cost.relative(k, 256) for k in (1, 4, 64)}
    _feed(cost, lambda k: 2 * CostModel.linear(0.01, 0.001).seconds(k, 256), [1, 4, 16], rounds=60)
    for k in (1, 4, 16, 64, 300):  # 64 and 300 were never observed
        assert cost.seconds(k, 256) == pytest.approx(2 * CostModel.linear(0.01, 0.001).seconds(k, 256), rel=0.03)
    assert {k: cost.relative(k, 256) for k in before} == pytest.approx(before, rel=0.03)


def test_only_ones_was_enough_for_a_global_correction():
    cost = CostModel.linear(0.01, 0.001)
    _feed(cost, lambda k: 0.03, [1], rounds=80)
    assert cost.seconds(1, 256) == pytest.approx(0.03, rel=0.02)
    assert cost.seconds(16, 256) == pytest.approx(3 * 0.025, rel=0.03) and cost.relative(16, 256) == pytest.approx(2.5, rel=0.03)


def test_a_different_shape_is_learnt_per_size():
    cost = CostModel.linear(0.01, 0.001)  # predicts 16 tokens at 2.5x one token
    truth = {1: 0.01, 16: 0.06}  # this machine: 6x
    _feed(cost, truth.__getitem__, [1, 16], rounds=150)
    assert cost.relative(16, 256) == pytest.approx(6.0, rel=0.05)
    assert cost.seconds(1, 256) == pytest.approx(0.01, rel=0.05) and cost.seconds(16, 256) == pytest.approx(0.06, rel=0.05)
    assert 1.0 < cost.relative(4, 256) < cost.relative(8, 256) < cost.relative(16, 256)  # between anchors: in between


def test_one_stall_moves_the_prediction_by_a_bounded_step_and_is_forgotten():
    cost = CostModel.linear(0.01, 0.001)
    cost.observe(8, 256, 1000.0)  # a 100,000x stall
    bound = 4 ** cost.global_rate * 4 ** cost.shape_rate
    assert cost.seconds(8, 256) <= CostModel.linear(0.01, 0.001).seconds(8, 256) * bound * (1 + 1e-9)
    assert cost.relative(8, 256) <= CostModel.linear(0.01, 0.001).relative(8, 256) * 4 ** cost.shape_rate * (1 + 1e-9)
    _feed(cost, lambda k: 0.01 + 0.001 * (k - 1), [1, 8], rounds=100)
    assert cost.seconds(8, 256) == pytest.approx(0.017, rel=0.02)
    cost.reset_corrections()
    assert cost.seconds(8, 256) == pytest.approx(0.017) and cost.observations == 0


def test_corrections_are_deterministic():
    first, second = CostModel.linear(0.01, 0.002), CostModel.linear(0.01, 0.002)
    for cost in (first, second):
        _feed(cost, lambda k: 0.013 * k ** 0.5, [1, 3, 12, 40], rounds=7)
    assert first.curve(300, (1, 5, 64)) == second.curve(300, (1, 5, 64))


def test_json_round_trip_keeps_the_measured_part():
    cost = CostModel.from_points({1: 0.01, 8: 0.02, 64: 0.09}, reference_cached=300, per_cached=1e-6,
                                 per_cached_token=1e-8)
    cost.info["repeats"] = 3
    back = CostModel.from_json(json.loads(json.dumps(cost.to_json())))
    assert back.curve(700, (1, 9, 100)) == cost.curve(700, (1, 9, 100)) and back.info == {"repeats": 3}


# -- measuring: the plan, and a real model ----------------------------------------------------------


def test_plan_drops_sizes_before_rounds_keeping_the_small_counts_and_the_largest():
    sizes = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert plan(sizes, 3, lambda k: 0.001, budget_s=6.0) == (sizes, 3)
    chosen, rounds = plan(sizes, 3, lambda k: 0.1 + 0.01 * k, budget_s=6.0)
    assert rounds == 3 and chosen[0] == 1 and chosen[-1] == 64 and 4 <= len(chosen) < len(sizes)
    # a slow model: the cheap small counts a steep curve is decided on, then the largest, then powers of two
    assert _thin(sizes, 4) == [1, 2, 4, 64] and _thin(sizes, 7) == [1, 2, 4, 8, 16, 32, 64]
    # three rounds of 4 counts (5.7 s) rather than 5 counts (6.9 s) in fewer rounds
    assert plan(sizes, 5, lambda k: 0.3 + 0.01 * k, budget_s=6.0) == ([1, 2, 4, 64], 3)
    assert plan(sizes, 5, lambda k: 0.3 + 0.01 * k, budget_s=7.0) == ([1, 2, 4, 8, 64], 3)
    # rounds drop under three only when four counts do not fit three rounds
    assert plan(sizes, 5, lambda k: 1.0, budget_s=9.0) == ([1, 2, 4, 64], 2)
    assert plan(sizes, 3, lambda k: 10.0, budget_s=6.0) == ([1, 2, 4, 64], 1)  # the least, even over budget


@pytest.fixture
def medium_model():
    """Big enough that 64 tokens cost clearly more than one (a 4k vocabulary, every row's logits)."""
    return tiny_model("llama", vocab_size=4096, hidden=128, layers=2, dtype=torch.float32)


def test_measure_a_real_model_within_its_budget(medium_model):
    began = time.perf_counter()
    cost = measure(medium_model, cached=128, budget_s=2.0)
    elapsed = time.perf_counter() - began
    tokens = [k for k, _ in cost.points]
    assert tokens[0] == 1 and len(tokens) >= 4 and all(s > 0 for _, s in cost.points)
    assert elapsed < 2.0 * 3  # about the budget (a loaded machine may stretch the last round)
    assert cost.seconds(64, 128) > cost.seconds(1, 128)
    # the second length: four times the first, within what the model attends over (512 positions here)
    assert cost.info["second_cached"] == min(4 * 128, medium_model.config.max_position_embeddings - 16) and [k for k, _ in cost.info["second_points"]] == [1, 16]
    assert cost.seconds(16, 100_000) >= cost.seconds(16, 128)


def test_measure_times_every_count_up_to_16(medium_model):
    """Where the planner's steps mostly lie, every count is timed, not interpolated: a CPU's float32 matrix
    product can run 3, 7 or 11 tokens slower than 4, 8 or 12 (docs/cost-model.md)."""
    cost = measure(medium_model, cached=128, budget_s=6.0)
    measured = [k for k, _ in cost.info["measured_points"]]
    assert [k for k in measured if k <= 16] == list(range(1, 17)) and measured[-1] == 64


def test_measure_refuses_what_the_model_cannot_attend_over():
    with pytest.raises(ValueError, match="measure: cached 500 \\+ the largest token count 64 = 564 exceeds"):
        measure(tiny_model("llama"), cached=500)
    with pytest.raises(ValueError, match="measure: repeats must be >= 1, got 0"):
        measure(tiny_model("llama"), repeats=0)


# -- the per-machine cache --------------------------------------------------------------------------


@pytest.fixture
def fake_measure(monkeypatch, tmp_path):
    """DECODEKIT_CACHE in tmp_path (DECODEKIT_COSTS unset), an empty memo, and measure() replaced by a
    counted synthetic one."""
    monkeypatch.setenv("DECODEKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("DECODEKIT_COSTS", raising=False)
    monkeypatch.setattr(costmodel, "_MEMO", weakref.WeakKeyDictionary())
    # tiny models come with a synthetic cost model attached; here they must go through the cache and measure()
    monkeypatch.setattr("decodekit.testing.models.use_cost_model", lambda model, cost: None)
    calls = []

    def synthetic(model, **kwargs):
        calls.append(model)
        return CostModel.from_points({1: 0.01, 16: 0.03}, reference_cached=256, per_cached=1e-6)

    monkeypatch.setattr(costmodel, "measure", synthetic)
    return calls


def test_disk_cache_round_trip(fake_measure, tmp_path):
    model = tiny_model("llama", seed=0)
    first = cost_model_for(model)
    assert len(fake_measure) == 1 and cost_model_for(model) is first  # memoised per model object
    [saved] = (tmp_path / "costs").iterdir()
    assert saved.name.startswith("llama-float64-cpu-") and json.loads(saved.read_text())["key"]["cpu_flags"] is not None
    twin = tiny_model("llama", seed=1)  # another object, same cost key: read from disk, not measured
    assert cost_model_for(twin).curve(512) == first.curve(512) and len(fake_measure) == 1
    other = tiny_model("llama", seed=0, dtype=torch.float32)  # another dtype: another key
    cost_model_for(other)
    assert len(fake_measure) == 2 and len(list((tmp_path / "costs").iterdir())) == 2


def test_decodekit_costs_overrides_the_folder(fake_measure, tmp_path, monkeypatch):
    monkeypatch.setenv("DECODEKIT_COSTS", str(tmp_path / "elsewhere"))
    cost_model_for(tiny_model("llama", seed=0))
    assert [p.parent for p in (tmp_path / "elsewhere").iterdir()] == [tmp_path / "elsewhere"]
    assert not (tmp_path / "costs").exists()  # nothing under $DECODEKIT_CACHE/costs


def test_the_suite_keeps_its_curves_out_of_the_users_cache():
    """tests/conftest.py sets DECODEKIT_COSTS for the whole run; every test and subprocess inherits it."""
    from decodekit.models import cache_dir

    folder = costmodel.costs_dir()
    assert os.environ["DECODEKIT_COSTS"] == str(folder) and folder.name.startswith("decodekit-test-costs-")
    assert cache_dir() not in folder.parents


def test_the_key_covers_threads_and_the_cpu(fake_measure, monkeypatch):
    model = tiny_model("llama")
    key = costmodel.cost_key(model)
    assert {"torch_threads", "cpu_model", "cpu_flags", "torch", "num_hidden_layers", "vocab_size", "dtype"} <= set(key)
    monkeypatch.setattr(costmodel.torch, "get_num_threads", lambda: key["torch_threads"] + 1)
    assert costmodel.cost_path(costmodel.cost_key(model)) != costmodel.cost_path(key)


@pytest.mark.parametrize("damage", ["{not json", '{"key": {}, "cost": {}}', ""])
def test_a_corrupt_file_is_measured_again(fake_measure, tmp_path, capsys, damage):
    model = tiny_model("llama")
    path = costmodel.cost_path(costmodel.cost_key(model))
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    cost = cost_model_for(model)
    err = capsys.readouterr().err
    assert len(fake_measure) == 1 and err.count("\n") == 1 and f"{path} is unreadable" in err
    assert CostModel.from_json(json.loads(path.read_text())["cost"]).curve(256) == cost.curve(256)  # rewritten


def test_an_unwritable_cache_still_works(fake_measure, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DECODEKIT_CACHE", str(blocker))
    cost = cost_model_for(tiny_model("llama"))
    err = capsys.readouterr().err
    assert cost.seconds(1, 256) == pytest.approx(0.01)
    first, second = err.splitlines()  # what happens (a first measurement), then why it is not kept
    assert first.startswith("decodekit: measuring what a forward of this model costs on this machine")
    assert "warning: cannot save the forward cost model" in second


def test_injected_model_is_returned(fake_measure):
    model = tiny_model("llama")
    costmodel.use_cost_model(model, CostModel.flat(0.5))
    assert cost_model_for(model).seconds(9, 9) == 0.5 and fake_measure == []


# -- the machine --------------------------------------------------------------------------------------

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: something else
"""


def test_cpuinfo_gives_the_model_family_and_the_flags_that_matter():
    info = parse_cpuinfo(CPUINFO)
    assert info == {"cpu_model": "AMD EPYC", "cpu_family": "26", "cpu_model_number": "2",
                    "cpu_flags": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]}
    assert parse_cpuinfo("")["cpu_flags"] == [] and parse_cpuinfo("")["cpu_model"]


def test_the_monotone_fit_pools_dips_and_keeps_an_ordered_curve():
    from decodekit.core.costmodel import monotone

    ordered = {1: 1.0, 2: 1.0, 4: 1.5, 8: 3.0}
    assert monotone(ordered) == ordered
    # 3 timed below 2 and 6 below 4: each violating run becomes its mean (least squares, non-decreasing)
    got = monotone({1: 55.0, 2: 63.0, 3: 53.0, 4: 66.0, 6: 54.0, 8: 60.0, 16: 81.0})
    assert got[2] == got[3] == pytest.approx(58.0)
    assert got[4] == got[6] == got[8] == pytest.approx(60.0)
    assert got[1] == 55.0 and got[16] == 81.0
    values = [got[k] for k in sorted(got)]
    assert values == sorted(values)
    assert monotone({1: 2.0, 2: 1.0}) == {1: 1.5, 2: 1.5}  # even the one-token point is pooled when it must be


def test_a_dip_beyond_the_rounds_noise_is_the_kernels_and_stays():
    from decodekit.core.costmodel import _spread, monotone

    # float32 on one CPU: 2 and 3 tokens consistently slower than 4 (a slower small-matrix path)
    points = {1: 40.0, 2: 64.0, 3: 79.0, 4: 61.0, 8: 57.0, 16: 70.0}
    tight = {k: 1.0 for k in points}  # every size repeated within about 1 ms
    assert monotone(points, tight) == points
    loose = {k: 12.0 for k in points}  # a loaded machine: these dips are within its noise
    got = monotone(points, loose)
    assert [got[k] for k in sorted(got)] == sorted(got.values())
    # 8 timed 4 ms below 4, each with a 3 ms spread: within twice the spread, so pooled
    assert monotone({1: 40.0, 4: 61.0, 8: 57.0}, {1: 1.0, 4: 3.0, 8: 3.0}) == {1: 40.0, 4: 59.0, 8: 59.0}
    assert _spread([10.0, 10.0, 10.0]) == 0.0
    assert _spread([9.0, 10.0, 11.0, 10.0, 30.0]) == pytest.approx(1.4826)  # one stall barely moves it

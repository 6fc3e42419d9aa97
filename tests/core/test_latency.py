"""Latency table, speedup budget and the planner on a fake timer (latency.py, budget.py, plan.py)."""
from __future__ import annotations

import pytest

from vtrans_core import validate_request
from vtrans_core.budget import Budget
from vtrans_core.errors import CompressionError
from vtrans_core.flops import ModelShape
from vtrans_core.latency import latency_fraction, latency_table, measure_table
from vtrans_core.plan import make_plan, neutral_scores

from .conftest import tiny_config, tiny_model


def fake_measure(calls: list | None = None):
    """ms = a linear cost in the widths, plus a step penalty for FFN widths not a multiple of 64."""
    def measure(kind, hidden, width):
        if calls is not None:
            calls.append((kind, hidden, width))
        if kind == "attn":
            return 0.01 * hidden * width
        return 0.001 * hidden * width + (0.5 if width % 64 else 0.0)
    return measure


def shape(hidden=384, heads=12, ffn=1536, layers=6):
    return ModelShape(family="bert", vocab=1000, positions=512, token_types=2, hidden=hidden, head_dim=hidden // heads,
                      heads=[heads] * layers, ffn=[ffn] * layers, num_labels=3)


def test_table_predicts_the_fake_timer():
    s = shape()
    t = measure_table(s, fake_measure(), hidden_pruned=False, round_to=8)
    assert t.attn_ms(384, 5) == pytest.approx(0.01 * 384 * 5)
    assert t.ffn_ms(384, 768) == pytest.approx(0.001 * 384 * 768)
    assert t.ffn_ms(384, 0) == 0.0
    pruned = s.replace(heads=[6] * 6, ffn=[768] * 6)
    assert t.blocks_ms(pruned) == pytest.approx(6 * (0.01 * 384 * 6 + 0.001 * 384 * 768))
    skipped = pruned.replace(attn_blocks=[False] + [True] * 5, heads=[0] + [6] * 5)
    assert t.blocks_ms(skipped) == pytest.approx(t.blocks_ms(pruned) - 0.01 * 384 * 6)


def test_hidden_grid_interpolates():
    s = shape()
    t = measure_table(s, fake_measure(), hidden_pruned=True, round_to=8)
    assert sorted(int(h) for h in t.attn) == [96, 192, 288, 384]
    assert t.attn_ms(240, 12) == pytest.approx(0.01 * 240 * 12)     # linear in hidden: exact


def test_table_is_measured_once_and_calibrated(tmp_path):
    model = tiny_model("bert")
    calls: list = []
    t1 = latency_table(model, "cpu", False, 4, measure=fake_measure(calls), dense_ms=lambda: 100.0, directory=tmp_path)
    n = len(calls)
    assert n > 0
    assert t1.predict_ms(t1_shape(model)) == pytest.approx(100.0)       # base absorbs the rest of the model
    t2 = latency_table(model, "cpu", False, 4, measure=fake_measure(calls), dense_ms=lambda: 1e9, directory=tmp_path)
    assert len(calls) == n and t2.base_ms == t1.base_ms                  # from the cache
    assert len(list(tmp_path.glob("*.json"))) == 1
    # another shape or device: another table
    latency_table(tiny_model("bert", ffn=32), "cpu", False, 4, measure=fake_measure(calls), dense_ms=lambda: 1.0,
                  directory=tmp_path)
    assert len(calls) > n and len(list(tmp_path.glob("*.json"))) == 2


def t1_shape(model):
    from vtrans_core.families import adapter_for
    return adapter_for(model).shape_of(model)


@pytest.mark.parametrize("speedup", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_planner_meets_a_speedup_on_the_fake_timer(speedup, layout):
    s = shape()
    t = measure_table(s, fake_measure(), hidden_pruned=False, round_to=8)
    t.base_ms = 50.0
    frac = latency_fraction(t, s)
    scores = neutral_scores(s, ("heads", "ffn", "attn_block", "ffn_block"), layout)
    if layout == "uniform":
        scores = neutral_scores(s, ("ffn", "attn_block"), layout)
    plan = make_plan(s, s, scores, "flops", 1 / speedup, 128, layout, 64, size_fraction=frac)
    predicted = 1 / frac(plan.result_shape())
    assert speedup <= predicted <= speedup * 1.1
    # round_to 64: every kept FFN width avoids the fake timer's penalty for odd widths
    assert all(f % 64 == 0 for f in plan.result_shape().ffn)


def test_speedup_budget_parsing_and_checks():
    assert Budget.parse({"kind": "speedup", "target": 2}).size_target == 0.5
    assert Budget.parse({"kind": "flops", "target": 0.4}).size_kind == "flops"
    for bad in (0.5, 1.0, 100):
        with pytest.raises(CompressionError) as err:
            Budget.parse({"kind": "speedup", "target": bad})
        assert err.value.field == "budget.target"
    cfg = tiny_config("bert").to_dict()
    assert validate_request(cfg, {"kind": "speedup", "target": 1.5}, "faster", None)["budget"]["kind"] == "speedup"
    with pytest.raises(CompressionError) as err:
        validate_request(cfg, {"kind": "speedup", "target": 1.5}, "vtrans", None)
    assert err.value.field == "budget.kind"
    with pytest.raises(CompressionError) as err:   # FLOPs alone rule out 40x on a model that keeps its hidden width
        validate_request(cfg, {"kind": "speedup", "target": 40}, "faster", None)
    assert err.value.field == "budget.target"


def test_compress_to_a_speedup_reports_target_predicted_and_measured(tiny_model_dir, tiny_dataset_csv, tmp_path,
                                                                     monkeypatch):
    from vtrans_core import compress, latency

    # The table's block timings come from the fake timer (scaled so the calibrated base, the real
    # dense time minus the blocks, stays 0): a tiny model's real block latencies are mostly overhead,
    # and with the cores shared (a CI run beside a benchmark) the measured table once left 1/1.1 out
    # of reach ("reachable minimum 0.958"). The dense time and the reported speedup stay measured.
    fake = fake_measure()
    monkeypatch.setattr(latency, "torch_measure",
                        lambda head_dim, device: lambda kind, hidden, width: 1000.0 * fake(kind, hidden, width))
    monkeypatch.setenv("VTRANS_CACHE_DIR", str(tmp_path / "cache"))
    opts = {"latency_runs": 1, "round_to": 4, "fast_min_examples": 32, "calibration_rows": 64, "fisher_rows": 32}
    m = compress(tiny_model_dir, tiny_dataset_csv, {"kind": "speedup", "target": 1.1}, "faster", opts,
                 tmp_path / "out").metrics
    assert m["speedup_target"] == 1.1 and m["speedup_predicted"] >= 1.1
    assert m["speedup"] is not None and m["method_info"]["latency_table"]["key"]
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 1


def test_a_burst_of_other_work_during_one_sweep_does_not_reach_the_table():
    """Each entry is timed in several sweeps over the grid and the median kept: one sweep of a row
    timed 10x too slow (another process on the machine) leaves the table as a quiet machine's;
    rows come out non-decreasing in width whatever single timings said."""
    from vtrans_core import latency

    clean = measure_table(shape(), fake_measure(), hidden_pruned=True, round_to=8)
    calls = {"n": 0}
    quiet = fake_measure()

    def bursty(kind, hidden, width):
        calls["n"] += 1
        slow = 1 <= calls["n"] % 400 <= 40          # a burst over 40 consecutive timings (a sweep is 112)
        return quiet(kind, hidden, width) * (10.0 if slow else 1.0)

    noisy = measure_table(shape(), bursty, hidden_pruned=True, round_to=8, passes=3)
    assert noisy.attn == clean.attn and noisy.ffn == clean.ffn
    assert latency.monotone([0.0, 3.0, 9.0, 4.0, 5.0]) == [0.0, 3.0, 6.0, 6.0, 6.0]
    for row in clean.ffn.values():
        values = [v for _, v in sorted((int(k), v) for k, v in row.items())]
        assert values == sorted(values)


def test_the_dense_calibration_keeps_the_faster_of_two_timings(tmp_path):
    from vtrans_core.families import adapter_for

    model = tiny_model("bert")
    timings = iter([2500.0, 1000.0])    # the first one under load
    t = latency_table(model, "cpu", False, 4, measure=fake_measure(), dense_ms=lambda: next(timings),
                      directory=tmp_path)
    assert t.base_ms == pytest.approx(1000.0 - t.blocks_ms(adapter_for(model).shape_of(model)))

"""Budget-exact plans: fraction <= target and close to it, ranking by log alpha, rounding,
reachable minimum and clear errors for impossible budgets."""
from __future__ import annotations

import pytest
import torch

from .conftest import perturb_masks, tiny_config, tiny_model
from vtrans_core.errors import CompressionError
from vtrans_core.flops import count_params
from vtrans_core.plan import PruningPlan, min_fraction
from vtrans_core.prunable import PrunableModel

# "big enough" that one pruning unit is a small share of the model
MEDIUM = dict(hidden=128, layers=4, heads=8, ffn=512, vocab=500)


@pytest.fixture(scope="module")
def medium_model():
    return tiny_model("bert", **MEDIUM)


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
@pytest.mark.parametrize("kind", ["params", "flops"])
def test_plan_meets_budget_closely(medium_model, layout, kind):
    pm = PrunableModel(medium_model, layout=layout)
    perturb_masks(pm, seed=3)
    for target in (0.8, 0.6, 0.5, 0.4, 0.3):
        plan = pm.plan_for({"kind": kind, "target": target}, round_to=8)
        f = plan.fraction(kind, 128)
        assert target - 0.01 <= f <= target, (target, f)
        s = plan.result_shape()
        if layout == "per_layer":
            assert s.hidden % 8 == 0 and all(n % 8 == 0 for n in s.ffn)
            assert all(h >= 1 for h, a in zip(s.heads, s.attn_blocks) if a)
        else:
            assert s.is_uniform(removed_layers=True) and s.hidden == max(s.heads) * s.head_dim
    pm.remove_hooks()


def test_least_informative_units_go_first(medium_model):
    pm = PrunableModel(medium_model, structures={"heads"}, layout="per_layer")
    with torch.no_grad():
        pm.masks["heads"].log_sigma2[2, 5] = 5.0   # alpha < 1: uninformative
        pm.masks["heads"].log_sigma2[0, 1] = 2.0   # next least informative (still alpha < 1)
        pm.masks["heads"].log_sigma2[3, 7] = -8.0  # slightly below the rest
    dense = count_params(medium_model)
    one_head = 4 * (128 * 16 + 16)  # q, k, v rows + biases, o columns
    plan = pm.plan_for({"kind": "params", "target": 1 - 1.5 * one_head / dense})
    assert 5 not in plan.heads[2] and 1 not in plan.heads[0]
    assert all(len(h) == 8 for l, h in enumerate(plan.heads) if l not in (0, 2))
    plan = pm.plan_for({"kind": "params", "target": 1 - 2.5 * one_head / dense})
    assert 7 not in plan.heads[3]
    pm.remove_hooks()


def test_hard_pruned_entries_never_come_back(medium_model):
    pm = PrunableModel(medium_model, layout="per_layer")
    perturb_masks(pm, seed=1)
    first = pm.plan_for({"kind": "flops", "target": 0.7})
    pm.apply_plan(first)
    with torch.no_grad():  # make the pruned entries look very informative now
        for m in pm.masks.values():
            m.log_sigma2.masked_fill_(m.pruned, -30.0)
    second = pm.plan_for({"kind": "flops", "target": 0.6})
    assert set(second.hidden) <= set(first.hidden)
    for a, b in zip(second.heads, first.heads):
        assert set(a) <= set(b)
    for a, b in zip(second.ffn, first.ffn):
        assert set(a) <= set(b)
    pm.remove_hooks()


def test_plan_json_round_trip(medium_model):
    pm = PrunableModel(medium_model, layout="per_layer")
    perturb_masks(pm, seed=2)
    plan = pm.plan_for({"kind": "params", "target": 0.5})
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan
    assert again.fraction("params") == plan.fraction("params")
    assert again.kept_summary()["hidden"] == len(plan.hidden)
    pm.remove_hooks()


def test_min_fraction_and_impossible_budget():
    model = tiny_model("bert", **MEDIUM)
    cfg = tiny_config("bert", **MEDIUM)
    dense = count_params(cfg)
    embeddings = (500 + 64 + 2) * 128 + 2 * 128
    # without hidden pruning, params cannot drop below the embeddings' share (+ head, 1 head/layer ...)
    floor = min_fraction(cfg.to_dict(), "params", structures={"heads", "ffn", "attn_block", "ffn_block"})
    assert floor > embeddings / dense
    pm = PrunableModel(model, structures={"heads", "ffn", "attn_block", "ffn_block"}, layout="per_layer")
    assert pm.min_fraction("params") == pytest.approx(floor)
    with pytest.raises(CompressionError) as err:
        pm.plan_for({"kind": "params", "target": floor - 0.01})
    assert err.value.field == "budget.target" and "reachable minimum" in str(err.value)
    plan = pm.plan_for({"kind": "params", "target": floor + 0.005})
    assert plan.fraction("params") <= floor + 0.005
    pm.remove_hooks()
    # more structures reach further; FFN-only pruning cannot touch attention
    everything = min_fraction(cfg, "flops", structures={"hidden", "heads", "ffn", "attn_block", "ffn_block"})
    ffn_only = min_fraction(cfg, "flops", structures={"ffn"})
    assert everything < ffn_only < 1.0
    uniform = min_fraction(cfg, "flops", structures={"heads", "ffn"}, layout="uniform")
    assert uniform < ffn_only


def test_uniform_plan_on_per_layer_model_is_refused():
    pm = PrunableModel(tiny_model("bert"), layout="per_layer")
    plan = pm.plan_from_masks()
    plan.heads[0] = [0, 1]
    small = pm.materialize(plan)
    with pytest.raises(CompressionError) as err:
        PrunableModel(small.remove_hooks(), layout="uniform")
    assert err.value.field == "options.layout"


def test_kept_summary_reports_dense_layers_across_uniform_rounds(tmp_path):
    from vtrans_core.loading import load_pruned
    from vtrans_core.materialize import save_pruned

    pm = PrunableModel(tiny_model("bert", layers=4), layout="uniform")
    plan = pm.plan_from_masks()
    plan.attn_blocks[1] = plan.ffn_blocks[1] = False
    plan.heads[1], plan.ffn[1] = [], []
    small = pm.materialize(plan)
    assert small.layer_origin == [0, 2, 3]
    again = small.plan_from_masks()
    again.attn_blocks[2] = again.ffn_blocks[2] = False   # current layer 2 = dense layer 3
    again.heads[2], again.ffn[2] = [], []
    kept = again.kept_summary()
    assert kept["attn_blocks_removed"] == kept["ffn_blocks_removed"] == [1, 3]
    assert kept["heads_per_layer"] == [4, 0, 4, 0]
    # the mapping survives save / load
    out = save_pruned(small.materialize(again).model, None, again, tmp_path / "out")
    reloaded = PrunableModel(load_pruned(out), layout="uniform")
    assert reloaded.layer_origin == [0, 2] and reloaded.reference.n_layers == 4
    assert reloaded.plan_from_masks().kept_summary()["attn_blocks_removed"] == [1, 3]


def test_block_removal_needs_its_block_mask():
    # heads + attention blocks but no FFN block mask: FFN widths may shrink, FFN blocks never go
    pm = PrunableModel(tiny_model("bert", layers=3), structures={"heads", "ffn", "attn_block"}, layout="per_layer")
    floor = pm.min_fraction("params")
    plan = pm.plan_for({"kind": "params", "target": floor + 1e-9}, round_to=8)
    assert all(plan.ffn_blocks) and all(len(f) == 8 for f in plan.ffn)
    assert sum(plan.attn_blocks) == 1  # at least one attention block always stays
    pm.apply_plan(plan)                 # consistent with the masks that exist
    pm.remove_hooks()


def test_fine_units_come_back_after_a_coarse_unit_overshoots():
    """FFN neurons ranked below every layer: the greedy pass spends the FFN down to its minimum,
    then has to drop whole layers and lands far below the target; the refill gives the most
    informative FFN groups back until the plan sits just under the target."""
    from vtrans_core.planner import make_plan, neutral_scores

    shape = PrunableModel(tiny_model("bert", hidden=128, layers=6, heads=8, ffn=512, vocab=500), layout="uniform").shape
    scores = neutral_scores(shape, {"ffn", "attn_block", "ffn_block"}, "uniform")
    scores["ffn"] = [[-1.0 - 0.001 * j for j in range(512)] for _ in range(6)]   # neuron 0 the most informative
    scores["layer"] = [5.0 + l for l in range(6)]
    for target in (0.4, 0.3):
        plan = make_plan(shape, shape, scores, "flops", target, 128, "uniform", 8)
        s = plan.result_shape()
        assert target - 0.01 <= plan.fraction("flops", 128) <= target, target
        kept = [f for f in s.ffn if f]
        assert len(set(kept)) == 1 and kept[0] > 8 and kept[0] % 8 == 0      # more than the minimum, uniform
        assert all(sorted(ks)[: len(ks)] == list(range(len(ks))) for ks in plan.ffn if ks)   # the best neurons

"""Layer-wise least-squares reconstruction after a hard cut (reconstruct.py) on tiny BERTs."""
from __future__ import annotations

import copy

import pytest
import torch

from vtrans_core.prunable import PrunableModel
from vtrans_core.reconstruct import reconstruct

from .conftest import tiny_inputs, tiny_model


def _batches(n: int = 6, batch: int = 4, length: int = 12) -> list[dict]:
    return [tiny_inputs(seed=10 + i, batch=batch, length=length) for i in range(n)]


def _logit_gap(a, b, batches) -> float:
    with torch.no_grad():
        return sum(float((a(**x).logits - b(**x).logits).pow(2).mean()) for x in batches)


def _cut(model, structures, target, layout="per_layer", seed=0):
    """Slice `model` to a flops target with random (but fixed) unit ranking; mu stays 1 so the
    sliced model differs from the dense one only by the removed units."""
    pm = PrunableModel(model, structures=structures, layout=layout)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in pm.masks.values():
            m.log_sigma2.copy_(-9.0 + torch.randn(m.log_sigma2.shape, generator=g))
    plan = pm.plan_for({"kind": "flops", "target": target}, round_to=1)
    pm = pm.materialize(plan)
    return pm.remove_hooks(), plan


@pytest.mark.parametrize("mode", ["scales", "weights"])
def test_nothing_pruned_reconstructs_exactly(mode):
    dense = tiny_model("bert", layers=3)
    model = copy.deepcopy(dense)
    pm = PrunableModel(model, structures=("heads", "ffn"), layout="per_layer")
    plan = pm.plan_from_masks()   # keeps every unit
    model = pm.materialize(plan).remove_hooks()
    batches = _batches()
    assert _logit_gap(model, dense, batches) < 1e-10
    summary = reconstruct(model, dense, plan, batches, mode=mode)
    # Every block already matches: the solve reproduces the dense output (error ~0 before and after)
    assert all(b["held_out_before"] < 1e-8 and b["held_out_after"] < 1e-6 for b in summary["per_block"])
    assert len(summary["per_block"]) == 6
    assert _logit_gap(model, dense, batches) < 1e-8


@pytest.mark.parametrize("mode", ["scales", "weights"])
@pytest.mark.parametrize("structures", [("heads", "ffn"), ("hidden", "heads", "ffn")])
def test_pruning_error_is_reduced_layer_by_layer(mode, structures):
    dense = tiny_model("bert", layers=3, ffn=64)
    model, plan = _cut(copy.deepcopy(dense), structures, 0.6)
    batches = _batches(n=10, batch=8)
    before = _logit_gap(model, dense, batches)
    summary = reconstruct(model, dense, plan, batches, mode=mode)
    assert summary["applied"], summary["reason"]
    kept = [b for b in summary["per_block"] if b["kept"]]
    assert kept and all(b["held_out_after"] < b["held_out_before"] for b in kept)
    assert summary["held_out_logit_mse_after"] < summary["held_out_logit_mse_before"]
    assert _logit_gap(model, dense, batches) < before
    assert summary["fit_batches"] == 8 and summary["held_out_batches"] == 2


def test_scales_undo_a_damaged_head_and_neurons():
    dense = tiny_model("bert", layers=2)
    model = copy.deepcopy(dense)
    pm = PrunableModel(model, structures=("heads", "ffn"), layout="per_layer")
    plan = pm.plan_from_masks()
    model = pm.materialize(plan).remove_hooks()
    o = model.bert.encoder.layer[0].attention.output.dense
    with torch.no_grad():
        o.weight[:, 8:16] *= 0.5                                  # head 1 of layer 0 at half strength
        model.bert.encoder.layer[1].output.dense.weight[:, :10] *= 2.0
    summary = reconstruct(model, dense, plan, _batches(n=8, batch=8), mode="scales")
    assert summary["applied"]
    # the damping pulls toward 1 a little: within 3% of the dense weights, logits 100x closer
    ratio = o.weight / dense.bert.encoder.layer[0].attention.output.dense.weight
    assert ((ratio - 1).abs() < 0.03).all()
    assert summary["held_out_logit_mse_after"] < 0.01 * summary["held_out_logit_mse_before"]


def test_uniform_plan_with_a_removed_layer_maps_to_the_dense_layers():
    dense = tiny_model("bert", layers=3)
    model = copy.deepcopy(dense)
    pm = PrunableModel(model, structures=("ffn", "attn_block", "ffn_block"), layout="uniform")
    with torch.no_grad():
        pm.masks["layer"].log_sigma2.copy_(torch.tensor([-9.0, 5.0, -9.0]))   # layer 1 least informative
    plan = pm.plan_for({"kind": "flops", "target": 0.6}, round_to=4)
    model = pm.materialize(plan).remove_hooks()
    assert len(model.bert.encoder.layer) < 3
    batches = _batches(n=10, batch=8)
    summary = reconstruct(model, dense, plan, batches, mode="scales")
    assert {b["layer"] for b in summary["per_block"]} <= {0, 2}
    assert summary["held_out_logit_mse_after"] <= summary["held_out_logit_mse_before"]


def test_off_and_too_few_batches_are_reported():
    dense = tiny_model("bert")
    model, plan = _cut(copy.deepcopy(dense), ("ffn",), 0.8)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    assert reconstruct(model, dense, plan, _batches(), mode="off")["reason"] == "reconstruct is off"
    one = reconstruct(model, dense, plan, _batches(n=1), mode="scales")
    assert not one["applied"] and "hold out" in one["reason"]
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())


def test_ffn_pass_replays_the_attention_instead_of_recomputing_it(monkeypatch):
    """BERT's o-projection lies outside its self-attention module, so the FFN pass reuses the
    attention pass's output: each batch's queries/keys/values are computed once per layer, and
    the refitted weights are those of a run that recomputes them."""
    import vtrans_core.reconstruct as rec
    from transformers.models.bert.modeling_bert import BertSelfAttention

    dense = tiny_model("bert", layers=3, ffn=64)
    model, plan = _cut(copy.deepcopy(dense), ("heads", "ffn"), 0.6)
    twin = copy.deepcopy(model)
    batches = _batches(n=10, batch=8)
    calls = []
    real_forward = BertSelfAttention.forward

    def counting(self, *a, **k):
        calls.append(id(self))
        return real_forward(self, *a, **k)

    monkeypatch.setattr(BertSelfAttention, "forward", counting)
    pruned_ids = {id(m) for m in model.modules()}
    summary = reconstruct(model, dense, plan, batches, mode="weights")
    computed = sum(1 for c in calls if c in pruned_ids)
    # per layer: the attention pass (10 batches) only; plus the held-out logit checks (2 x 2 batches)
    assert computed == 3 * 10 + 2 * 2 * 3
    monkeypatch.setattr(rec, "_attention_core", lambda parts: None)   # recompute, as other families do
    calls.clear()
    twin_ids = {id(m) for m in twin.modules()}
    reconstruct(twin, dense, plan, batches, mode="weights")
    assert sum(1 for c in calls if c in twin_ids) == 3 * 20 + 2 * 2 * 3
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert summary["applied"]

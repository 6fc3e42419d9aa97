"""Masked forward vs physically sliced model, for every structure and family.

For each structure: with nothing pruned the wrapped model equals the plain model; with some
entries hard-pruned, the sliced model's logits equal the hard-masked forward's, and it is
smaller. Masks carry random mu (0.5..1.5), so folding the gates into the weights is exercised.
"""
from __future__ import annotations

import random

import pytest
import torch

from .conftest import logits, perturb_masks, tiny_inputs, tiny_model
from vtrans_core.flops import count_params
from vtrans_core.prunable import PrunableModel

ATOL = 1e-5


def _numel(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
def test_nothing_pruned_equals_plain_model(family, layout):
    model = tiny_model(family)
    x = tiny_inputs()
    plain = model(**x, output_hidden_states=True)
    pm = PrunableModel(model, layout=layout)
    wrapped = pm.model(**x, output_hidden_states=True)
    assert torch.equal(wrapped.logits, plain.logits)
    for a, b in zip(wrapped.hidden_states, plain.hidden_states):
        assert torch.equal(a, b)
    # A plan that keeps everything slices nothing and changes nothing.
    new = pm.materialize(pm.plan_from_masks())
    assert torch.allclose(logits(new.model, x), plain.logits, atol=ATOL)
    assert _numel(new.model) == _numel(model)


def test_remove_hooks_leaves_plain_model(family):
    model = tiny_model(family)
    x = tiny_inputs()
    before = logits(model, x)
    pm = PrunableModel(model)
    perturb_masks(pm)
    assert not torch.allclose(logits(pm.model, x), before)  # the gates act
    pm.remove_hooks()
    assert torch.equal(logits(model, x), before)


def _edit_plan(plan, structure, seed=0):
    rng = random.Random(seed)
    if structure == "hidden":
        plan.hidden = sorted(rng.sample(plan.hidden, 24))
    elif structure == "heads":
        plan.heads = [[0, 2], [1, 2, 3]]
    elif structure == "ffn":
        plan.ffn = [sorted(rng.sample(plan.ffn[0], 40)), sorted(rng.sample(plan.ffn[1], 24))]
    elif structure == "attn_block":
        plan.attn_blocks[1], plan.heads[1] = False, []
    elif structure == "ffn_block":
        plan.ffn_blocks[0], plan.ffn[0] = False, []
    elif structure == "layer":
        plan.attn_blocks[0] = plan.ffn_blocks[0] = False
        plan.heads[0], plan.ffn[0] = [], []
    return plan


@pytest.mark.parametrize("structure", ["hidden", "heads", "ffn", "attn_block", "ffn_block", "layer"])
def test_sliced_equals_hard_masked(family, structure):
    model = tiny_model(family)
    x = tiny_inputs()
    layout = "uniform" if structure == "layer" else "per_layer"
    pm = PrunableModel(model, layout=layout)
    perturb_masks(pm)
    soft = logits(pm.model, x)
    plan = _edit_plan(pm.plan_from_masks(), structure)
    pm.apply_plan(plan)
    hard = logits(pm.model, x)
    assert (hard - soft).abs().max() > 100 * ATOL, "pruning must change the output for this test to mean anything"
    new = pm.materialize(plan)
    # the new PrunableModel (carried masks, mu folded) computes the same function ...
    assert torch.allclose(logits(new.model, x), hard, atol=ATOL)
    # ... and so does the plain sliced model
    small = new.remove_hooks()
    assert torch.allclose(logits(small, x), hard, atol=ATOL)
    assert _numel(small) < _numel(model)
    assert count_params(small) == _numel(small) == count_params(plan)
    # the source PrunableModel is untouched and still usable
    assert torch.allclose(logits(pm.model, x), hard, atol=0)


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
@pytest.mark.parametrize("kind", ["params", "flops"])
def test_budget_plan_slices_exactly(family, layout, kind):
    model = tiny_model(family, seed=3)
    x = tiny_inputs()
    pm = PrunableModel(model, layout=layout)
    perturb_masks(pm, seed=5)
    plan = pm.plan_for({"kind": kind, "target": 0.5, "seq_len": 16}, round_to=4)
    assert plan.fraction(kind, 16) <= 0.5
    pm.apply_plan(plan)
    hard = logits(pm.model, x)
    new = pm.materialize(plan)
    assert torch.allclose(logits(new.remove_hooks(), x), hard, atol=ATOL)
    if layout == "uniform":
        assert new.shape.is_uniform()


def test_masks_carry_over_and_iterative_rounds(family):
    model = tiny_model(family, seed=4)
    x = tiny_inputs()
    pm = PrunableModel(model, layout="per_layer")
    perturb_masks(pm, seed=2)
    plan = pm.plan_for({"kind": "flops", "target": 0.7, "seq_len": 16}, round_to=4)
    new = pm.materialize(plan)
    # kept entries keep their log alpha (ranking survives), mu is folded to 1
    old_la = pm.masks["heads"].log_alpha()
    for l, kept in enumerate(plan.heads):
        for k, j in enumerate(kept):
            assert new.masks["heads"].log_alpha()[l, k].item() == pytest.approx(old_la[l, j].item(), abs=1e-4)
    assert torch.equal(new.masks["hidden"].mu, torch.ones_like(new.masks["hidden"].mu))
    assert torch.equal(new.hidden_origin, torch.tensor(plan.hidden))
    # second round on the sliced model, fractions still of the dense reference
    plan2 = new.plan_for({"kind": "flops", "target": 0.4, "seq_len": 16}, round_to=4)
    assert plan2.fraction("flops", 16) <= 0.4 < plan.fraction("flops", 16)
    new.apply_plan(plan2)
    hard = logits(new.model, x)
    final = new.materialize(plan2)
    assert torch.allclose(logits(final.remove_hooks(), x), hard, atol=ATOL)
    assert final.reference == pm.reference
    assert final.fraction("flops", 16) == pytest.approx(plan2.fraction("flops", 16))


def test_hidden_states_of_sliced_model_map_to_teacher_channels():
    model = tiny_model("bert")
    x = tiny_inputs()
    pm = PrunableModel(model, structures={"hidden"}, layout="per_layer")
    plan = pm.plan_from_masks()
    plan.hidden = list(range(0, 32, 2)) + [1, 3, 5, 7, 9, 11, 13, 15]
    plan.hidden.sort()
    pm.apply_plan(plan)
    masked = pm.model(**x, output_hidden_states=True).hidden_states
    small = pm.materialize(plan)
    sliced = small.model(**x, output_hidden_states=True).hidden_states
    assert len(sliced) == len(masked) == 3
    for m, s in zip(masked, sliced):
        assert s.shape[-1] == 24
        assert torch.allclose(m[..., small.hidden_origin], s, atol=ATOL)
        # the masked model's residual stream is exactly zero on pruned channels
        gone = sorted(set(range(32)) - set(plan.hidden))
        assert torch.equal(m[..., gone], torch.zeros_like(m[..., gone]))

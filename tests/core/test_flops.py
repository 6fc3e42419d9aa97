"""Analytic params / FLOPs against sum(p.numel()) and torch's FlopCounterMode.

FlopCounterMode has no formula for the CPU flash-attention kernel SDPA dispatches to, so the
measured models run with attn_implementation="eager" (plain matmuls, which it counts).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from .conftest import perturb_masks, tiny_config, tiny_model
from vtrans_core.flops import count_flops, count_params
from vtrans_core.prunable import PrunableModel

SEQ = 16


def measured_flops(model, seq_len=SEQ):
    model.set_attn_implementation("eager")
    ids = torch.randint(3, 100, (1, seq_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    return counter.get_total_flops()


def numel(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("seq_len", [1, SEQ, 40])
def test_dense_counts_match(family, seq_len):
    model = tiny_model(family, layers=3, hidden=48, heads=6, ffn=80)
    config = tiny_config(family, layers=3, hidden=48, heads=6, ffn=80)
    assert count_params(config) == count_params(model) == numel(model)
    assert count_params(config.to_dict()) == numel(model)
    assert count_flops(config, seq_len) == measured_flops(model, seq_len)


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
@pytest.mark.parametrize("target", [0.7, 0.35])
def test_sliced_counts_match(family, layout, target):
    model = tiny_model(family, layers=3, hidden=48, heads=6, ffn=80, seed=7)
    pm = PrunableModel(model, layout=layout)
    perturb_masks(pm, seed=11)
    plan = pm.plan_for({"kind": "flops", "target": target, "seq_len": SEQ}, round_to=4)
    small = pm.materialize(plan).remove_hooks()
    assert count_params(plan) == count_params(small) == numel(small)
    assert count_flops(plan, SEQ) == count_flops(small, SEQ) == measured_flops(small)
    assert count_flops(small.config, SEQ) == count_flops(plan, SEQ)  # saved config describes it too
    dense = measured_flops(tiny_model(family, layers=3, hidden=48, heads=6, ffn=80))
    assert measured_flops(small) / dense == pytest.approx(plan.fraction("flops", SEQ), rel=1e-9)
    assert measured_flops(small) / dense <= target


def test_removed_blocks_cost_nothing():
    model = tiny_model("bert", layers=3)
    pm = PrunableModel(model, layout="per_layer")
    plan = pm.plan_from_masks()
    plan.attn_blocks[1], plan.heads[1] = False, []
    plan.ffn_blocks[2], plan.ffn[2] = False, []
    small = pm.materialize(plan).remove_hooks()
    names = [n for n, _ in small.named_parameters()]
    assert not any(n.startswith("bert.encoder.layer.1.attention.") for n in names)
    assert not any(n.startswith(("bert.encoder.layer.2.intermediate.", "bert.encoder.layer.2.output."))
                   for n in names)
    d, T, H = 8, SEQ, 32
    attn_flops = 4 * 2 * T * H * 4 * d + 2 * 2 * T * T * 4 * d
    ffn_flops = 2 * 2 * T * H * 64
    assert measured_flops(model) - measured_flops(small) == attn_flops + ffn_flops


def test_expected_size_uses_keep_probabilities():
    pm = PrunableModel(tiny_model("bert"), layout="per_layer")
    with torch.no_grad():
        pm.masks["heads"].log_sigma2[1, 0] = 1e3   # keep prob -> 0
        pm.masks["ffn_block"].log_sigma2[0] = 1e3   # the whole FFN block of layer 0
    plan = pm.plan_from_masks()
    plan.heads[1] = [1, 2, 3]
    plan.ffn_blocks[0], plan.ffn[0] = False, []
    for kind in ("params", "flops"):
        assert pm.expected_fraction(kind, SEQ).item() == pytest.approx(plan.fraction(kind, SEQ), rel=1e-5)

"""VIB mask math against hand-computed values, and the PrunableModel-level KL / expected size."""
from __future__ import annotations

import math

import pytest
import torch

from .conftest import tiny_model
from vtrans_core.flops import unit_costs
from vtrans_core.masks import VIBMask, folded_log_sigma2, kl_value
from vtrans_core.prunable import PrunableModel


def _mask(mu, ls2):
    m = VIBMask(len(mu))
    with torch.no_grad():
        m.mu.copy_(torch.tensor(mu))
        m.log_sigma2.copy_(torch.tensor(ls2))
    return m


def test_init_reproduces_dense_gate():
    m = VIBMask((2, 3))
    assert torch.equal(m.gate(), torch.ones(2, 3))
    assert torch.allclose(m.log_alpha(), torch.full((2, 3), 9.0), atol=1e-6)


def test_log_alpha_kl_keep_prob_by_hand():
    m = _mask([1.0, 0.5, 2.0], [-9.0, 0.0, math.log(16.0)])
    # alpha = mu^2 / sigma^2: e^9, 0.25, 0.25
    assert torch.allclose(m.log_alpha(), torch.tensor([9.0, math.log(0.25), math.log(0.25)]), atol=1e-5)
    hand = [0.5 * math.log(1 + math.exp(9.0)), 0.5 * math.log(1.25), 0.5 * math.log(1.25)]
    assert hand[0] == pytest.approx(4.500061706, rel=1e-8)
    assert m.kl().item() == pytest.approx(sum(hand), rel=1e-5)
    assert kl_value(0.5, 0.0) == pytest.approx(hand[1])
    p = m.keep_prob()
    assert p[0].item() == pytest.approx(1.0)
    assert p[1].item() == pytest.approx(1 / (1 + math.exp(-10 * math.log(0.25))), rel=1e-5)
    assert m.informative().tolist() == [True, False, False]


def test_hard_pruned_entries_are_zero_and_free():
    m = _mask([1.0, 0.5, 2.0], [-9.0, 0.0, 0.0])
    m.pruned[2] = True
    assert m.gate()[2].item() == 0.0 and m.keep_prob()[2].item() == 0.0
    assert m.kl().item() == pytest.approx(0.5 * math.log(1 + math.exp(9.0)) + 0.5 * math.log(1.25), rel=1e-5)
    m.sampling = True
    assert m.gate()[2].item() == 0.0


def test_sampling_noise_has_sigma_and_eval_is_deterministic():
    m = _mask([1.0] * 4000, [math.log(0.25)] * 4000)  # sigma = 0.5
    assert torch.equal(m.gate(), torch.ones(4000))
    m.sampling = True
    torch.manual_seed(0)
    z = m.gate()
    assert z.mean().item() == pytest.approx(1.0, abs=0.05)
    assert z.std().item() == pytest.approx(0.5, abs=0.05)


def test_kl_gradient_pushes_mu_down_and_sigma_up():
    m = _mask([1.0, 0.3], [-2.0, -1.0])
    m.kl().backward()
    assert (m.mu.grad > 0).all()          # descending lowers mu
    assert (m.log_sigma2.grad < 0).all()  # ... and raises sigma


def test_folding_keeps_alpha():
    mu, ls2 = torch.tensor([0.7, -1.3]), torch.tensor([-4.0, 0.5])
    new = folded_log_sigma2(mu, ls2)
    assert torch.allclose(-new, torch.log(mu ** 2) - ls2, atol=1e-5)


def test_prunable_kl_is_weighted_sum():
    pm = PrunableModel(tiny_model("bert"), layout="per_layer")
    weights = unit_costs(pm.shape)
    expected = sum(weights[k] * m.kl() for k, m in pm.masks.items())
    assert pm.kl().item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(pm.masks) == {"hidden", "heads", "ffn", "attn_block", "ffn_block"}
    assert tuple(pm.masks["heads"].mu.shape) == (2, 4) and tuple(pm.masks["ffn"].mu.shape) == (2, 64)
    pm2 = PrunableModel(tiny_model("bert"), layout="per_layer", kl_weights={"heads": 512.0})
    assert pm2.masks["heads"].kl_weight == 512.0 and pm2.masks["hidden"].kl_weight == weights["hidden"]


def test_kl_weights_are_unit_sizes():
    """A unit's KL weight is what removing it saves, in FFN neurons (checked by hand on the tiny BERT:
    hidden 32, 4 heads of 8, FFN 64, 2 layers, vocab 100, 64 positions, 2 token types, 3 labels)."""
    pm = PrunableModel(tiny_model("bert"), layout="per_layer")
    neuron = 32 + 1 + 32                       # FFN in-row + its bias + out-column
    head = 3 * (32 * 8 + 8) + 8 * 32           # q, k, v rows + biases, o columns
    per_layer = (3 * 32 + 32 + 1 + 2) + (64 + 64 + 1 + 2)   # attention: q/k/v/o weights, o bias, LN; FFN likewise
    hidden = (100 + 64 + 2) + 2 + 2 * per_layer + (2 * 32 - 1 + 1) + 3   # embeddings + LN, layers, pooler, classifier
    w = {k: m.kl_weight for k, m in pm.masks.items()}
    assert w["ffn"] == 1.0
    assert w["heads"] == pytest.approx(head / neuron)
    assert w["hidden"] == pytest.approx(hidden / neuron)
    assert w["ffn_block"] == w["attn_block"] == w["heads"]   # blocks are charged like one head (flops.py)


def test_uniform_layout_ties_masks():
    pm = PrunableModel(tiny_model("bert"), structures={"heads", "attn_block"}, layout="uniform")
    assert set(pm.masks) == {"hidden", "heads", "layer"}


def test_expected_fraction_is_differentiable_and_exact_at_hard_values():
    pm = PrunableModel(tiny_model("bert"), layout="per_layer")
    e = pm.expected_fraction("params")
    assert e.item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        pm.masks["ffn"].log_sigma2[0, :10] = 0.0  # alpha 1 -> keep prob 1/2
    e = pm.expected_fraction("flops", 16)
    assert e.item() < 1.0
    e.backward()
    assert pm.masks["ffn"].log_sigma2.grad[0, :10].abs().sum() > 0
    # keep probabilities exactly 0/1 -> the expected size is the exact size of that plan
    plan = pm.plan_for({"kind": "params", "target": 0.6})
    pm.apply_plan(plan)
    with torch.no_grad():
        pm.masks["ffn"].log_sigma2[0, :10] = -9.0
    assert pm.expected_fraction("params").item() == pytest.approx(plan.fraction("params"), rel=1e-5)


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
def test_every_mask_parameter_gets_a_gradient(layout):
    from .conftest import tiny_inputs

    pm = PrunableModel(tiny_model("distilbert"), layout=layout)
    pm.set_sampling(True)
    torch.manual_seed(0)
    out = pm.model(**tiny_inputs())
    (out.logits.pow(2).sum() + 1e-3 * pm.kl()).backward()
    for key, m in pm.masks.items():
        live = ~m.pruned
        assert m.mu.grad[live].abs().sum() > 0, key
        assert m.log_sigma2.grad[live].abs().sum() > 0, key
    # sampling makes the forward noisy; eval mode (sampling off) is deterministic
    pm.set_sampling(False)
    a, b = pm.model(**tiny_inputs()).logits, pm.model(**tiny_inputs()).logits
    assert torch.equal(a, b)


def test_base_model_called_directly_gets_fresh_gates():
    from .conftest import tiny_inputs

    pm = PrunableModel(tiny_model("bert"), layout="per_layer")
    pm.set_sampling(True)
    x = tiny_inputs()
    for _ in range(2):  # a stale cached gate would fail the second backward
        out = pm.model.bert(**x).last_hidden_state
        out.sum().backward()
    assert pm.masks["hidden"].mu.grad is not None

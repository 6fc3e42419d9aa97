"""Variational Information Bottleneck gates (VIBNet, Dai et al. 2018; as used by VTrans).

Each prunable unit (a hidden channel, a head, an FFN neuron, a whole block) has a Gaussian
gate z ~ N(mu, sigma^2) that multiplies the unit's output:
- mu starts at 1.0 and log sigma^2 at -9, so the wrapped model starts as the dense model
  (the deterministic gate z = mu = 1 is exact, the noise is ~0.01);
- training samples z = mu + sigma * eps (`sampling=True`); evaluation uses z = mu;
- log alpha = log(mu^2) - log sigma^2 ranks units; a unit is "informative" while alpha > 1;
- the KL term is 0.5 * log(1 + mu^2 / sigma^2) = 0.5 * softplus(log alpha) per unit (the
  softplus form is the numerically stable one), summed and multiplied by the structure's
  KL weight (its unit's size, see below), then by the method's beta (in the pipeline);
- the soft keep probability p = sigmoid(10 * log alpha) feeds the differentiable expected
  size of the budget Lagrangian (TVA-Prune's estimator, METHOD-NOTES.md).

A unit can be hard-pruned (`pruned` buffer): its gate is then exactly 0, it adds no KL and its
keep probability is 0. Hard-pruned entries are also how per-layer masks over a per-layer
sliced model stay rectangular: entries past a layer's real width are marked pruned.
"""
from __future__ import annotations

import math

import torch
from torch import nn

MU_INIT = 1.0
LOG_SIGMA2_INIT = -9.0
# Keep-probability sharpness (p = sigmoid(KEEP_SHARPNESS * log alpha)), from TVA-Prune.
KEEP_SHARPNESS = 10.0

# Per-structure multipliers of the KL term: PrunableModel sets each structure's weight to the
# size of one of its units in FFN neurons (flops.unit_costs: ~77 for a MiniLM hidden channel, ~64
# for a head; block gates are charged like a head), so the information prior charges every
# unit for the weights it carries. TVA-Prune's fixed LLaMA values (x30 hidden, x256-512 heads)
# were the starting point; on the benchmark they let the per_layer planner strip nearly every
# head under frozen weights (45.1% at 0.5 FLOPs vs 59.6% with cost weights).


class VIBMask(nn.Module):
    def __init__(self, shape: tuple[int, ...] | int, kl_weight: float = 1.0,
                 mu_init: float = MU_INIT, log_sigma2_init: float = LOG_SIGMA2_INIT):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.mu = nn.Parameter(torch.full(shape, float(mu_init)))
        self.log_sigma2 = nn.Parameter(torch.full(shape, float(log_sigma2_init)))
        self.register_buffer("pruned", torch.zeros(shape, dtype=torch.bool))
        self.kl_weight = float(kl_weight)
        self.sampling = False

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mu.shape)}, kl_weight={self.kl_weight}, sampling={self.sampling}"

    def log_alpha(self) -> torch.Tensor:
        # The tiny constant keeps log(mu^2) finite (and its gradient defined) at mu = 0.
        return torch.log(self.mu.pow(2) + 1e-8) - self.log_sigma2

    def gate(self) -> torch.Tensor:
        """z = mu (+ sigma * eps when sampling), exactly 0 on hard-pruned entries."""
        z = self.mu
        if self.sampling:
            z = z + torch.exp(0.5 * self.log_sigma2) * torch.randn_like(self.mu)
        return z.masked_fill(self.pruned, 0.0)

    def kl(self) -> torch.Tensor:
        """Unweighted sum over live entries of 0.5 * log(1 + mu^2 / sigma^2)."""
        per_entry = 0.5 * nn.functional.softplus(self.log_alpha())
        return per_entry.masked_fill(self.pruned, 0.0).sum()

    def weighted_kl(self) -> torch.Tensor:
        return self.kl_weight * self.kl()

    def keep_prob(self) -> torch.Tensor:
        return torch.sigmoid(KEEP_SHARPNESS * self.log_alpha()).masked_fill(self.pruned, 0.0)

    def informative(self) -> torch.Tensor:
        """Boolean: alpha > 1 and not hard-pruned."""
        return (self.log_alpha() > 0) & ~self.pruned

    @torch.no_grad()
    def load_entries(self, mu: torch.Tensor, log_sigma2: torch.Tensor, pruned: torch.Tensor) -> None:
        self.mu.copy_(mu)
        self.log_sigma2.copy_(log_sigma2)
        self.pruned.copy_(pruned)


def folded_log_sigma2(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """log sigma'^2 after folding mu into the weights and resetting mu' = 1.

    The effective gate mu * (1 + (sigma/|mu|) eps) has the same distribution as mu + sigma eps
    (eps is symmetric), and alpha' = 1/sigma'^2 = mu^2/sigma^2 = alpha: ranking and KL are
    unchanged, only the weights now carry mu."""
    return log_sigma2 - torch.log(mu.pow(2) + 1e-8)


def kl_value(mu: float, log_sigma2: float) -> float:
    """Reference scalar formula, 0.5 * log(1 + mu^2 / sigma^2) (used by tests and docs)."""
    return 0.5 * math.log1p(mu * mu / math.exp(log_sigma2))

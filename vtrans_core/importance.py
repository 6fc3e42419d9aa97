"""Ranking prunable units with frozen weights: Fisher saliency and Fisher-informed VIB gates.

`importance` option (faster):
- "vib": the VIB gates' log alpha after mask-only training (the paper's ranking);
- "fisher": no mask training at all. Each gate's empirical Fisher information on calibration rows,
  F_u = sum over micro-batches of (dL/dz_u)^2 at z = 1 (L: cross-entropy on the task labels),
  estimates the loss increase of removing unit u as 0.5 * F_u (Kwon et al. 2022, Taylor/Fisher
  pruning); the planner removes units in increasing F_u / cost_u (the knapsack ratio), so the
  scores handed to it are log(F_u / cost_u);
- "vib+fisher": Fisher-informed gate initialisation. The gates start at a log alpha that grows
  with the unit's Fisher rank (FISHER_INIT_RANGE), so the least salient units start near the
  decision region (log alpha = 0) where the budget Lagrangian and the KL can push them across it
  in a short mask-only schedule, while salient units start safely kept; the trained log alpha
  then ranks.

cost_u is the unit's size in the budget's own currency (FLOPs or params at seq_len), blocks
included at their full size, so a score compares "loss per FLOP saved" across structures.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .checkpointing import checkpointed_layers
from .data import Encoded, iterate_batches
from .flops import shape_size
from .precision import float32_section

IMPORTANCES = ("vib", "fisher", "vib+fisher")
FISHER_MICRO_BATCH = 4          # rows per backward: near per-sample Fisher at a tolerable CPU cost
FISHER_BATCH_COST = 0.25        # one micro-batch (forward + backward, no update) in dense training batches


def fisher_stage_weight(n_rows: int, fisher_rows: int) -> float:
    """Progress weight (ETA) of a Fisher pass over the method's first `fisher_rows` rows."""
    return min(n_rows, fisher_rows) / FISHER_MICRO_BATCH * FISHER_BATCH_COST
FISHER_INIT_RANGE = (1.0, 6.0)  # log alpha of the least / most salient unit at the start (vib+fisher)


def _strip(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "index")}


def _summed_ce(logits, _teacher, batch: dict, _t: float, _w: float):
    return (F.cross_entropy(logits.float(), batch["labels"], reduction="sum"),)


def fisher_information(pm, enc: Encoded, device, tick: Callable[[int, int], None] | None = None,
                       micro_batch: int = FISHER_MICRO_BATCH, loss_fn=None,
                       recompute: bool = False) -> dict[str, torch.Tensor]:
    """Per mask key, the summed squared gradient of the task loss w.r.t. each gate at z = mu = 1.

    `loss_fn`: a Task.loss (its first output, the mean task loss, is scaled to a per-row sum);
    default: the classification cross-entropy summed over rows. `recompute`: activation
    checkpointing of the layers (checkpointing.py; a backward like training's, as large)."""
    model = pm.model
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    mask_params = pm.mask_parameters()
    for p in mask_params:
        p.requires_grad_(True)
    pm.set_sampling(False)
    model.eval()
    info = {k: torch.zeros_like(m.mu) for k, m in pm.masks.items()}
    batches = list(iterate_batches(enc, micro_batch, device, shuffle=False))
    try:
        for n, batch in enumerate(batches, 1):
            # float32 whatever the job's mixed precision: on micro-batches of 4 rows bf16 only adds
            # casts (AMX CPU, 256 tweets: 9.3 s in bf16 against 7.4 s in float32)
            with checkpointed_layers(model, recompute, pm), float32_section(device):
                logits = model(**_strip(batch)).logits
                if loss_fn is None:
                    loss = _summed_ce(logits, None, batch, 1.0, 0.0)[0]
                else:   # the task's mean loss (no distillation: teacher None, weight 0) times the rows
                    loss = loss_fn(logits, None, batch, 1.0, 0.0)[0] * batch["input_ids"].shape[0]
                grads = torch.autograd.grad(loss, [m.mu for m in pm.masks.values()], allow_unused=True)
            for (k, m), g in zip(pm.masks.items(), grads):
                if g is not None:
                    info[k] += g.detach().pow(2)
            if tick is not None:
                tick(n, len(batches))
    finally:
        for p, was in frozen:
            p.requires_grad_(was)
    return {k: v.masked_fill(pm.masks[k].pruned, 0.0) for k, v in info.items()}


def unit_sizes(shape, kind: str, seq_len: int) -> dict[str, list]:
    """Size (in `kind`) that removing one unit of each mask key saves: per key a scalar or a per-layer list."""
    base = shape_size(shape, kind, seq_len)
    L = shape.n_layers

    def saved(**kw: Any) -> float:
        return float(max(base - shape_size(shape.replace(**kw), kind, seq_len), 1))

    def minus(counts, l):
        return [max(c - 1, 0) if i == l else c for i, c in enumerate(counts)]

    def without(flags, l):
        return [f and i != l for i, f in enumerate(flags)]

    return {"hidden": saved(hidden=shape.hidden - 1),
            "heads": [saved(heads=minus(shape.heads, l)) for l in range(L)],
            "ffn": [saved(ffn=minus(shape.ffn, l)) for l in range(L)],
            "attn_block": [saved(attn_blocks=without(shape.attn_blocks, l)) for l in range(L)],
            "ffn_block": [saved(ffn_blocks=without(shape.ffn_blocks, l)) for l in range(L)],
            "layer": [saved(attn_blocks=without(shape.attn_blocks, l), ffn_blocks=without(shape.ffn_blocks, l))
                      for l in range(L)]}


def fisher_scores(pm, info: dict[str, torch.Tensor], kind: str, seq_len: int) -> dict[str, Any]:
    """Planner scores (higher = keep) in log_alphas() format: log(F_u / cost_u), None where pruned."""
    sizes = unit_sizes(pm.shape, "flops" if kind == "speedup" else kind, seq_len)
    out: dict[str, Any] = {}
    for key, f in info.items():
        pruned = pm.masks[key].pruned.cpu()
        f = f.detach().double().cpu()
        cost = sizes[key]
        if f.dim() == 2:   # heads / ffn: [L, units], cost per layer
            c = torch.tensor(cost, dtype=torch.float64).unsqueeze(1).expand_as(f)
        elif isinstance(cost, list):   # block gates: [L]
            c = torch.tensor(cost, dtype=torch.float64)
        else:
            c = torch.full_like(f, cost)
        score = torch.log(f + 1e-30) - torch.log(c)
        vals = score.masked_fill(pruned, float("nan")).tolist()
        fix = lambda v: None if v != v else float(v)  # noqa: E731  (nan -> None)
        out[key] = [[fix(v) for v in row] for row in vals] if f.dim() == 2 else [fix(v) for v in vals]
    return out


@torch.no_grad()
def init_gates_from_fisher(pm, scores: dict[str, Any], low: float = FISHER_INIT_RANGE[0],
                           high: float = FISHER_INIT_RANGE[1]) -> None:
    """Start each gate at log alpha = low + (high - low) * (its rank quantile among all live units),
    mu = 1 (the dense model is reproduced exactly at the start)."""
    flat = [(k, idx, v) for k, vals in scores.items() for idx, v in _entries(vals) if v is not None]
    if not flat:
        return
    order = sorted(range(len(flat)), key=lambda i: flat[i][2])
    n = max(len(order) - 1, 1)
    for rank, i in enumerate(order):
        key, idx, _ = flat[i]
        la = low + (high - low) * rank / n
        pm.masks[key].log_sigma2[idx] = -la    # log alpha = log(mu^2) - log sigma^2 with mu = 1


def _entries(vals):
    for i, v in enumerate(vals):
        if isinstance(v, list):
            for j, w in enumerate(v):
                yield (i, j), w
        else:
            yield i, v


def set_gate_init(pm, log_alpha: float) -> None:
    """Every gate at mu = 1 and the same log alpha (the default VIB init is 9)."""
    if math.isfinite(log_alpha):
        with torch.no_grad():
            for m in pm.masks.values():
                m.mu.fill_(1.0)
                m.log_sigma2.fill_(-float(log_alpha))

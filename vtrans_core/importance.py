"""Ranking prunable units with frozen weights: Fisher saliency and Fisher-informed VIB gates.

`importance` option (faster):
- "vib": the VIB gates' log alpha after mask-only training (the paper's ranking);
- "fisher": no mask training at all. Each gate's empirical Fisher information on calibration rows,
  F_u = sum over rows of (dL_row/dz_u)^2 at z = 1 (L: cross-entropy on the task labels; each row's
  own gradient, from one backward per batch through per-example probes, PrunableModel.probes),
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
from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .checkpointing import checkpointed_layers
from .data import Encoded, iterate_batches
from .flops import shape_size

IMPORTANCES = ("vib", "fisher", "vib+fisher")
# Rows per backward. Each row's gradient is its own whatever the batch (per-example probes), so a
# classification batch is as large as training's; a language model's packed windows are long,
# so 4 of them (the memory of the old micro-batches, whose gradients were summed over 4 rows).
FISHER_BATCH = 32
FISHER_WINDOWS = 4
FISHER_BATCH_COST = 0.6         # one batch of 32 (forward + backward, no update) in dense training batches


def fisher_stage_weight(n_rows: int, fisher_rows: int) -> float:
    """Progress weight (ETA) of a Fisher pass over the method's first `fisher_rows` rows."""
    return min(n_rows, fisher_rows) / FISHER_BATCH * FISHER_BATCH_COST
FISHER_INIT_RANGE = (1.0, 6.0)  # log alpha of the least / most salient unit at the start (vib+fisher)


def _attention_kernel(device):
    """On a CPU, the math attention kernel: a pass that needs no weight gradients spends much of
    its time in the flash kernel's backward (MiniLM-L6, 128 rows of ~30 / ~100 tokens in bfloat16:
    3.9 -> 2.4 s / 9.7 -> 7.6 s with the math kernel; a training step gains nothing, it is
    dominated by the weight gradients and the optimiser). GPUs keep their own choice."""
    if torch.device(device).type != "cpu":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


def _strip(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "index")}


def _summed_ce(logits, _teacher, batch: dict, _t: float, _w: float):
    return (F.cross_entropy(logits.float(), batch["labels"], reduction="sum"),)


def fisher_information(pm, enc: Encoded, device, tick: Callable[[int, int], None] | None = None,
                       batch_rows: int | None = None, loss_fn=None,
                       recompute: bool = False) -> dict[str, torch.Tensor]:
    """Per mask key, the sum over rows of each row's squared task-loss gradient w.r.t. each gate
    at z = mu = 1.

    `loss_fn`: a Task.loss (its first output, the mean task loss, is scaled to a per-row sum);
    default: the classification cross-entropy summed over rows. `recompute`: activation
    checkpointing of the layers (checkpointing.py; a backward like training's, as large).
    `batch_rows`: rows per backward (default FISHER_BATCH, FISHER_WINDOWS for packed windows)."""
    model = pm.model
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    pm.set_sampling(False)
    model.eval()
    info = {k: torch.zeros_like(m.mu) for k, m in pm.masks.items()}
    rows = batch_rows or (FISHER_BATCH if isinstance(enc, Encoded) else FISHER_WINDOWS)
    batches = list(iterate_batches(enc, rows, device, shuffle=False))
    try:
        for n, batch in enumerate(batches, 1):
            b = batch["input_ids"].shape[0]
            pm.probes = {k: torch.ones((b, *m.mu.shape), device=m.mu.device, requires_grad=True)
                         for k, m in pm.masks.items()}
            # the job's mixed precision applies: batches of 32 gain from bfloat16 (4-row micro-batches
            # did not); same 512 rows on an AMD CPU, 10.3 -> 6.0 s (~30 tokens), 29.5 -> 21.1 s (~100)
            with checkpointed_layers(model, recompute, pm), _attention_kernel(device):
                logits = model(**_strip(batch)).logits
                if loss_fn is None:
                    loss = _summed_ce(logits, None, batch, 1.0, 0.0)[0]
                else:   # the task's mean loss (no distillation: teacher None, weight 0) times the rows
                    loss = loss_fn(logits, None, batch, 1.0, 0.0)[0] * b
                grads = torch.autograd.grad(loss, list(pm.probes.values()), allow_unused=True)
            for k, g in zip(pm.probes, grads):
                if g is not None:   # row b's gradient w.r.t. z is its probe's divided by mu = 1
                    info[k] += g.detach().float().pow(2).sum(0)
            pm.probes = None
            if tick is not None:
                tick(n, len(batches))
    finally:
        pm.probes = None
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

"""Retraining-free refinement after pruning: least-squares rescale of kept output projections.

After Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers", mask
tuning): a pruned layer's attention output is sum_h s_h * u_h(x) + bias, where u_h is head h's
contribution through the output projection (o-proj columns of head h), and likewise the FFN
output is sum_j s_j * u_j(x) + bias over kept neurons j. Starting from s = 1, we choose s to make
the layer reproduce the DENSE layer's output on a sample of training batches:

    min_s ||A s - b||^2 + ridge * ||s - 1||^2,   A[:, j] = u_j over (token, channel), b = dense - bias

Layers are refined one after another, front to back, each on the inputs produced by the already
refined layers before it (so the fix of an early layer is seen by later ones). The solution is
clamped to [0, MAX_SCALE]; when the system is ill-conditioned or the solve would not reduce the
reconstruction error, the scales stay 1. The scales are folded into the o-proj / FFN-out columns.

For FFN neurons A^T A never needs A itself: with X the neuron activations [T, F] and W the
out-projection [H, F], (A^T A)_jk = (X^T X)_jk * (W^T W)_jk and (A^T b)_j = sum_t X_tj (B W)_tj.
"""
from __future__ import annotations

from typing import Callable

import torch

from .families import adapter_for

MAX_SCALE = 3.0
RIDGE = 1e-2          # relative to the mean diagonal of A^T A, pulling s toward 1


def _capture(model, module, batches, want: str) -> list[torch.Tensor]:
    """Inputs or outputs of `module` (flattened over the valid tokens) for each batch."""
    seen: list[torch.Tensor] = []

    def hook(_m, args, output):
        seen.append((args[0] if want == "input" else output).detach())

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                model(**{k: v for k, v in batch.items() if k not in ("labels", "index")})
    finally:
        handle.remove()
    out = []
    for batch, x in zip(batches, seen):
        keep = batch["attention_mask"].bool()
        out.append(x[keep].float())
    return out


def _solve(gram: torch.Tensor, rhs: torch.Tensor, const: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Ridge LS toward s = 1; returns (scales, improved)."""
    n = gram.shape[0]
    ones = torch.ones(n, dtype=gram.dtype)
    lam = RIDGE * gram.diagonal().mean().clamp_min(1e-12)
    try:
        s = torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype), rhs + lam * ones)
    except RuntimeError:  # singular even with the ridge
        return ones, False
    if not torch.isfinite(s).all():
        return ones, False
    s = s.clamp(0.0, MAX_SCALE)

    def err(v):  # ||A v - b||^2 up to the constant ||b||^2
        return v @ gram @ v - 2 * v @ rhs + const

    if err(s) >= err(ones):
        return ones, False
    return s, True


def _refine_attention(o_proj, head_dim: int, ctx: list[torch.Tensor], target: list[torch.Tensor]):
    n_heads = o_proj.in_features // head_dim
    W = o_proj.weight.detach().double()                      # [H, A]
    bias = o_proj.bias.detach().double() if o_proj.bias is not None else 0.0
    gram = torch.zeros(n_heads, n_heads, dtype=torch.float64)
    rhs = torch.zeros(n_heads, dtype=torch.float64)
    const = torch.zeros((), dtype=torch.float64)
    for x, y in zip(ctx, target):
        x, b = x.double(), y.double() - bias
        # u[t, h, :] = W[:, head h] @ x[t, head h]
        u = torch.einsum("thd,chd->thc", x.view(len(x), n_heads, head_dim), W.view(W.shape[0], n_heads, head_dim))
        gram += torch.einsum("thc,tgc->hg", u, u)
        rhs += torch.einsum("thc,tc->h", u, b)
        const += (b * b).sum()
    s, improved = _solve(gram, rhs, const)
    with torch.no_grad():
        o_proj.weight.mul_(s.repeat_interleave(head_dim).to(o_proj.weight.dtype).to(o_proj.weight.device))
    return s, improved


def _refine_ffn(out_proj, acts: list[torch.Tensor], target: list[torch.Tensor]):
    W = out_proj.weight.detach().double()                    # [H, F]
    bias = out_proj.bias.detach().double() if out_proj.bias is not None else 0.0
    F = W.shape[1]
    xtx = torch.zeros(F, F, dtype=torch.float64)
    rhs = torch.zeros(F, dtype=torch.float64)
    const = torch.zeros((), dtype=torch.float64)
    for x, y in zip(acts, target):
        x, b = x.double(), y.double() - bias
        xtx += x.T @ x
        rhs += ((b @ W) * x).sum(0)
        const += (b * b).sum()
    s, improved = _solve(xtx * (W.T @ W), rhs, const)
    with torch.no_grad():
        out_proj.weight.mul_(s.to(out_proj.weight.dtype).to(out_proj.weight.device).unsqueeze(0))
    return s, improved


def _dense_layer_index(n_pruned: int, plan) -> list[int]:
    """Dense layer behind each layer of the pruned model (uniform layouts drop whole layers)."""
    n_dense = len(plan.attn_blocks)
    if n_pruned == n_dense:
        return list(range(n_dense))
    return [i for i in range(n_dense) if plan.attn_blocks[i] or plan.ffn_blocks[i]]


def rescale_outputs(pruned, dense, plan, batches: list[dict], tick: Callable[[int, int], None] | None = None) -> dict:
    """Refine `pruned` in place against `dense` on `batches`; returns a summary for metrics."""
    pa, da = adapter_for(pruned), adapter_for(dense)
    hidden_idx = torch.as_tensor(plan.hidden, dtype=torch.long) if plan.hidden is not None else None
    mapping = _dense_layer_index(len(pa.layers(pruned)), plan)
    was = pruned.training
    pruned.eval()
    dense.eval()
    summary = {"layers": 0, "units_rescaled": 0, "kept_ones": 0, "mean_abs_change": 0.0}
    changes: list[float] = []
    steps = 2 * len(mapping)
    for k, i in enumerate(mapping):
        for part in ("attn", "ffn"):
            p_parts = pa.attention(pruned, k) if part == "attn" else pa.ffn(pruned, k)
            d_parts = da.attention(dense, i) if part == "attn" else da.ffn(dense, i)
            if p_parts is not None and d_parts is not None:
                target = _capture(dense, d_parts.o if part == "attn" else d_parts.out, batches, "output")
                if hidden_idx is not None and target and target[0].shape[-1] != p_parts.norm.normalized_shape[0]:
                    target = [t[:, hidden_idx] for t in target]
                if part == "attn":
                    inputs = _capture(pruned, p_parts.o, batches, "input")
                    s, improved = _refine_attention(p_parts.o, pa.head_dim(p_parts.self_attn), inputs, target)
                else:
                    inputs = _capture(pruned, p_parts.out, batches, "input")
                    s, improved = _refine_ffn(p_parts.out, inputs, target)
                summary["layers"] += 1
                summary["units_rescaled" if improved else "kept_ones"] += len(s)
                changes.append(float((s - 1).abs().mean()))
            if tick is not None:
                tick(2 * k + (1 if part == "attn" else 2), steps)
    summary["mean_abs_change"] = round(sum(changes) / len(changes), 4) if changes else 0.0
    pruned.train(was)
    return summary

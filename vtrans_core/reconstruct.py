"""Retraining-free reconstruction after a hard cut (Kwon et al. 2022, "mask tuning").

A pruned block's residual sum (pre-LayerNorm for a post-LN encoder) is
sum_u s_u * c_u(x) + bias + residual  where c_u is the contribution of kept unit u (a head
through its o-proj columns, an FFN neuron through its out column). With frozen weights the cut
leaves s = 1; here each block is refitted by least squares so its sum matches the DENSE model's
on calibration rows:

    min_s ||C s - b||^2 + damping * mean(diag C^T C) * ||s - 1||^2,   b = dense_sum - bias - residual

Where a family's sums are read is its adapter's `block_sums`: the input of the LayerNorm closing
each block for a post-LN encoder; for a pre-LN decoder the residual stream after attention (what
the FFN's norm reads) and after the FFN (the layer's output). A narrower residual stream (hidden
pruned) is compared with the dense sums on its kept channels. For pre-LN families each token's
squared error is divided by the dense stream's mean square at that token (RELATIVE_FOR_PRE_LN).

Layers are solved IN ORDER, each on the inputs it really sees: the calibration rows are pushed
through the pruned model layer by layer, the layer's attention block is fitted, the layer is run
again to see the FFN's inputs after that fix (replaying the self-attention's recorded output where
the o-projection lies outside it: _attention_core), the FFN is fitted, and the fixed layer's output
(derived from that run's recorded sums, not a fourth run: _outputs_after_ffn_refit) becomes the
next layer's input. The dense model advances alongside (layers a uniform plan removed
included), so the target is the dense layer's output on the DENSE input: the fit also absorbs the
drift accumulated in the residual stream (Kwon's formulation), not only this block's error.

Modes: "scales" (one scalar per kept head / neuron, Kwon's mask tuning, clamped to
[-MAX_SCALE, MAX_SCALE]) and "weights" (the whole output projection refitted, ridge toward the
original weights: more freedom, more risk of overfitting). Each fit is kept only when it lowers
the reconstruction error on HELD-OUT calibration rows; at the end the pruned model's logits on
the held-out rows are compared with the dense model's and everything is reverted when the
reconstruction made them worse. The summary (metrics["method_info"]["reconstruct"]) says what was
kept and why anything was skipped.

Layer calls are replayed with the arguments the model gave its first layer (attention mask; a
decoder's rotary position embeddings), with any KV cache dropped: each layer runs several times on
the same rows, and a cache would append the same keys again at every call. Models whose layers
get different masks (per-layer attention types, e.g. sliding-window layers) are not refitted.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .families import adapter_for
from .precision import float32_section
from .layer_passes import (
    _attention_core,
    _capturing,
    _layer0_inputs,
    _outputs_after_ffn_refit,
    _pick,
    _record,
    _replaying,
    _run_layer,
    _strip,
)

MODES = ("off", "scales", "weights")
MAX_SCALE = 10.0        # Kwon clamps the tuned mask values to [-10, 10]
DAMPING = 1e-2          # ridge strength relative to the mean diagonal of the normal matrix
HOLDOUT_SHARE = 0.2     # calibration batches kept aside to accept / reject each fit
# Pre-LN: each token's squared error / the dense stream's mean square there (the next norm divides
# by that RMS; SmolLM2's few huge-norm tokens dominate the absolute error from layer 11 on). Same
# SmolLM2 cut, "weights": ppl 19.40 absolute, 19.20 relative (benchmarks/README.md). Encoders: absolute.
RELATIVE_FOR_PRE_LN = True


@dataclass
class Summary:
    mode: str
    weighting: str = "absolute"
    rows: int = 0
    fit_batches: int = 0
    held_out_batches: int = 0
    blocks: list = field(default_factory=list)
    applied: bool = True
    reason: str | None = None
    logit_mse_before: float | None = None
    logit_mse_after: float | None = None
    kl_before: float | None = None      # per-token logits (an LM): KL(dense || pruned) per token
    kl_after: float | None = None
    nll_before: float | None = None     # an LM: its next-token loss on the held-out windows' text
    nll_after: float | None = None

    def to_dict(self) -> dict:
        kept = [b for b in self.blocks if b["kept"]]
        gain = [b["held_out_before"] / max(b["held_out_after"], 1e-30) for b in kept]
        return {"mode": self.mode, "weighting": self.weighting, "applied": self.applied, "reason": self.reason,
                "rows": self.rows,
                "fit_batches": self.fit_batches, "held_out_batches": self.held_out_batches,
                "blocks_refit": len(kept), "blocks_skipped": len(self.blocks) - len(kept),
                "median_error_ratio": round(sorted(gain)[len(gain) // 2], 3) if gain else None,
                "held_out_logit_mse_before": self.logit_mse_before, "held_out_logit_mse_after": self.logit_mse_after,
                "held_out_kl_before": self.kl_before, "held_out_kl_after": self.kl_after,
                "held_out_nll_before": self.nll_before, "held_out_nll_after": self.nll_after,
                "per_block": self.blocks}


def _split(n: int) -> tuple[list[int], list[int]]:
    """Every k-th batch held out (k = 1/HOLDOUT_SHARE), so length-sorted batches (less padding, see
    faster.py) give a held-out share spread over all lengths."""
    if n < 2:
        return list(range(n)), []
    k = max(2, int(round(1 / HOLDOUT_SHARE)))
    held = [i for i in range(n) if i % k == k - 1] or [n - 1]
    return [i for i in range(n) if i not in held], held


def _weight(proj) -> torch.Tensor:
    """[out, in] float32 weight of an nn.Linear or a transformers Conv1D (GPT-2, stored [in, out])."""
    W = proj.weight.detach().float()
    return W if isinstance(proj, nn.Linear) else W.T.contiguous()


def _set_weight(proj, W: torch.Tensor) -> None:
    proj.weight.copy_((W if isinstance(proj, nn.Linear) else W.T).to(proj.weight.dtype))


def _contributions(inp: torch.Tensor, W: torch.Tensor, unit: int) -> torch.Tensor:
    """[tokens, units, out]: each kept unit's contribution through the projection (bias excluded)."""
    n = W.shape[1] // unit
    return torch.einsum("tud,oud->tuo", inp.view(len(inp), n, unit), W.view(W.shape[0], n, unit))


def _fit_scales(proj, unit: int, data: list, idx_fit, idx_held, damping: float):
    """Kwon's mask tuning for one projection; data[i] = (proj input, b = target - bias - residual)."""
    W = _weight(proj)     # per-batch products in float32, sums and the solve in float64
    n = W.shape[1] // unit
    gram = torch.zeros(n, n, dtype=torch.float64)
    rhs = torch.zeros(n, dtype=torch.float64)
    wtw = W.T @ W if unit == 1 else None
    for i in idx_fit:
        x, b, _ = data[i]
        if unit == 1:   # FFN: C^T C = (X^T X) * (W^T W) without materialising C
            gram += ((x.T @ x) * wtw).double()
            rhs += ((b @ W) * x).sum(0).double()
        else:
            c = _contributions(x, W, unit)
            gram += torch.einsum("tuo,tvo->uv", c, c).double()
            rhs += torch.einsum("tuo,to->u", c, b).double()
    ones = torch.ones(n, dtype=torch.float64)
    lam = damping * gram.diagonal().mean().clamp_min(1e-12)
    try:
        s = torch.linalg.solve(gram + lam * torch.eye(n, dtype=torch.float64), rhs + lam * ones)
    except RuntimeError:
        return None
    if not torch.isfinite(s).all():
        return None
    s = s.clamp(-MAX_SCALE, MAX_SCALE)
    scale = s.repeat_interleave(unit).float()

    def err(v):
        return sum(float(((data[i][0] * v) @ W.T - data[i][1]).pow(2).sum()) for i in idx_held)

    return scale, err(torch.ones_like(scale)), err(scale)


def _fit_weights(proj, data: list, idx_fit, idx_held, damping: float):
    """The whole projection (weights + bias) refitted by ridge least squares toward its current value."""
    W = _weight(proj)
    bias = proj.bias.detach().float() if proj.bias is not None else torch.zeros(W.shape[0])
    d = W.shape[1] + 1
    gram = torch.zeros(d, d, dtype=torch.float64)
    cross = torch.zeros(d, W.shape[0], dtype=torch.float64)
    for i in idx_fit:
        x, b, sw = data[i]       # rows already weighted by sw: the bias column is sw too
        xa = torch.cat([x, sw], 1)
        gram += (xa.T @ xa).double()
        cross += (xa.T @ (b + bias * sw)).double()   # b excludes the bias: add it back, the bias is refitted too
    w0 = torch.cat([W.T, bias.unsqueeze(0)], 0).double()
    lam = damping * gram.diagonal().mean().clamp_min(1e-12)
    try:
        w = torch.linalg.solve(gram + lam * torch.eye(d, dtype=torch.float64), cross + lam * w0)
    except RuntimeError:
        return None
    if not torch.isfinite(w).all():
        return None
    w, w0 = w.float(), w0.float()

    def err(m):
        return sum(float((torch.cat([x, sw], 1) @ m - (b + bias * sw)).pow(2).sum())
                   for x, b, sw in (data[i] for i in idx_held))

    return w, err(w0), err(w)


def _refit(proj, dense_sums: list, proj_io: list, sums: list, keep_idx, unit: int, mode: str, idx_fit,
           idx_held, damping: float, relative: bool) -> dict:
    """Fit `proj` (o-proj / FFN out) so the pruned block's sum matches the dense one; apply if it helps.
    relative: each token's squared error divided by the dense sum's mean square there (the next
    norm divides by that RMS), so a few huge-norm tokens do not outweigh all the others."""
    bias = proj.bias.detach().float() if proj.bias is not None else 0.0
    data = []
    for (p_in, p_out), total, dense in zip(proj_io, sums, dense_sums):
        target = dense if keep_idx is None else dense[:, keep_idx]
        b = target - bias - (total - p_out)
        if relative:
            sw = dense.pow(2).mean(-1, keepdim=True).clamp_min(1e-12).rsqrt()
            data.append((p_in * sw, b * sw, sw))
        else:   # unit weights: multiplying by ones would only copy every recorded input
            data.append((p_in, b, torch.ones(len(b), 1)))
    fit = _fit_scales(proj, unit, data, idx_fit, idx_held, damping) if mode == "scales" else \
        _fit_weights(proj, data, idx_fit, idx_held, damping)
    if fit is None:
        return {"kept": False, "why": "singular or non-finite solve", "held_out_before": 0.0, "held_out_after": 0.0}
    sol, before, after = fit
    kept = after < before
    if kept:
        with torch.no_grad():
            if mode == "scales":   # one scale per input column of the [out, in] weight
                _set_weight(proj, _weight(proj) * sol.unsqueeze(0))
            else:
                _set_weight(proj, sol[:-1].T)
                if proj.bias is not None:
                    proj.bias.copy_(sol[-1].to(proj.bias.dtype))
    return {"kept": kept, "why": None if kept else "held-out error did not drop",
            "held_out_before": before, "held_out_after": after}


def _dense_sums(adapter, dense, i: int, rows, xs) -> tuple[list, dict]:
    """Run dense layer i: (its outputs, {block: [its sum on real tokens]}) from block_sums."""
    taps = adapter.block_sums(dense, i)
    outs, got = _record(adapter.layers(dense)[i], rows, xs, {part: mod for part, (mod, _) in taps.items()})
    return outs, {part: _pick(got[part], side) for part, (_, side) in taps.items()}


def _logit_gap(pruned, dense, batches: list[dict], dense_cache: list | None = None
               ) -> tuple[float, float | None, torch.Tensor | None]:
    """(squared logit gap per row, summed over real tokens; for per-token logits (an LM) also the
    mean KL(dense || pruned) per real token and the pruned model's loss on each next token of the
    batches' own text, else None). An LM's vocabulary-wide statistics are taken one window at a
    time: whole-batch, their intermediates (fp32 copies, two log-softmaxes, the KL's terms) were
    ~7 logit-sized tensors, the peak of SmolLM2's refit (+2.9 GB at 4 x 512; window by window +1.3 GB).
    dense_cache: a classifier's dense logits are kept there by the first call and read by the
    next (one small vector a row; an LM's vocabulary-wide logits are recomputed instead)."""
    mse, kl, tokens, nll = 0.0, 0.0, 0, []
    with torch.no_grad():
        for n, b in enumerate(batches):
            p_all = pruned(**_strip(b)).logits
            if dense_cache is not None and n < len(dense_cache):
                d_all = dense_cache[n]
            else:
                d_all = dense(**_strip(b)).logits
                if dense_cache is not None and d_all.dim() < 3:
                    dense_cache.append(d_all)
            if p_all.dim() < 3:   # one logit vector a row (a classifier)
                mse += float((p_all.float() - d_all.float()).pow(2).sum())
                continue
            mask = b.get("attention_mask")
            for r in range(p_all.shape[0]):
                p, d = p_all[r].float(), d_all[r].float()
                real = mask[r].bool() if mask is not None else torch.ones(p.shape[0], dtype=torch.bool)
                mse += float((p - d).pow(2)[real].sum())
                lp, ld = F.log_softmax(p[real], -1), F.log_softmax(d[real], -1)
                kl += float((ld.exp() * (ld - lp)).sum())
                tokens += int(real.sum())
                if b.get("labels") is not None:   # token t predicts token t + 1 where both are real text
                    both = real[:-1] & real[1:]
                    nll.append(F.cross_entropy(p[:-1][both], b["labels"][r, 1:][both], reduction="none"))
    return (mse / max(1, sum(len(b["input_ids"]) for b in batches)), (kl / tokens if tokens else None),
            (torch.cat(nll).double() if nll else None))


def _rose(before: dict, after: dict) -> str | None:
    """Why the refit must be reverted, or None. The fit's objective on the held-out rows must drop:
    the KL to the dense model for an LM, the logit error otherwise. An LM's own next-token loss on
    the held-out windows must not rise either, beyond its noise (the mean per-token change over
    twice its standard error): a fit can move towards the dense distribution where it matters
    least to the text. Neither check caught Kwon's "scales" on SmolLM2 (perplexity 40.85 -> 44.94
    on held-out chapters while both improved on the held-out calibration windows), which is why
    it is not a decoder default (benchmarks/README.md)."""
    name, key = ("KL", "kl") if after.get("kl") is not None else ("logit error", "mse")
    b, a = before[key], after[key]
    if not a < b or not math.isfinite(a):
        return f"held-out {name} vs the dense model rose ({b:.4g} -> {a:.4g}): reverted"
    b, a = before.get("nll"), after.get("nll")
    if b is not None and a is not None and len(b) > 1:
        diff = a - b                            # the same tokens before and after: a paired comparison
        mean, se = float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))
        if not math.isfinite(mean) or mean > 2 * se:
            return (f"held-out next-token loss rose ({float(b.mean()):.4g} -> {float(a.mean()):.4g}, "
                    f"+{mean:.3g} +- {se:.2g} per token) although the KL fell: reverted")
    return None


def _round(v: float | None) -> float | None:
    return round(v, 6) if v is not None else None


def _shared_layer_calls(model) -> bool:
    """Whether every layer is called with the same mask (the replay uses layer 0's arguments)."""
    return len(set(getattr(model.config, "layer_types", None) or [None])) == 1


@torch.no_grad()
def reconstruct(pruned, dense, plan, batches: list[dict], mode: str = "scales", damping: float = DAMPING,
                tick: Callable[[int, int], None] | None = None, relative: bool | None = None) -> dict:
    """Refit `pruned` (a sliced plain HF model) in place against `dense` on calibration `batches`.
    relative (None: for pre-LN families): each token's error relative to the dense stream's RMS."""
    summary = Summary(mode=mode, rows=sum(len(b["input_ids"]) for b in batches))
    if mode == "off":
        summary.applied, summary.reason = False, "reconstruct is off"
        return summary.to_dict()
    if mode not in MODES:
        raise ValueError(f"reconstruct mode must be one of {MODES}, got {mode!r}")
    if len(batches) < 2:
        summary.applied, summary.reason = False, "fewer than 2 calibration batches: nothing to hold out"
        return summary.to_dict()
    pa, da = adapter_for(pruned), adapter_for(dense)
    if relative is None:
        relative = RELATIVE_FOR_PRE_LN and pa.norm_placement == "pre"
    summary.weighting = "relative" if relative else "absolute"
    if not _shared_layer_calls(dense):
        summary.applied = False
        summary.reason = "layers of different attention types (config.layer_types): not supported"
        return summary.to_dict()
    was_p, was_d = pruned.training, dense.training
    pruned.eval()
    dense.eval()
    idx_fit, idx_held = _split(len(batches))
    summary.fit_batches, summary.held_out_batches = len(idx_fit), len(idx_held)
    held_batches = [batches[i] for i in idx_held]
    before_state = copy.deepcopy(pruned.state_dict())
    dense_logits: list = []
    mse_before, kl_before, nll_before = _logit_gap(pruned, dense, held_batches, dense_logits)
    summary.logit_mse_before, summary.kl_before = round(mse_before, 6), _round(kl_before)
    summary.nll_before = _round(float(nll_before.mean())) if nll_before is not None else None

    n_dense = len(da.layers(dense))
    n_pruned = len(pa.layers(pruned))
    mapping = list(range(n_dense)) if n_pruned == n_dense else \
        [i for i in range(n_dense) if plan.attn_blocks[i] or plan.ffn_blocks[i]]
    # A narrower residual stream: the dense targets are read on the kept channels (dense indices).
    keep_idx = None
    if pa.shape_of(pruned).hidden != da.shape_of(dense).hidden:
        keep_idx = torch.as_tensor(plan.hidden, dtype=torch.long)
    p_rows, d_rows = _layer0_inputs(pruned, batches), _layer0_inputs(dense, batches)
    xp, xd = [r.x for r in p_rows], [r.x for r in d_rows]
    k = 0
    for i in range(n_dense):
        xd_next, d_sums = _dense_sums(da, dense, i, d_rows, xd)
        if i in mapping:
            p_layer = pa.layers(pruned)[k]
            next_xp, core, attn_out = None, None, None
            for part in ("attn", "ffn"):
                pp = pa.attention(pruned, k) if part == "attn" else pa.ffn(pruned, k)
                if pp is None or part not in d_sums:
                    continue
                proj = pp.o if part == "attn" else pp.out
                tap, side = pa.block_sums(pruned, k)[part]
                if part == "attn":
                    core, attn_out = _attention_core(pp), []
                # The FFN pass runs the whole layer anyway: keep its outputs, so the layer need
                # not run again once the FFN is refitted (_outputs_after_ffn_refit).
                capture = core if part == "attn" else None
                replay = core if part == "ffn" and attn_out is not None and len(attn_out) == len(p_rows) else None
                with _capturing(capture, attn_out), _replaying(replay, attn_out):
                    outs, got = _record(p_layer, p_rows, xp, {"proj": proj, "sum": tap}, outputs=part == "ffn")
                unit = pa.head_dim(pp.self_attn) if part == "attn" and mode == "scales" else 1
                with float32_section(proj.weight.device):   # the layers may run in bf16, the solve does not
                    res = _refit(proj, d_sums[part], got["proj"], _pick(got["sum"], side), keep_idx, unit, mode,
                                 idx_fit, idx_held, damping, relative)
                summary.blocks.append({"layer": i, "block": part, **{k2: (round(v, 4) if isinstance(v, float) else v)
                                                                      for k2, v in res.items()}})
                if part == "ffn":
                    next_xp = outs if not res["kept"] else \
                        _outputs_after_ffn_refit(outs, got, proj, tap, side, p_rows)
            xp = next_xp if next_xp is not None else [_run_layer(p_layer, r, x).detach() for r, x in zip(p_rows, xp)]
            k += 1
        xd = xd_next
        if tick is not None:
            tick(i + 1, n_dense)
    mse, kl, nll = _logit_gap(pruned, dense, held_batches, dense_logits)
    summary.logit_mse_after, summary.kl_after = round(mse, 6), _round(kl)
    summary.nll_after = _round(float(nll.mean())) if nll is not None else None
    why = _rose({"mse": mse_before, "kl": kl_before, "nll": nll_before}, {"mse": mse, "kl": kl, "nll": nll})
    if why is not None:
        pruned.load_state_dict(before_state)
        summary.applied = False
        summary.reason = why
    elif not any(b["kept"] for b in summary.blocks):
        summary.applied, summary.reason = False, "no block's held-out error dropped"
    pruned.train(was_p)
    dense.train(was_d)
    return summary.to_dict()

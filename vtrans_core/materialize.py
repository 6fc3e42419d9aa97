"""Physical slicing of a PrunableModel by a PruningPlan, and saving the result.

`materialize(pm, plan)` works on a deep copy (the source PrunableModel stays usable):
1. fold the kept gates' deterministic value mu into the weights (hidden gate -> LayerNorm
   weight/bias and the head dense rows; head gate -> o-projection columns; FFN gate -> FFN-out
   columns), so the plain sliced model computes what the masked model computed;
2. index_select rows/columns of every Embedding, Linear and LayerNorm touching a pruned unit and
   update the head-count attributes of the self-attention modules;
3. removed blocks: `per_layer` swaps them for parameter-free identity modules (really skipped at
   inference); `uniform` deletes whole layers (a plan with only one block of a layer removed is
   refused there) and writes a stock config (hidden = heads * head_dim);
4. write the config (families/base.py: write_config) and return a NEW PrunableModel over the
   small model whose masks carry the kept entries (mu reset to 1, log sigma^2 shifted: same
   alpha), with the same dense reference, so iterative pruning continues.

`save_pruned` writes save_pretrained() safetensors + config (+ tokenizer) + plan.json; never
pickle. A uniform output loads with plain AutoModelForSequenceClassification.from_pretrained.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .masks import folded_log_sigma2
from .plan import PruningPlan


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    w = lin.weight.data
    if rows is not None:
        w = w.index_select(0, rows)
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.data.index_select(0, rows).clone())
        lin.out_features = rows.numel()
    if cols is not None:
        w = w.index_select(1, cols)
        lin.in_features = cols.numel()
    lin.weight = nn.Parameter(w.clone())


def _slice_norm(ln: nn.Module, idx: torch.Tensor) -> None:
    ln.weight = nn.Parameter(ln.weight.data.index_select(0, idx).clone())
    if getattr(ln, "bias", None) is not None:
        ln.bias = nn.Parameter(ln.bias.data.index_select(0, idx).clone())
    ln.normalized_shape = (idx.numel(),)


def _slice_embedding(emb: nn.Embedding, idx: torch.Tensor) -> None:
    emb.weight = nn.Parameter(emb.weight.data.index_select(1, idx).clone())
    emb.embedding_dim = idx.numel()


def _head_rows(heads: list[int], d: int, device) -> torch.Tensor:
    return (torch.tensor(heads, dtype=torch.long, device=device)[:, None] * d
            + torch.arange(d, device=device)[None, :]).reshape(-1)


def _check(pm, plan: PruningPlan) -> None:
    s = pm.shape
    if len(plan.heads) != s.n_layers or len(plan.ffn) != s.n_layers:
        raise ValueError("plan was made for a model with a different number of layers")
    if plan.shape is not None and plan.shape.hidden != s.hidden:
        raise ValueError("plan was made for a model with a different hidden size")
    for l in range(s.n_layers):
        if plan.attn_blocks[l] and not (plan.heads[l] and s.attn_blocks[l]):
            raise ValueError(f"layer {l}: a kept attention block needs at least one head")
        if plan.ffn_blocks[l] and not (plan.ffn[l] and s.ffn_blocks[l]):
            raise ValueError(f"layer {l}: a kept FFN block needs at least one neuron")
    if plan.layout == "uniform":
        shape = plan.result_shape()
        if not shape.is_uniform(removed_layers=True):
            raise ValueError("uniform plan must keep the same heads/FFN in every kept layer, remove whole "
                             "layers only, and keep hidden == heads * head_dim")


@torch.no_grad()
def materialize(pm, plan: PruningPlan):
    from .prunable import PrunableModel

    _check(pm, plan)
    a, s, d = pm.adapter, pm.shape, pm.shape.head_dim
    pm.remove_hooks()  # hooks and patched LayerNorm forwards must not be deep-copied
    try:
        model = copy.deepcopy(pm.model)
    finally:
        pm._install()
    dev = next(model.parameters()).device
    hi = torch.tensor(plan.hidden, dtype=torch.long, device=dev)
    mu = {k: m.mu.detach().masked_fill(m.pruned, 0.0).to(dev) for k, m in pm.masks.items()}

    # 1) fold mu of the multiplicative gates into the weights
    if "hidden" in mu:
        norms = [a.embedding_norm(model)]
        for l in range(s.n_layers):
            norms += [p.norm for p in (a.attention(model, l), a.ffn(model, l)) if p is not None]
        for ln in norms:
            ln.weight.mul_(mu["hidden"])
            ln.bias.mul_(mu["hidden"])
        dense = a.head_dense(model)
        if dense is not None:
            dense.weight.mul_(mu["hidden"][:, None])
            dense.bias.mul_(mu["hidden"])
    for l in range(s.n_layers):
        attn, ffn = a.attention(model, l), a.ffn(model, l)
        if attn is not None and "heads" in mu:
            attn.o.weight.mul_(mu["heads"][l, :s.heads[l]].repeat_interleave(d)[None, :])
        if ffn is not None and "ffn" in mu:
            ffn.out.weight.mul_(mu["ffn"][l, :s.ffn[l]][None, :])

    # 2) slice
    for emb in a.embedding_tables(model):
        _slice_embedding(emb, hi)
    _slice_norm(a.embedding_norm(model), hi)
    for l in range(s.n_layers):
        attn, ffn = a.attention(model, l), a.ffn(model, l)
        if attn is not None and plan.attn_blocks[l]:
            rows = _head_rows(plan.heads[l], d, dev)
            for lin in (attn.q, attn.k, attn.v):
                _slice_linear(lin, rows, hi)
            _slice_linear(attn.o, hi, rows)
            _slice_norm(attn.norm, hi)
            a.set_heads(attn.self_attn, len(plan.heads[l]), d)
        if ffn is not None and plan.ffn_blocks[l]:
            fi = torch.tensor(plan.ffn[l], dtype=torch.long, device=dev)
            _slice_linear(ffn.inp, fi, hi)
            _slice_linear(ffn.out, hi, fi)
            _slice_norm(ffn.norm, hi)
    dense, cls = a.head_dense(model), a.classifier(model)
    if dense is not None:
        _slice_linear(dense, hi, hi)
    if cls is not None:
        _slice_linear(cls, None, hi)

    # 3) removed blocks
    if plan.layout == "uniform":
        kept_layers = [l for l in range(s.n_layers) if plan.attn_blocks[l]]
        layers = a.layers(model)
        a.set_layers(model, nn.ModuleList([layers[l] for l in kept_layers]))
    else:
        kept_layers = list(range(s.n_layers))
        for l in range(s.n_layers):
            if not plan.attn_blocks[l] and a.attention(model, l) is not None:
                a.skip_attention(model, l)
            if not plan.ffn_blocks[l] and a.ffn(model, l) is not None:
                a.skip_ffn(model, l)

    # 4) config and the new PrunableModel with carried-over masks
    new_shape = a.shape_of(model)
    a.write_config(model.config, new_shape, pm.reference)
    new = PrunableModel(model, pm.structures, pm.layout, pm.kl_weights, pm.reference)
    new.hidden_origin = pm.hidden_origin.to(hi.device)[hi].cpu()
    new.layer_origin = [pm.layer_origin[l] for l in kept_layers]
    # saved with the config so a reloaded model still maps onto the dense teacher
    model.config.vtrans_hidden_origin = new.hidden_origin.tolist()
    model.config.vtrans_layer_origin = list(new.layer_origin)
    _carry_masks(pm, new, plan, kept_layers)
    new.set_sampling(any(m.sampling for m in pm.masks.values()))
    model.train(pm.model.training)
    return new


def _carry(dst, d_idx, src, s_idx) -> None:
    m, ls2 = src.mu.detach()[s_idx], src.log_sigma2.detach()[s_idx]
    dst.mu.data[d_idx] = 1.0
    dst.log_sigma2.data[d_idx] = folded_log_sigma2(m, ls2).to(dst.log_sigma2.dtype)


@torch.no_grad()
def _carry_masks(old, new, plan: PruningPlan, kept_layers: list[int]) -> None:
    for key, m in new.masks.items():
        src = old.masks[key]
        dev = m.mu.device
        if key == "hidden":
            n = len(plan.hidden)
            _carry(m, torch.arange(n, device=dev), src, torch.tensor(plan.hidden, device=src.mu.device))
        elif key in ("heads", "ffn"):
            kept = plan.heads if key == "heads" else plan.ffn
            flags = plan.attn_blocks if key == "heads" else plan.ffn_blocks
            for nl, ol in enumerate(kept_layers):
                if flags[ol] and kept[ol]:
                    idx = torch.tensor(kept[ol], device=src.mu.device)
                    _carry(m, (nl, torch.arange(len(kept[ol]), device=dev)), src, (ol, idx))
        else:  # block gates: kept blocks snap to g = 1 (alpha preserved); removed ones stay pruned
            for nl, ol in enumerate(kept_layers):
                if not bool(m.pruned[nl]):
                    _carry(m, nl, src, ol)


def save_pruned(model: Any, tokenizer: Any, plan: PruningPlan | None, out_dir: str | Path,
                layout: str | None = None) -> Path:
    """save_pretrained (safetensors only) + tokenizer + plan.json. `model` may be a
    PrunableModel (its plain HF model is saved; hooks do not affect the weights)."""
    hf = getattr(model, "model", model) if not isinstance(model, nn.Module) else model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = layout or (plan.layout if plan is not None else None)
    is_uniform = not hasattr(hf.config, "vtrans_layout")
    if layout == "uniform" and not is_uniform:
        raise ValueError("layout 'uniform' requested but the model is per-layer sliced")
    hf.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if plan is not None:
        (out / "plan.json").write_text(plan.to_json())
    return out

"""Physical slicing of a PrunableModel by a PruningPlan, and saving the result.

`materialize(pm, plan)` works on a deep copy (the source PrunableModel stays usable):
1. fold the kept gates' deterministic value mu into the weights, so the plain sliced model
   computes what the masked model computed: head gate -> o-projection columns; FFN gate ->
   FFN-out columns; hidden gate, post-LN encoders -> LayerNorm weight/bias and the head dense
   rows; hidden gate, pre-LN decoders (gate on the stream's writes, prunable.py) -> embedding
   columns and the o / FFN-out rows and biases, and when the LM head IS the embedding (tied) the
   final norm's weight/bias divided by mu, which cancels the embedding's scaling in the head
   (logits = E diag(mu) . (w/mu * norm(x)) = E . (w * norm(x)));
2. index_select rows/columns of every Embedding, Linear / Conv1D and norm touching a pruned
   unit (grouped-query attention: k/v rows of the kept key/value groups; GPT-2's fused q|k|v
   projection: the kept rows of each third) and update the head-count attributes of the
   self-attention modules; a tied LM head is re-tied to the sliced embedding (sliced once);
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


def _slice_linear(lin: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    """Keep output `rows` and input `cols` of an nn.Linear or a transformers Conv1D (GPT-2,
    weight stored [in, out]: the same selection on the transposed axes)."""
    conv = not isinstance(lin, nn.Linear)
    out_ax, in_ax = (1, 0) if conv else (0, 1)
    w = lin.weight.data
    if rows is not None:
        w = w.index_select(out_ax, rows)
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.data.index_select(0, rows).clone())
        if conv:
            lin.nf = rows.numel()
        else:
            lin.out_features = rows.numel()
    if cols is not None:
        w = w.index_select(in_ax, cols)
        if conv:
            lin.nx = cols.numel()
        else:
            lin.in_features = cols.numel()
    lin.weight = nn.Parameter(w.clone())


def _scale_out(lin: nn.Module, scale: torch.Tensor) -> None:
    """Multiply output channel i of a Linear / Conv1D (weight and bias) by scale[i]."""
    lin.weight.mul_(scale[None, :] if not isinstance(lin, nn.Linear) else scale[:, None])
    if lin.bias is not None:
        lin.bias.mul_(scale)


def _scale_in(lin: nn.Module, scale: torch.Tensor) -> None:
    lin.weight.mul_(scale[:, None] if not isinstance(lin, nn.Linear) else scale[None, :])


def _attn_rows(shape, l: int, heads: list[int], d: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows of q (the kept query heads) and of k / v (their key/value groups)."""
    r = shape.group_size(l)
    groups = sorted({j // r for j in heads})
    return _head_rows(heads, d, dev), _head_rows(groups, d, dev)


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
    if s.kv_heads is not None:
        for l in range(s.n_layers):
            if plan.attn_blocks[l]:
                r, counts = s.group_size(l), {}
                for j in plan.heads[l]:
                    counts[j // r] = counts.get(j // r, 0) + 1
                if len(set(counts.values())) > 1:
                    raise ValueError(f"layer {l}: key/value groups would keep different numbers of query heads")
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
    tables, cls = a.embedding_tables(model), a.classifier(model)
    tied = cls is not None and cls.weight is tables[0].weight
    if "hidden" in mu and a.norm_placement == "post":
        norms = [a.embedding_norm(model)]
        for l in range(s.n_layers):
            norms += [p.norm for p in (a.attention(model, l), a.ffn(model, l)) if p is not None]
        for ln in norms:
            ln.weight.mul_(mu["hidden"])
            ln.bias.mul_(mu["hidden"])
        dense = a.head_dense(model)
        if dense is not None:
            _scale_out(dense, mu["hidden"])
    elif "hidden" in mu:   # pre-LN: the gate scales every write to the residual stream
        z = mu["hidden"]
        for emb in tables:
            emb.weight.mul_(z[None, :])
        for l in range(s.n_layers):
            for writer in [p.o if k == "attn" else p.out
                           for k, p in (("attn", a.attention(model, l)), ("ffn", a.ffn(model, l))) if p is not None]:
                _scale_out(writer, z)
        if tied:   # the head reads the scaled embedding: undo it on the head's input (kept entries)
            fn, keep = a.final_norm(model), z != 0
            inv = torch.where(keep, 1.0 / torch.where(keep, z, torch.ones_like(z)), torch.zeros_like(z))
            fn.weight.mul_(inv)
            if getattr(fn, "bias", None) is not None:
                fn.bias.mul_(inv)
    for l in range(s.n_layers):
        attn, ffn = a.attention(model, l), a.ffn(model, l)
        if attn is not None and "heads" in mu:
            _scale_in(attn.o, mu["heads"][l, :s.heads[l]].repeat_interleave(d))
        if ffn is not None and "ffn" in mu:
            _scale_in(ffn.out, mu["ffn"][l, :s.ffn[l]])

    # 2) slice
    for emb in tables:
        _slice_embedding(emb, hi)
    for ln in (a.embedding_norm(model), a.final_norm(model)):
        if ln is not None:
            _slice_norm(ln, hi)
    for l in range(s.n_layers):
        attn, ffn = a.attention(model, l), a.ffn(model, l)
        if attn is not None and plan.attn_blocks[l]:
            q_rows, kv_rows = _attn_rows(s, l, plan.heads[l], d, dev)
            if attn.qkv is not None:   # fused q | k | v (each A = heads * d wide before slicing)
                A, K = s.heads[l] * d, s.kv[l] * d
                _slice_linear(attn.qkv, torch.cat([q_rows, A + kv_rows, A + K + kv_rows]), hi)
            else:
                _slice_linear(attn.q, q_rows, hi)
                for lin in (attn.k, attn.v):
                    _slice_linear(lin, kv_rows, hi)
            _slice_linear(attn.o, hi, q_rows)
            _slice_norm(attn.norm, hi)
            a.set_heads(attn.self_attn, len(plan.heads[l]), d, kv_rows.numel() // d)
        if ffn is not None and plan.ffn_blocks[l]:
            fi = torch.tensor(plan.ffn[l], dtype=torch.long, device=dev)
            for lin in ffn.inputs:
                _slice_linear(lin, fi, hi)
            _slice_linear(ffn.out, hi, fi)
            _slice_norm(ffn.norm, hi)
    dense = a.head_dense(model)
    if dense is not None:
        _slice_linear(dense, hi, hi)
    if tied:   # one parameter: the sliced embedding is the head's weight again
        cls.weight = tables[0].weight
        cls.in_features = hi.numel()
    elif cls is not None:
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

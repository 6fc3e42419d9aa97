"""PrunableModel: a stock HF encoder or decoder with VIB gates applied by hooks (no module copies).

Where the gates act (the wrapped model stays the stock HF model; `remove_hooks()` undoes all):
- heads: forward pre-hook on the attention output projection (o) multiplies its input
  [B, T, heads*d] by the head gate repeated over each head's d channels;
- ffn: forward pre-hook on the FFN output projection multiplies its input by the FFN gate;
- hidden: the embeddings' LayerNorm, every residual LayerNorm and the head's hidden->hidden
  dense output are multiplied by the hidden gate. Those LayerNorms' forwards are replaced (an
  instance attribute, state-dict keys unchanged) by a MASKED LayerNorm whose mean and variance
  use only the channels not hard-pruned. The residual stream is then exactly zero on pruned
  channels, which is what makes slicing exactly equal to the hard-masked forward;
- whole blocks (post-LN): block output = g * LN(sub(x) + x) + (1 - g) * x, so g = 0 is the
  identity (the block and its LayerNorm are skipped). x is captured by a pre-hook on q / ffn-in.
- pre-LN decoders (LLaMA family, GPT-2; adapter.norm_placement == "pre") carry the hidden gate
  on the WRITES to the residual stream instead: the embedding tables' outputs and every block's
  output projection (o / FFN-out) are multiplied by it, so a channel with gate -> 0 is gone from
  the stream everywhere (every norm's statistics, every read, the LM head) as it will be once
  sliced. Their norms (per block and the final one) are replaced by masked norms (LayerNorm or
  RMSNorm statistics over the kept channels only) without a gate. A block gate multiplies the
  block's output: x + g * sub(norm(x)), so g = 0 is the identity.
  In the `uniform` layout one gate per layer ("layer") drives both blocks, because a stock
  config can only drop whole layers; per_layer has separate "attn_block" and "ffn_block".
  Uniform also ties hidden width to heads (H = heads * head_dim), so asking for either of
  "hidden" / "heads" creates both masks.
Gates are sampled once per forward (cached between the top-level pre- and post-hooks; with
activation checkpointing until the next forward, so backward's recomputation sees the same sample).

Masks (`pm.masks`): hidden [H], heads [L, max heads], ffn [L, max FFN], attn_block [L],
ffn_block [L] (per_layer) or layer [L] (uniform). Rows are rectangular; entries a sliced layer
no longer has are marked hard-pruned.

Materialization (`materialize`, materialize.py) folds the kept gates' mu into the weights and
carries the masks over with mu = 1 and log sigma^2 shifted so alpha (ranking, KL) is unchanged.
Block gates cannot be folded (the (1-g)*x term has no stock counterpart): kept blocks are
snapped to g = 1, so the sliced model equals the hard-masked forward exactly when kept block
gates are 1 and differs by that snap otherwise (the pipeline fine-tunes afterwards).

Hidden states for distillation: call the model with output_hidden_states=True. A masked model
returns full-width states (zeros on pruned channels); a sliced one returns the kept channels,
which are `teacher_state[..., pm.hidden_origin]`; with layers removed (uniform), layer k of the
student corresponds to teacher layer `pm.layer_origin[k]` (hidden_states index +1).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .budget import Budget
from .errors import CompressionError
from .families import adapter_for
from .flops import ModelShape, expected_size, shape_size, unit_costs
from .masks import VIBMask
from .plan import STRUCTURES, PruningPlan, make_plan, mask_keys


# The order in which a forward first reads each gate (embeddings, then layer 0's heads, its block
# gate, its FFN): drawing them up front in this order (activation checkpointing: a gate drawn
# inside a recomputed layer would be drawn again there) takes the same random numbers as drawing
# them where they are used.
FIRST_USE_ORDER = ("hidden", "heads", "layer", "attn_block", "ffn", "ffn_block")


class PrunableModel:
    def __init__(self, model: nn.Module, structures: Iterable[str] = STRUCTURES, layout: str = "per_layer",
                 kl_weights: dict[str, float] | None = None, reference: ModelShape | None = None):
        self.model = model
        self.adapter = adapter_for(model)
        self.shape = self.adapter.shape_of(model)
        self.layout = layout
        self.structures = tuple(s for s in STRUCTURES if s in set(structures))
        if layout == "uniform" and not self.shape.is_uniform():
            raise CompressionError("options.layout", "this model is per-layer pruned; it can only be pruned further "
                                   "with layout per_layer")
        saved_ref = getattr(model.config, "vtrans_reference", None)
        self.reference = reference or (ModelShape.from_dict(dict(saved_ref)) if saved_ref else self.shape)
        # KL weight of a unit = its size in FFN neurons (flops.unit_costs): the information prior
        # charges a head or a hidden channel for the weights it carries (see masks.py).
        self.kl_weights = {**unit_costs(self.shape), **(kl_weights or {})}
        # current hidden channels / layers -> the dense reference's (see module docstring)
        self.hidden_origin = torch.tensor(getattr(model.config, "vtrans_hidden_origin", None)
                                          or list(range(self.shape.hidden)), dtype=torch.long)
        self.layer_origin = list(getattr(model.config, "vtrans_layer_origin", None) or range(self.shape.n_layers))
        self.masks = nn.ModuleDict()
        L, s = self.shape.n_layers, self.shape
        for key in mask_keys(self.structures, layout, self.shape.attn_width_tied):
            if key == "hidden":
                m = VIBMask(s.hidden, self.kl_weights[key])
            elif key in ("heads", "ffn"):
                sizes = s.heads if key == "heads" else s.ffn
                m = VIBMask((L, max(max(sizes), 1)), self.kl_weights[key])
                alive = s.attn_blocks if key == "heads" else s.ffn_blocks
                for l, n in enumerate(sizes):
                    m.pruned[l, (n if alive[l] else 0):] = True
            else:
                m = VIBMask(L, self.kl_weights[key])
                alive = {"attn_block": s.attn_blocks, "ffn_block": s.ffn_blocks,
                         "layer": [a or b for a, b in zip(s.attn_blocks, s.ffn_blocks)]}[key]
                m.pruned[:] = torch.tensor([not a for a in alive])
            self.masks[key] = m
        p = next(model.parameters())
        self.masks.to(p.device)
        self._cache: dict[str, torch.Tensor] = {}
        self._resid: dict[tuple[int, str], torch.Tensor] = {}
        self._handles: list[Any] = []
        self._patched: list[nn.Module] = []
        # True while activation checkpointing recomputes layers in backward (checkpointing.py):
        # the gate samples then live until the next forward, not only until this one returns.
        self.keep_gates = False
        # Per-example probes (importance.fisher_information): per mask key a leaf tensor of ones
        # [B, *mask shape] multiplied into the gates, so that one backward over a batch yields
        # every row's own gate gradient (d loss / d probe[b] = row b's d loss / d z at z = mu).
        self.probes: dict[str, torch.Tensor] | None = None
        self._install()

    # ---- gates -------------------------------------------------------------------------------
    def _gate(self, key: str) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = self.masks[key].gate()
        return self._cache[key]

    def _kept_hidden(self) -> torch.Tensor | None:
        """Indices of hidden channels not hard-pruned, None when all are kept (computed once
        per forward: it needs a device sync)."""
        if "hidden" not in self.masks:
            return None
        if "_kept" not in self._cache:
            pruned = self.masks["hidden"].pruned
            self._cache["_kept"] = (~pruned).nonzero().squeeze(-1) if bool(pruned.any()) else None
        return self._cache["_kept"]

    def _z(self, key: str, like: torch.Tensor, l: int | None = None, n: int | None = None,
           repeat: int = 1) -> torch.Tensor:
        """The gate of `key` (layer l's entries, the first n of them) ready to multiply the
        [B, T, C] activation `like`: [C] (a scalar for a block gate), or with a per-example probe
        [B, 1, C] ([B, 1, 1] for a block gate)."""
        z = self._gate(key)
        probe = self.probes.get(key) if self.probes else None
        if l is not None:
            z = z[l] if n is None else z[l, :n]
            if probe is not None:
                probe = probe[:, l] if n is None else probe[:, l, :n]
        if probe is not None:
            z = z * probe
        if repeat > 1:
            z = z.repeat_interleave(repeat, dim=-1)
        if probe is not None:
            lead = [1] * (like.dim() - 2)
            z = z.view(z.shape[0], *lead, -1) if z.dim() == 2 else z.view(-1, *lead, 1)
        return z.to(like.dtype)

    def _block_gate(self, l: int, kind: str, like: torch.Tensor) -> torch.Tensor:
        key = "layer" if "layer" in self.masks else ("attn_block" if kind == "attn" else "ffn_block")
        return self._z(key, like, l)

    def _install(self) -> None:
        m, a = self.model, self.adapter
        has_hidden = "hidden" in self.masks

        def clear(*_args):
            self._cache.clear()
            self._resid.clear()

        def clear_after(*_args):
            if not self.keep_gates:
                clear()

        def clear_and_draw(*_args):
            clear()
            if self.keep_gates:   # checkpointing: every draw outside the recomputed layers (checkpointing.py)
                for key in FIRST_USE_ORDER:
                    if key in self.masks:
                        self._gate(key)

        # Fresh gate samples at every forward. The base model gets a pre-hook too, so calling
        # model.bert(...) directly never reuses a previous forward's (freed) graph; the
        # post-hook drops references once the top-level forward is done.
        self._handles.append(m.register_forward_pre_hook(clear))
        self._handles.append(a.base(m).register_forward_pre_hook(clear_and_draw))
        self._handles.append(m.register_forward_hook(clear_after))
        if a.norm_placement == "pre":
            self._install_pre_ln(has_hidden)
            return
        if has_hidden:
            self._patch_norm(a.embedding_norm(m), None, None)
            dense = a.head_dense(m)
            if dense is not None:
                self._handles.append(dense.register_forward_hook(
                    lambda mod, inp, out: out * self._z("hidden", out)))
        d = self.shape.head_dim
        for l in range(self.shape.n_layers):
            for kind, parts in (("attn", a.attention(m, l)), ("ffn", a.ffn(m, l))):
                if parts is None:
                    continue
                gated = self._has_block_mask(kind)
                if kind == "attn" and "heads" in self.masks:
                    n = self.shape.heads[l]
                    self._handles.append(parts.o.register_forward_pre_hook(self._scale_input("heads", l, n, d)))
                if kind == "ffn" and "ffn" in self.masks:
                    n = self.shape.ffn[l]
                    self._handles.append(parts.out.register_forward_pre_hook(self._scale_input("ffn", l, n, 1)))
                if gated:
                    entry = parts.q if kind == "attn" else parts.inp
                    self._handles.append(entry.register_forward_pre_hook(self._capture(l, kind)))
                if gated or has_hidden:
                    self._patch_norm(parts.norm, l, kind if gated else None)

    def _install_pre_ln(self, has_hidden: bool) -> None:
        """Gates of a pre-LN decoder (module docstring): hidden gate on the stream's writes, block
        gate on the block's output, masked norms; heads / FFN gates as for encoders."""
        m, a, d = self.model, self.adapter, self.shape.head_dim
        if has_hidden:
            for emb in a.embedding_tables(m):
                self._handles.append(emb.register_forward_hook(
                    lambda mod, inp, out: out * self._z("hidden", out)))
            self._patch_norm(a.final_norm(m), None, None)
        for l in range(self.shape.n_layers):
            for kind, parts in (("attn", a.attention(m, l)), ("ffn", a.ffn(m, l))):
                if parts is None:
                    continue
                if kind == "attn" and "heads" in self.masks:
                    hook = self._scale_input("heads", l, self.shape.heads[l], d)
                    self._handles.append(parts.o.register_forward_pre_hook(hook))
                if kind == "ffn" and "ffn" in self.masks:
                    hook = self._scale_input("ffn", l, self.shape.ffn[l], 1)
                    self._handles.append(parts.out.register_forward_pre_hook(hook))
                gated = self._has_block_mask(kind)
                if gated or has_hidden:
                    self._handles.append(parts.o.register_forward_hook(self._scale_write(l, kind, gated, has_hidden))
                                         if kind == "attn" else
                                         parts.out.register_forward_hook(self._scale_write(l, kind, gated, has_hidden)))
                if has_hidden:
                    self._patch_norm(parts.norm, l, None)

    def _scale_write(self, l: int, kind: str, gated: bool, has_hidden: bool):
        def hook(mod, args, out):
            if has_hidden:
                out = out * self._z("hidden", out)
            if gated:
                out = out * self._block_gate(l, kind, out)
            return out
        return hook

    def _has_block_mask(self, kind: str) -> bool:
        return "layer" in self.masks or ("attn_block" if kind == "attn" else "ffn_block") in self.masks

    def _scale_input(self, key: str, l: int, n: int, repeat: int):
        def hook(mod, args):
            return (args[0] * self._z(key, args[0], l, n, repeat),) + tuple(args[1:])
        return hook

    def _capture(self, l: int, kind: str):
        def hook(mod, args):
            self._resid[(l, kind)] = args[0]
        return hook

    def _patch_norm(self, ln: nn.Module, l: int | None, block_kind: str | None) -> None:
        post = self.adapter.norm_placement == "post"

        def forward(s: torch.Tensor) -> torch.Tensor:
            kept = self._kept_hidden()
            if kept is None:
                y = type(ln).forward(ln, s)
            else:  # statistics over kept channels only; pruned channels exactly 0
                yk = _norm_over(ln, s.index_select(-1, kept), kept)
                y = s.new_zeros(yk.shape[:-1] + s.shape[-1:]).index_copy(-1, kept, yk)
            if not post:   # pre-LN: the hidden gate acts on the stream's writes, not here
                return y
            if "hidden" in self.masks:
                y = y * self._z("hidden", y)
            if block_kind is not None:
                g = self._block_gate(l, block_kind, y)
                y = g * y + (1 - g) * self._resid[(l, block_kind)]
            return y
        ln.forward = forward
        self._patched.append(ln)

    def remove_hooks(self) -> nn.Module:
        """Detach every hook and masked LayerNorm: the plain HF model is left behind."""
        for h in self._handles:
            h.remove()
        for ln in self._patched:
            ln.__dict__.pop("forward", None)
        self._handles, self._patched = [], []
        self._cache.clear()
        self._resid.clear()
        return self.model

    # ---- training-facing API -------------------------------------------------------------
    def mask_parameters(self) -> list[nn.Parameter]:
        return list(self.masks.parameters())

    def kl(self) -> torch.Tensor:
        """Sum over masks of kl_weight * sum(0.5 * log(1 + mu^2 / sigma^2)) (beta not included)."""
        terms = [m.weighted_kl() for m in self.masks.values()]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def set_sampling(self, on: bool) -> None:
        for m in self.masks.values():
            m.sampling = bool(on)

    def to(self, device: Any) -> "PrunableModel":
        self.model.to(device)
        self.masks.to(device)
        return self

    def expected_fraction(self, kind: str, seq_len: int = 128) -> torch.Tensor:
        """Differentiable expected params/flops fraction of the DENSE reference model."""
        s, L = self.shape, self.shape.n_layers
        p = {k: m.keep_prob() for k, m in self.masks.items()}
        hidden = p["hidden"].sum() if "hidden" in p else s.hidden
        heads = [p["heads"][l].sum() for l in range(L)] if "heads" in p else s.heads
        kv = None
        if s.kv_heads is not None:   # GQA: a k/v head stays while any query head of its group does
            kv = [_expected_groups(p["heads"][l, :s.heads[l]], s.kv[l]) if "heads" in p and s.kv[l] else s.kv[l]
                  for l in range(L)]
        ffn = [p["ffn"][l].sum() for l in range(L)] if "ffn" in p else s.ffn
        a_key = "layer" if "layer" in p else "attn_block"
        f_key = "layer" if "layer" in p else "ffn_block"
        attn = [p[a_key][l] for l in range(L)] if a_key in p else [1.0 if a else 0.0 for a in s.attn_blocks]
        ffnb = [p[f_key][l] for l in range(L)] if f_key in p else [1.0 if b else 0.0 for b in s.ffn_blocks]
        size = expected_size(s, kind, seq_len, hidden, heads, ffn, attn, ffnb, kv)
        return size / shape_size(self.reference, kind, seq_len)

    def fraction(self, kind: str, seq_len: int = 128) -> float:
        """Exact fraction of the current (sliced) model, hard-pruned entries not counted."""
        return self.plan_from_masks().fraction(kind, seq_len)

    # ---- plans ---------------------------------------------------------------------------
    def log_alphas(self, structures: Iterable[str] | None = None) -> dict[str, Any]:
        """Per-entry log alpha (None where hard-pruned) of the masks, for the planner."""
        keys = mask_keys(structures, self.layout, self.shape.attn_width_tied) if structures is not None else list(self.masks)
        out: dict[str, Any] = {}
        for k in keys:
            if k not in self.masks:
                continue
            m = self.masks[k]
            la, pr = m.log_alpha().detach().cpu(), m.pruned.cpu()
            vals = la.masked_fill(pr, float("nan")).tolist()
            fix = lambda v: None if v != v else v  # noqa: E731  (nan -> None)
            out[k] = [[fix(v) for v in row] for row in vals] if la.dim() == 2 else [fix(v) for v in vals]
        return out

    def plan_for(self, budget: Budget | dict, layout: str | None = None, round_to: int = 8,
                 structures: Iterable[str] | None = None) -> PruningPlan:
        b = Budget.parse(budget)
        layout = layout or self.layout
        self._check_layout(layout)
        plan = make_plan(self.shape, self.reference, self.log_alphas(structures), b.kind, b.target, b.seq_len,
                         layout, round_to)
        plan.meta.update(budget=b.to_dict(), round_to=round_to, layer_origin=list(self.layer_origin))
        return plan

    def min_fraction(self, kind: str, seq_len: int = 128, layout: str | None = None,
                     structures: Iterable[str] | None = None, round_to: int = 8) -> float:
        """Smallest fraction reachable with the enabled structures (e.g. params cannot go below
        the embeddings' share when hidden pruning is off)."""
        layout = layout or self.layout
        self._check_layout(layout)
        scores = {k: [[0.0 if v is not None else None for v in row] if isinstance(row, list) else
                       (0.0 if row is not None else None) for row in vals]
                  for k, vals in self.log_alphas(structures).items()}
        return make_plan(self.shape, self.reference, scores, kind, 0.0, seq_len, layout, round_to).fraction(kind, seq_len)

    def _check_layout(self, layout: str) -> None:
        if layout != self.layout:
            raise CompressionError("options.layout", f"this PrunableModel was built for layout {self.layout!r} "
                                   f"(block gates differ between layouts), not {layout!r}")

    def plan_from_masks(self) -> PruningPlan:
        """The plan equivalent to the current hard-pruned entries (nothing else removed)."""
        plan = make_plan(self.shape, self.reference, self.log_alphas(), "params", 1.0, 128, self.layout, 1)
        plan.meta["layer_origin"] = list(self.layer_origin)
        return plan

    def apply_plan(self, plan: PruningPlan) -> None:
        """Hard-prune everything the plan removes (gates fixed to 0): the hard-masked forward."""
        s, L = self.shape, self.shape.n_layers
        if plan.shape is not None and (plan.shape.hidden != s.hidden or plan.shape.n_layers != L):
            raise ValueError("plan was made for a different model shape")
        need = {"hidden": len(plan.hidden) < s.hidden}
        with torch.no_grad():
            if "hidden" in self.masks:
                keep = torch.zeros(s.hidden, dtype=torch.bool)
                keep[plan.hidden] = True
                self.masks["hidden"].pruned |= ~keep.to(self.masks["hidden"].pruned.device)
            for key, kept, flags in (("heads", plan.heads, plan.attn_blocks), ("ffn", plan.ffn, plan.ffn_blocks)):
                real = s.heads if key == "heads" else s.ffn
                need[key] = any(len(k) < n for k, n, f in zip(kept, real, flags) if f)
                if key in self.masks:
                    m = self.masks[key]
                    keep = torch.zeros_like(m.pruned)
                    for l in range(L):
                        if flags[l]:
                            keep[l, kept[l]] = True
                    m.pruned |= ~keep
            for kind, flags in (("attn", plan.attn_blocks), ("ffn", plan.ffn_blocks)):
                gone = [l for l in range(L) if not flags[l]]
                need[f"{kind}_block"] = bool(gone)
                key = "layer" if "layer" in self.masks else f"{kind}_block"
                if key in self.masks:
                    for l in gone:
                        self.masks[key].pruned[l] = True
        missing = [k for k, v in need.items() if v and k not in self.masks and
                   not (k in ("attn_block", "ffn_block") and "layer" in self.masks)]
        if missing:
            raise ValueError(f"plan removes {missing} but this PrunableModel has no mask for them")

    def materialize(self, plan: PruningPlan) -> "PrunableModel":
        from .materialize import materialize
        return materialize(self, plan)


def _expected_groups(p: torch.Tensor, groups: int) -> torch.Tensor:
    """Expected kept key/value heads: group g stays unless all its query heads go (independent
    keep probabilities p, query heads grouped consecutively as repeat_kv groups them)."""
    return (1 - torch.prod(1 - p.reshape(groups, -1), dim=1)).sum()


def _norm_over(ln: nn.Module, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The norm `ln` restricted to the `kept` channels (x holds only those): what the sliced
    model's norm computes. LayerNorm (weight, bias, eps) or RMSNorm as the LLaMA family writes it
    (weight * x / rms(x), statistics in float32, eps in `variance_epsilon` or `eps`)."""
    w = ln.weight.index_select(0, kept)
    if isinstance(ln, nn.LayerNorm):
        b = ln.bias.index_select(0, kept) if ln.bias is not None else None
        return F.layer_norm(x, (kept.numel(),), w, b, ln.eps)
    eps = getattr(ln, "variance_epsilon", getattr(ln, "eps", 1e-6))
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)

"""Running a model's layers one at a time on calibration rows, for the layer-wise refit
(reconstruct.py): what layer 0 receives, a layer's run with forward hooks recording chosen
modules' inputs and outputs on real tokens, replaying a module's recorded output instead of
computing it again, and a layer's outputs derived after its FFN projection was refitted."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .families import adapter_for


class _Stop(Exception):
    pass


@dataclass
class _Rows:
    """One calibration batch as layer-0 sees it: hidden states plus the layer's other call args."""
    x: torch.Tensor
    args: tuple
    kwargs: dict
    valid: torch.Tensor          # [B, T] bool, real tokens
    _flat: torch.Tensor | None = None

    def real(self, t: torch.Tensor) -> torch.Tensor:
        """t[valid] for a [B, T, width] tensor, via index_select on the flattened rows (about
        half the time of boolean indexing, which recomputes the indices at every call)."""
        if self._flat is None:
            self._flat = self.valid.reshape(-1).nonzero().squeeze(1)
        return t.reshape(-1, t.shape[-1]).index_select(0, self._flat)


def _strip(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "index")}


def _uncached(value):
    from transformers.cache_utils import Cache

    return None if isinstance(value, Cache) else value


def _layer0_inputs(model, batches: list[dict]) -> list[_Rows]:
    """What the first layer receives for each batch (embeddings, attention mask, position
    embeddings...), without a KV cache (see the module docstring)."""
    layers = adapter_for(model).layers(model)
    seen: list[_Rows] = []

    def grab(_m, args, kwargs):
        kwargs = dict(kwargs)
        x = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: _uncached(v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        seen.append(_Rows(x.detach(), tuple(_uncached(a) for a in args[1:]), kwargs, torch.ones(1)))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for b in batches:
            try:
                model(**_strip(b))
            except _Stop:
                pass
            mask = b.get("attention_mask")    # packed LM windows have no padding
            seen[-1].valid = mask.bool() if mask is not None else torch.ones_like(b["input_ids"], dtype=torch.bool)
    finally:
        handle.remove()
    return seen


def _run_layer(layer, rows: _Rows, x: torch.Tensor) -> torch.Tensor:
    out = layer(x, *rows.args, **rows.kwargs)
    return out[0] if isinstance(out, tuple) else out


def _record(layer, rows: list[_Rows], xs: list[torch.Tensor], modules: dict, outputs: bool = True
            ) -> tuple[list, dict]:
    """Run `layer` on every batch; returns (layer outputs, {name: [(input, output) on valid tokens]}).
    outputs=False: the layer stops once every module was seen (a refit of the attention block
    needs no FFN), and the outputs list is empty."""
    got: dict[str, list] = {k: [] for k in modules}
    start: dict[str, int] = {}
    handles = []
    for name, mod in modules.items():
        def hook(_m, args, output, name=name):
            output = output[0] if isinstance(output, tuple) else output   # a layer's (hidden, ...)
            got[name].append((args[0].detach(), output.detach()))
            if not outputs and all(len(v) > start[k] for k, v in got.items()):
                raise _Stop
        handles.append(mod.register_forward_hook(hook))
    outs = []
    try:
        for r, x in zip(rows, xs):
            start.update({k: len(v) for k, v in got.items()})
            try:
                out = _run_layer(layer, r, x).detach()
            except _Stop:
                out = None
            if outputs:
                outs.append(out)
            for k in got:   # keep only real tokens, flattened to [tokens, width]
                if len(got[k]) > start[k]:
                    i, o = got[k][-1]
                    got[k][-1] = (r.real(i).float(), r.real(o).float())
    finally:
        for h in handles:
            h.remove()
    return outs, got


def _attention_core(parts) -> nn.Module | None:
    """The module computing the o-projection's input when the o-projection lies outside it (BERT's
    self-attention, its output projection a sibling): refitting o does not change that module's
    output, so the FFN pass replays what the attention pass recorded instead of recomputing the
    queries, keys, values and scores (~10% of a MiniLM refit), at the cost of holding that output
    for every calibration batch while the layer is refitted (as much again as the layer's inputs,
    which are held anyway). None where o is part of it (GPT-2, DistilBERT, the decoders): those
    layers run whole again."""
    core = parts.self_attn
    if core is None or any(m is parts.o for m in core.modules()):
        return None
    return core


@contextmanager
def _capturing(module: nn.Module | None, store: list):
    """Append every output of `module` to `store` while inside (nothing when module is None)."""
    handle = module.register_forward_hook(lambda _m, _a, out: store.append(out)) if module is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@contextmanager
def _replaying(module: nn.Module | None, outputs: list | None):
    """Inside, each call of `module` returns the next of `outputs` without computing (its hooks
    still run); nothing is replaced when module or outputs is None."""
    if module is None or outputs is None:
        yield
        return
    queue = iter(outputs)
    module.forward = lambda *_a, **_k: next(queue)   # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del module.forward


def _outputs_after_ffn_refit(outs: list, got: dict, proj, tap, side: str, rows: list[_Rows]) -> list | None:
    """The layer's outputs with the refitted FFN projection, from what the FFN pass recorded: the
    sum moves by exactly the projection's change, and the layer's output is that sum (pre-LN) or
    the closing norm of it (post-LN). This replaces a fourth run of the layer per calibration
    batch (~13% of the refit on MiniLM). Padding positions keep their old values: no real token
    attends to them. None (run the layer again) when the layer's output is not the tap's: a
    family whose layer does more after its last residual sum."""
    fixed = []
    for n, (out, (p_in, p_out), (s_in, s_out), r) in enumerate(zip(outs, got["proj"], got["sum"], rows)):
        if out is None:
            return None
        if n == 0:   # the layer must return the tap's output (the closing norm's, or its own): check once
            if not torch.allclose(out[r.valid].float(), s_out, rtol=1e-4, atol=1e-5):
                return None
        old_sum = s_in if side == "input" else s_out
        new_sum = old_sum - p_out + proj(p_in.to(proj.weight.dtype)).float()
        new = tap(new_sum.to(out.dtype)) if side == "input" else new_sum   # an "input" tap is the closing norm
        out = out.clone()
        out[r.valid] = new.to(out.dtype)
        fixed.append(out)
    return fixed


def _pick(io: list, side: str) -> list:
    return [i if side == "input" else o for i, o in io]

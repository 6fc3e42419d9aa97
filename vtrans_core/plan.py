"""Pruning plans: which hidden channels, heads, FFN neurons and blocks a sliced model keeps.

`PruningPlan` indices refer to the model the plan is applied to (`shape`); fractions are
always of the DENSE model the compression started from (`reference`), so a plan made on an
already-sliced model in a later pruning round still reports fractions of the original.

The planner that turns VIB scores into a plan lives in planner.py (make_plan, min_fraction and
neutral_scores are re-exported here).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import CompressionError
from .flops import ModelShape, shape_size

STRUCTURES = ("hidden", "heads", "ffn", "attn_block", "ffn_block")


def mask_keys(structures: Iterable[str], layout: str, tied: bool = True) -> list[str]:
    """Masks a PrunableModel builds for these structures in this layout. uniform ties hidden
    with heads (both or neither) when the family ties attention width to hidden width (`tied`),
    and attention with FFN blocks (one "layer" gate)."""
    s = set(structures)
    unknown = s - set(STRUCTURES)
    if unknown:
        raise ValueError(f"unknown structures {sorted(unknown)} (known: {STRUCTURES})")
    if layout == "uniform":
        if tied:
            keys = ["hidden", "heads"] if s & {"hidden", "heads"} else []
        else:
            keys = [k for k in ("hidden", "heads") if k in s]
        keys += ["ffn"] if "ffn" in s else []
        keys += ["layer"] if s & {"attn_block", "ffn_block"} else []
        return keys
    if layout != "per_layer":
        raise CompressionError("options.layout", f"must be uniform or per_layer, got {layout!r}")
    return [k for k in STRUCTURES if k in s]


@dataclass
class PruningPlan:
    hidden: list[int]
    heads: list[list[int]]
    ffn: list[list[int]]
    attn_blocks: list[bool]
    ffn_blocks: list[bool]
    shape: ModelShape | None = None        # the model the indices refer to
    reference: ModelShape | None = None    # the dense model fractions are relative to
    layout: str = "per_layer"
    meta: dict[str, Any] = field(default_factory=dict)

    def result_shape(self) -> ModelShape:
        if self.shape is None:
            raise ValueError("plan has no source shape")
        kv = None
        if self.shape.kv_heads is not None:   # GQA: the groups that keep at least one query head
            kv = [len({j // self.shape.group_size(l) for j in h}) if a else 0
                  for l, (h, a) in enumerate(zip(self.heads, self.attn_blocks))]
        return self.shape.replace(
            hidden=len(self.hidden),
            heads=[len(h) if a else 0 for h, a in zip(self.heads, self.attn_blocks)],
            ffn=[len(f) if b else 0 for f, b in zip(self.ffn, self.ffn_blocks)],
            attn_blocks=list(self.attn_blocks), ffn_blocks=list(self.ffn_blocks), kv_heads=kv)

    def fraction(self, kind: str, seq_len: int = 128) -> float:
        ref = self.reference or self.shape
        return shape_size(self.result_shape(), kind, seq_len) / shape_size(ref, kind, seq_len)

    def kept_summary(self) -> dict[str, Any]:
        """The metrics' `kept` entry (contract §3), per layer of the DENSE reference model: a
        layer deleted in an earlier uniform round shows 0 heads / 0 FFN and both blocks removed
        (meta["layer_origin"] maps the current layers to the reference's)."""
        s = self.result_shape()
        origin = self.meta.get("layer_origin") or list(range(s.n_layers))
        n0 = self.reference.n_layers if self.reference is not None else s.n_layers
        heads, ffn = [0] * n0, [0] * n0
        attn_gone, ffn_gone = set(range(n0)), set(range(n0))
        for k, o in enumerate(origin):
            heads[o], ffn[o] = s.heads[k], s.ffn[k]
            if s.attn_blocks[k]:
                attn_gone.discard(o)
            if s.ffn_blocks[k]:
                ffn_gone.discard(o)
        out = {"hidden": s.hidden, "heads_per_layer": heads, "ffn_per_layer": ffn,
               "attn_blocks_removed": sorted(attn_gone), "ffn_blocks_removed": sorted(ffn_gone)}
        if s.kv_heads is not None:   # grouped-query attention: key/value heads kept per layer too
            kv = [0] * n0
            for k, o in enumerate(origin):
                kv[o] = s.kv[k]
            out["kv_heads_per_layer"] = kv
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "heads": self.heads, "ffn": self.ffn,
                "attn_blocks": self.attn_blocks, "ffn_blocks": self.ffn_blocks, "layout": self.layout,
                "shape": self.shape.to_dict() if self.shape else None,
                "reference": self.reference.to_dict() if self.reference else None,
                "kept": self.kept_summary() if self.shape else None, "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningPlan":
        return cls(hidden=[int(i) for i in d["hidden"]], heads=[[int(i) for i in h] for h in d["heads"]],
                   ffn=[[int(i) for i in f] for f in d["ffn"]], attn_blocks=[bool(a) for a in d["attn_blocks"]],
                   ffn_blocks=[bool(b) for b in d["ffn_blocks"]], layout=d.get("layout", "per_layer"),
                   shape=ModelShape.from_dict(d["shape"]) if d.get("shape") else None,
                   reference=ModelShape.from_dict(d["reference"]) if d.get("reference") else None,
                   meta=d.get("meta") or {})

    @classmethod
    def from_json(cls, text: str) -> "PruningPlan":
        return cls.from_dict(json.loads(text))


from .planner import CLOSE_TOL, make_plan, min_fraction, neutral_scores  # noqa: E402,F401  (re-exported)

"""Pruning plans: which hidden channels, heads, FFN neurons and blocks a sliced model keeps.

`PruningPlan` indices refer to the model the plan is applied to (`shape`); fractions are
always of the DENSE model the compression started from (`reference`), so a plan made on an
already-sliced model in a later pruning round still reports fractions of the original.

`make_plan` turns per-entry log alpha scores into a plan that meets a budget (analytic
fraction <= target) as closely as it can, removing the least informative units first:
- per_layer units: a group of `round_to` hidden channels (one hidden mask for the whole model),
  one head of one layer, a group of `round_to` FFN neurons of one layer, a whole attention
  block, a whole FFN block. Groups are consecutive in log-alpha order (the first group takes
  the remainder) so kept widths stay multiples of round_to. Removing a layer's last head / last
  FFN group removes the block (only when block pruning is on; else 1 head / round_to neurons
  stay). At least one attention block always remains.
- uniform units (a stock config must be able to express the result): a "head rank" removes the
  k-th least informative head of EVERY layer together with the head_dim least informative
  hidden channels (hidden width is tied to heads: H = h * head_dim, so prune_hidden and
  prune_heads act together), scored by the mean of the heads' mean and the channels' mean log
  alpha; an FFN rank group removes round_to neurons at the same rank positions in every layer;
  a layer unit removes a whole layer (attention and FFN blocks are tied). At least 1 head,
  round_to FFN neurons and 1 layer remain.
Greedy: units sorted by score (units below alpha = 1 naturally come first); remove until the
fraction is <= target. If the last removal overshoots by more than CLOSE_TOL, it is undone and
the following (smaller) units are tried instead; the overshooting unit is used only if they
cannot reach the target.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import CompressionError
from .flops import ModelShape, shape_size

CLOSE_TOL = 0.005
STRUCTURES = ("hidden", "heads", "ffn", "attn_block", "ffn_block")


def mask_keys(structures: Iterable[str], layout: str) -> list[str]:
    """Masks a PrunableModel builds for these structures in this layout. uniform ties hidden
    with heads (both or neither) and attention with FFN blocks (one "layer" gate)."""
    s = set(structures)
    unknown = s - set(STRUCTURES)
    if unknown:
        raise ValueError(f"unknown structures {sorted(unknown)} (known: {STRUCTURES})")
    if layout == "uniform":
        keys = ["hidden", "heads"] if s & {"hidden", "heads"} else []
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
        return self.shape.replace(
            hidden=len(self.hidden),
            heads=[len(h) if a else 0 for h, a in zip(self.heads, self.attn_blocks)],
            ffn=[len(f) if b else 0 for f, b in zip(self.ffn, self.ffn_blocks)],
            attn_blocks=list(self.attn_blocks), ffn_blocks=list(self.ffn_blocks))

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
        return {"hidden": s.hidden, "heads_per_layer": heads, "ffn_per_layer": ffn,
                "attn_blocks_removed": sorted(attn_gone), "ffn_blocks_removed": sorted(ffn_gone)}

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


# ---------------------------------------------------------------------------------------------
# Planner. Scores: dict of per-entry log alpha, None for a hard-pruned / non-existent entry:
#   "hidden": [H], "heads": [L][maxh], "ffn": [L][maxF], "attn_block": [L], "ffn_block": [L],
#   "layer": [L] (uniform). A structure missing from the dict is not pruned.

def _groups(idx_scores: list[tuple[int, float]], size: int) -> list[list[tuple[int, float]]]:
    """Consecutive groups in ascending score; the first takes the remainder, the last group is
    never returned (at least `size` entries stay)."""
    items = sorted(idx_scores, key=lambda t: t[1])
    first = len(items) % size or size
    groups, start = [items[:first]], first
    while start < len(items):
        groups.append(items[start:start + size])
        start += size
    return groups[:-1]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _live(shape: ModelShape, scores: dict[str, Any]) -> dict[str, Any]:
    """Entries that exist now (per the shape) and are not hard-pruned."""
    L = shape.n_layers

    def alive(key, l, j, real):
        s = scores.get(key)
        return j < real and (s is None or s[l][j] is not None)

    hs = scores.get("hidden")
    hidden = [(i, hs[i] if hs else 0.0) for i in range(shape.hidden) if hs is None or hs[i] is not None]
    heads = [[(j, scores["heads"][l][j] if "heads" in scores else 0.0)
              for j in range(shape.heads[l]) if alive("heads", l, j, shape.heads[l])] for l in range(L)]
    ffn = [[(j, scores["ffn"][l][j] if "ffn" in scores else 0.0)
            for j in range(shape.ffn[l]) if alive("ffn", l, j, shape.ffn[l])] for l in range(L)]
    attn, ffnb = list(shape.attn_blocks), list(shape.ffn_blocks)
    for key, flags in (("attn_block", attn), ("ffn_block", ffnb), ("layer", attn), ("layer", ffnb)):
        if scores.get(key) is not None:
            for l in range(L):
                flags[l] = flags[l] and scores[key][l] is not None
    for l in range(L):  # a block with no live entries left is gone
        attn[l] = attn[l] and bool(heads[l])
        ffnb[l] = ffnb[l] and bool(ffn[l])
    return {"hidden": hidden, "heads": heads, "ffn": ffn, "attn": attn, "ffnb": ffnb}


class _State:
    def __init__(self, H, h, f, a, b):
        self.H, self.h, self.f, self.a, self.b = H, list(h), list(f), list(a), list(b)

    def copy(self):
        return _State(self.H, self.h, self.f, self.a, self.b)

    def shape(self, base: ModelShape) -> ModelShape:
        return base.replace(hidden=self.H, heads=[h if a else 0 for h, a in zip(self.h, self.a)],
                            ffn=[f if b else 0 for f, b in zip(self.f, self.b)],
                            attn_blocks=list(self.a), ffn_blocks=list(self.b))


def _units(shape: ModelShape, live: dict, scores: dict, layout: str, round_to: int, blocks: set) -> list:
    """(score, kind, payload) for every removable unit."""
    L, units = shape.n_layers, []
    if layout == "per_layer":
        if "hidden" in scores:
            for g in _groups(live["hidden"], round_to):
                units.append((_mean([s for _, s in g]), "hidden", [i for i, _ in g]))
        if "heads" in scores:
            for l in range(L):
                for j, s in live["heads"][l]:
                    units.append((s, "head", (l, j)))
        if "ffn" in scores:
            for l in range(L):
                if live["ffn"][l]:
                    items = sorted(live["ffn"][l], key=lambda t: t[1])
                    first = len(items) % round_to or round_to
                    cuts = [0, first] + list(range(first + round_to, len(items) + 1, round_to))
                    for a, b in zip(cuts, cuts[1:]):
                        g = items[a:b]
                        units.append((_mean([s for _, s in g]), "ffn", (l, [i for i, _ in g])))
        for key, kind in (("attn_block", "attn_block"), ("ffn_block", "ffn_block")):
            if scores.get(key) is not None:
                for l in range(L):
                    if (live["attn"] if kind == "attn_block" else live["ffnb"])[l]:
                        units.append((scores[key][l], kind, l))
        return units
    # uniform
    alive_layers = [l for l in range(L) if live["attn"][l] or live["ffnb"][l]]
    if ("heads" in scores or "hidden" in scores) and alive_layers:
        per_layer = [sorted(live["heads"][l], key=lambda t: t[1]) for l in alive_layers]
        n_heads = min(len(p) for p in per_layer)
        hidden_sorted = sorted(live["hidden"], key=lambda t: t[1])
        d = shape.head_dim
        for k in range(n_heads - 1):
            hs = [p[k] for p in per_layer]
            hid = hidden_sorted[k * d:(k + 1) * d]
            score = _mean([_mean([s for _, s in hs]), _mean([s for _, s in hid])]) if "hidden" in scores \
                else _mean([s for _, s in hs])
            units.append((score, "rank", ([(l, j) for l, (j, _) in zip(alive_layers, hs)], [i for i, _ in hid])))
    if "ffn" in scores and alive_layers:
        per_layer = [sorted(live["ffn"][l], key=lambda t: t[1]) for l in alive_layers]
        n = min(len(p) for p in per_layer)
        first = n % round_to or round_to
        cuts = [0, first] + list(range(first + round_to, n + 1, round_to))
        for a, b in list(zip(cuts, cuts[1:]))[:-1]:
            entries = [(l, j) for l, p in zip(alive_layers, per_layer) for j, _ in p[a:b]]
            score = _mean([s for p in per_layer for _, s in p[a:b]])
            units.append((score, "ffn_rank", entries))
    if scores.get("layer") is not None:
        for l in alive_layers:
            units.append((scores["layer"][l], "layer", l))
    return units


def _apply(st: _State, unit, layout: str, blocks: set, round_to: int) -> bool:
    """Remove `unit` from the state; False (state unchanged) when it is invalid or moot."""
    _, kind, p = unit
    if kind == "hidden":
        st.H -= len(p)
        return True
    if kind == "head":
        l, _ = p
        if not st.a[l]:
            return False
        if st.h[l] == 1:
            if "attn" not in blocks or sum(st.a) <= 1:
                return False
            st.a[l] = False
        st.h[l] -= 1
        return True
    if kind == "ffn":
        l, idx = p
        if not st.b[l]:
            return False
        if st.f[l] - len(idx) <= 0:
            if "ffn" not in blocks:
                return False
            st.b[l] = False
        st.f[l] -= len(idx)
        return True
    if kind == "attn_block":
        if not st.a[p] or sum(st.a) <= 1:
            return False
        st.a[p] = False
        return True
    if kind == "ffn_block":
        if not st.b[p]:
            return False
        st.b[p] = False
        return True
    if kind == "rank":
        layer_heads, hid = p
        st.H -= len(hid)
        for l, _ in layer_heads:
            st.h[l] -= 1
        return True
    if kind == "ffn_rank":
        for l, _ in p:
            st.f[l] -= 1
        return True
    if kind == "layer":
        if not (st.a[p] or st.b[p]) or sum(1 for a, b in zip(st.a, st.b) if a or b) <= 1:
            return False
        st.a[p] = st.b[p] = False
        return True
    raise ValueError(kind)


def make_plan(shape: ModelShape, reference: ModelShape, scores: dict[str, Any], kind: str, target: float,
              seq_len: int = 128, layout: str = "per_layer", round_to: int = 8,
              size_fraction: Callable[[ModelShape], float] | None = None) -> PruningPlan:
    """Plan meeting `target` (fraction of `reference`); raises CompressionError when the enabled
    structures cannot get there. target <= 0 gives the smallest reachable model. `size_fraction`
    replaces the analytic params/flops fraction (latency.py: predicted time / dense time)."""
    if layout == "uniform" and not shape.is_uniform():
        raise CompressionError("options.layout", "uniform layout needs a model with the same heads and FFN width "
                               "in every layer and whole layers only; this model is per-layer pruned")
    # Which block kinds a plan may remove when their last head / FFN group goes (per_layer);
    # the matching block mask must exist for the hard-masked forward to skip the block.
    blocks = {kind for kind, key in (("attn", "attn_block"), ("ffn", "ffn_block")) if scores.get(key) is not None}
    live = _live(shape, scores)
    units = sorted(_units(shape, live, scores, layout, round_to, blocks), key=lambda u: u[0])
    st = _State(len(live["hidden"]), [len(h) for h in live["heads"]], [len(f) for f in live["ffn"]],
                live["attn"], live["ffnb"])
    if size_fraction is not None:
        frac = lambda s: size_fraction(s.shape(shape))  # noqa: E731
    else:
        dense = shape_size(reference, kind, seq_len)
        frac = lambda s: shape_size(s.shape(shape), kind, seq_len) / dense  # noqa: E731
    removed: list = []
    i = 0
    while i < len(units) and frac(st) > target:
        trial = st.copy()
        if _apply(trial, units[i], layout, blocks, round_to):
            if frac(trial) < target - CLOSE_TOL and target > 0:
                st, removed = _closer(st, removed, trial, units, i, frac, target, layout, blocks, round_to)
                break
            st = trial
            removed.append(units[i])
        i += 1
    if target > 0 and frac(st) > target + 1e-12:
        raise CompressionError("budget.target", f"{kind} target {target:.3f} cannot be reached with the enabled "
                               f"structures and layout {layout!r}: the reachable minimum is {frac(st):.3f}")
    return _build(shape, reference, live, removed, st, layout)


def _closer(st, removed, trial, units, i, frac, target, layout, blocks, round_to):
    """Unit i overshoots the target by more than CLOSE_TOL: walk the following units, taking
    those that keep the fraction above target, and return whichever state lands closest below
    the target (unit i itself if nothing beats it)."""
    best, best_removed = trial, removed + [units[i]]
    alt, alt_removed = st.copy(), list(removed)
    for u in units[i + 1:]:
        t2 = alt.copy()
        if not _apply(t2, u, layout, blocks, round_to):
            continue
        f2 = frac(t2)
        if f2 <= target:
            if f2 > frac(best):
                best, best_removed = t2, alt_removed + [u]
            if f2 >= target - CLOSE_TOL:
                break
        else:
            alt, alt_removed = t2, alt_removed + [u]
    return best, best_removed


def _build(shape, reference, live, removed, st: _State, layout) -> PruningPlan:
    gone_hidden, gone_heads, gone_ffn = set(), set(), set()
    for _, kind, p in removed:
        if kind == "hidden":
            gone_hidden.update(p)
        elif kind == "head":
            gone_heads.add(p)
        elif kind == "ffn":
            gone_ffn.update((p[0], j) for j in p[1])
        elif kind == "rank":
            gone_heads.update(p[0])
            gone_hidden.update(p[1])
        elif kind == "ffn_rank":
            gone_ffn.update(p)
    L = shape.n_layers
    heads = [sorted(j for j, _ in live["heads"][l] if (l, j) not in gone_heads) if st.a[l] else [] for l in range(L)]
    ffn = [sorted(j for j, _ in live["ffn"][l] if (l, j) not in gone_ffn) if st.b[l] else [] for l in range(L)]
    return PruningPlan(hidden=sorted(i for i, _ in live["hidden"] if i not in gone_hidden), heads=heads, ffn=ffn,
                       attn_blocks=list(st.a), ffn_blocks=list(st.b), shape=shape, reference=reference,
                       layout=layout)


def neutral_scores(shape: ModelShape, structures: Iterable[str], layout: str) -> dict[str, Any]:
    """All-zero scores over the entries a model of `shape` has (None for absent entries)."""
    L, out = shape.n_layers, {}
    for key in mask_keys(structures, layout):
        if key == "hidden":
            out[key] = [0.0] * shape.hidden
        elif key in ("heads", "ffn"):
            sizes = shape.heads if key == "heads" else shape.ffn
            width = max(max(sizes), 1)
            out[key] = [[0.0 if j < n else None for j in range(width)] for n in sizes]
        else:
            alive = {"attn_block": shape.attn_blocks, "ffn_block": shape.ffn_blocks,
                     "layer": [a or b for a, b in zip(shape.attn_blocks, shape.ffn_blocks)]}[key]
            out[key] = [0.0 if a else None for a in alive]
    return out


def min_fraction(config_or_shape: Any, kind: str, seq_len: int = 128, structures: Iterable[str] = STRUCTURES,
                 layout: str = "per_layer", round_to: int = 8, reference: ModelShape | None = None) -> float:
    """Smallest fraction of the dense model reachable with these structures and layout, from a
    config (HF config or config.json dict), a model or a ModelShape: no weights needed."""
    from .flops import _shape_of

    shape = _shape_of(config_or_shape)
    if reference is None:
        saved = config_or_shape.get("vtrans_reference") if isinstance(config_or_shape, dict) else \
            getattr(getattr(config_or_shape, "config", config_or_shape), "vtrans_reference", None)
        reference = ModelShape.from_dict(dict(saved)) if saved else shape
    scores = neutral_scores(shape, structures, layout)
    return make_plan(shape, reference, scores, kind, 0.0, seq_len, layout, round_to).fraction(kind, seq_len)

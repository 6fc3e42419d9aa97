"""The planner: `make_plan` turns per-entry log alpha scores into a plan that meets a budget (analytic
fraction <= target) as closely as it can, removing the least informative units first:
- per_layer units: a group of `round_to` hidden channels (one hidden mask for the whole model),
  one head of one layer, a group of `round_to` FFN neurons of one layer, a whole attention
  block, a whole FFN block. Groups are consecutive in log-alpha order (the first group takes
  the remainder) so kept widths stay multiples of round_to. Removing a layer's last head / last
  FFN group removes the block (only when block pruning is on; else 1 head / round_to neurons
  stay). At least one attention block always remains.
- grouped-query attention (shape.kv_heads set, decoders): per_layer head units are a whole
  key/value GROUP of a layer (its k/v head and all its query heads, scored by their mean) and a
  "query rank" of a layer (the least informative remaining query head of EVERY kept group, so
  each k/v head keeps serving the same number of query heads, as repeat_kv requires). Multi-head
  attention is the special case of groups of one (the per-head units above).
- uniform units (a stock config must be able to express the result): a "head rank" removes the
  k-th least informative head of EVERY layer together with the head_dim least informative
  hidden channels (hidden width is tied to heads: H = h * head_dim, so prune_hidden and
  prune_heads act together), scored by the mean of the heads' mean and the channels' mean log
  alpha; an FFN rank group removes round_to neurons at the same rank positions in every layer;
  a layer unit removes a whole layer (attention and FFN blocks are tied). At least 1 head,
  round_to FFN neurons and 1 layer remain. Families whose config carries head_dim
  (shape.attn_width_tied False: the LLaMA family) do not tie hidden to heads: hidden goes in
  groups of round_to channels as in per_layer, and heads by uniform group ranks (the k-th least
  informative k/v group of every layer) and uniform query ranks (one query head of every group
  of every layer).
Greedy: units sorted by score (units below alpha = 1 naturally come first); remove until the
fraction is <= target. If the last removal overshoots by more than CLOSE_TOL, it is undone and
the following (smaller) units are tried instead; the overshooting unit is used only if they
cannot reach the target. A plan still more than CLOSE_TOL below the target then gets fine units
back (planner_refill.py).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from .errors import CompressionError
from .flops import ModelShape, shape_size
from .plan import STRUCTURES, PruningPlan, mask_keys
from .planner_gqa import gqa_removed_heads as _gqa_removed_heads
from .planner_gqa import query_rank_scores as _query_rank_scores
from .planner_gqa import uniform_head_units as _uniform_head_units
from .planner_refill import CLOSE_TOL
from .planner_refill import refill as _refill



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
    groups = None
    if shape.kv_heads is not None:   # GQA: live query heads by k/v group, the same count in each
        groups = []
        for l in range(L):
            r, by = shape.group_size(l), {}
            for j, sc in heads[l]:
                by.setdefault(j // r, []).append((j, sc))
            if len({len(v) for v in by.values()}) > 1:
                raise ValueError(f"layer {l}: key/value groups keep different numbers of query heads")
            groups.append(by)
    return {"hidden": hidden, "heads": heads, "ffn": ffn, "attn": attn, "ffnb": ffnb, "groups": groups}


class _State:
    def __init__(self, H, h, f, a, b, kv=None):
        self.H, self.h, self.f, self.a, self.b = H, list(h), list(f), list(a), list(b)
        self.kv = list(kv) if kv is not None else None    # k/v heads per layer (GQA only)

    def copy(self):
        return _State(self.H, self.h, self.f, self.a, self.b, self.kv)

    def shape(self, base: ModelShape) -> ModelShape:
        kv = None if self.kv is None else [k if a else 0 for k, a in zip(self.kv, self.a)]
        return base.replace(hidden=self.H, heads=[h if a else 0 for h, a in zip(self.h, self.a)],
                            ffn=[f if b else 0 for f, b in zip(self.f, self.b)],
                            attn_blocks=list(self.a), ffn_blocks=list(self.b), kv_heads=kv)

    def drop_group(self, l: int) -> None:
        r = self.h[l] // self.kv[l]
        self.kv[l] -= 1
        self.h[l] -= r

    def query_rank_ok(self, l: int) -> bool:
        return self.a[l] and self.h[l] // self.kv[l] > 1


def _units(shape: ModelShape, live: dict, scores: dict, layout: str, round_to: int, blocks: set) -> list:
    """(score, kind, payload) for every removable unit."""
    L, units = shape.n_layers, []
    if layout == "per_layer":
        if "hidden" in scores:
            for g in _groups(live["hidden"], round_to):
                units.append((_mean([s for _, s in g]), "hidden", [i for i, _ in g]))
        if "heads" in scores and live["groups"] is None:
            for l in range(L):
                for j, s in live["heads"][l]:
                    units.append((s, "head", (l, j)))
        elif "heads" in scores:
            for l in range(L):
                for g, hs in live["groups"][l].items():
                    units.append((_mean([s for _, s in hs]), "group", (l, g)))
                units += [(sc, "qrank", l) for sc in _query_rank_scores([live["groups"][l]])]
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
    if not shape.attn_width_tied:   # hidden and heads apart (module docstring)
        if "hidden" in scores:
            for g in _groups(live["hidden"], round_to):
                units.append((_mean([s for _, s in g]), "hidden", [i for i, _ in g]))
        if "heads" in scores and alive_layers:
            units += _uniform_head_units(shape, live, alive_layers)
    elif ("heads" in scores or "hidden" in scores) and alive_layers:
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
    if kind == "group":
        l, _ = p
        if not st.a[l]:
            return False
        if st.kv[l] == 1:   # the last group: the block goes (when allowed)
            if "attn" not in blocks or sum(st.a) <= 1:
                return False
            st.a[l] = False
        st.drop_group(l)
        return True
    if kind == "qrank":
        if not st.query_rank_ok(p):
            return False
        st.h[p] -= st.kv[p]
        return True
    if kind == "urank":
        for l, _ in p:
            st.drop_group(l)
        return True
    if kind == "uqrank":
        alive = [l for l in range(len(st.h)) if st.a[l]]
        if not all(st.query_rank_ok(l) for l in alive):
            return False
        for l in alive:
            st.h[l] -= st.kv[l]
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
    kv = None if live["groups"] is None else [len(g) for g in live["groups"]]
    st = _State(len(live["hidden"]), [len(h) for h in live["heads"]], [len(f) for f in live["ffn"]],
                live["attn"], live["ffnb"], kv)
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
    if target > 0 and frac(st) < target - CLOSE_TOL:
        st, removed = _refill(st, removed, frac, target)
    if layout == "uniform" and shape.hidden_divisible_by_heads:
        st, removed = _divisible_hidden(st, removed, live, layout, blocks, round_to)
    if target > 0 and frac(st) > target + 1e-12:
        # with size_fraction the fractions are predicted time (a speedup budget), not `kind`
        what = f"{kind} target" if size_fraction is None else "predicted-time target (1 / speedup)"
        raise CompressionError("budget.target", f"{what} {target:.3f} cannot be reached with the enabled "
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
    if live["groups"] is not None:
        gone_heads |= _gqa_removed_heads(live, removed, L)
    else:   # untied multi-head attention: uniform group ranks are single heads
        gone_heads.update(x for _, kind, p in removed if kind == "urank" for x in p)
    heads = [sorted(j for j, _ in live["heads"][l] if (l, j) not in gone_heads) if st.a[l] else [] for l in range(L)]
    ffn = [sorted(j for j, _ in live["ffn"][l] if (l, j) not in gone_ffn) if st.b[l] else [] for l in range(L)]
    return PruningPlan(hidden=sorted(i for i, _ in live["hidden"] if i not in gone_hidden), heads=heads, ffn=ffn,
                       attn_blocks=list(st.a), ffn_blocks=list(st.b), shape=shape, reference=reference,
                       layout=layout)


def neutral_scores(shape: ModelShape, structures: Iterable[str], layout: str) -> dict[str, Any]:
    """All-zero scores over the entries a model of `shape` has (None for absent entries)."""
    out: dict[str, Any] = {}
    for key in mask_keys(structures, layout, shape.attn_width_tied):
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


def _divisible_hidden(st: _State, removed: list, live: dict, layout: str, blocks: set, round_to: int):
    """Families whose stock config needs hidden % heads == 0 (LlamaConfig): drop the least
    informative extra hidden channels (fewer than the kept heads) of a uniform plan."""
    heads = [h for h, a in zip(st.h, st.a) if a]
    extra = st.H % heads[0] if heads and heads[0] else 0
    if extra:
        gone = {i for _, k, p in removed if k in ("hidden", "rank") for i in (p if k == "hidden" else p[1])}
        rest = sorted((t for t in live["hidden"] if t[0] not in gone), key=lambda t: t[1])[:extra]
        unit = (0.0, "hidden", [i for i, _ in rest])
        _apply(st, unit, layout, blocks, round_to)
        removed = removed + [unit]
    return st, removed

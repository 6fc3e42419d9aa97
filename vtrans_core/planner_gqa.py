"""Grouped-query attention units of the planner (planner.py's module docstring): whole key/value
groups and "query ranks" (one query head of every kept group), so that every plan keeps the
same number of query heads per kept k/v head, as transformers' repeat_kv requires.
Multi-head attention is the special case of groups of one."""
from __future__ import annotations

from .flops import ModelShape


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def query_rank_scores(layer_groups: list[dict]) -> list[float]:
    """Score of the k-th query-rank step (k = 0 .. r-2): the mean of the k-th lowest score of
    every group in `layer_groups` (one dict {group: [(head, score)]} per layer)."""
    ranked = [sorted(s for _, s in hs) for by in layer_groups for hs in by.values()]
    if not ranked:
        return []
    r = min(len(x) for x in ranked)
    return [_mean([x[k] for x in ranked]) for k in range(r - 1)]


def uniform_head_units(shape: ModelShape, live: dict, alive_layers: list[int]) -> list:
    """Uniform GQA head units: the k-th least informative group of every layer ("urank"), and
    one query head of every group of every layer ("uqrank"). MHA is groups of one."""
    groups = live["groups"] or [{j: [(j, s)] for j, s in live["heads"][l]} for l in range(shape.n_layers)]
    per_layer = [sorted(groups[l].items(), key=lambda kv: _mean([s for _, s in kv[1]])) for l in alive_layers]
    n = min(len(p) for p in per_layer)
    units = []
    for k in range(n - 1):
        picks = [(l, p[k][0]) for l, p in zip(alive_layers, per_layer)]
        score = _mean([_mean([s for _, s in p[k][1]]) for p in per_layer])
        units.append((score, "urank", picks))
    if live["groups"] is not None:
        units += [(sc, "uqrank", None) for sc in query_rank_scores([groups[l] for l in alive_layers])]
    return units


def gqa_removed_heads(live: dict, removed: list, L: int) -> set:
    """(layer, head) pairs removed by group / query-rank units: whole groups first, then in each
    kept group the m least informative query heads, m = the layer's query-rank steps."""
    gone_groups, steps = set(), [0] * L
    for _, kind, p in removed:
        if kind == "group":
            gone_groups.add(p)
        elif kind == "urank":
            gone_groups.update(p)
        elif kind == "qrank":
            steps[p] += 1
        elif kind == "uqrank":
            steps = [s + 1 for s in steps]
    gone = set()
    for l in range(L):
        for g, hs in live["groups"][l].items():
            ranked = sorted(hs, key=lambda t: t[1])
            drop = ranked if (l, g) in gone_groups else ranked[:steps[l]]
            gone.update((l, j) for j, _ in drop)
    return gone

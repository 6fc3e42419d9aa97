"""Landing close to the budget: after the planner's greedy pass has had to remove a coarse unit
(a whole layer or block) that took the model more than CLOSE_TOL below the target, the most
informative fine units removed before it are given back while the fraction stays <= target.
Without it, faster at 0.3 FLOPs (uniform layout, FFN + layers) spent its FFN down to the minimum,
then lost two layers and landed at 0.252: 5% of the budget given away.

States and units are the planner's (_State, (score, kind, payload)); only the kinds below are
given back -- grouped-query units never are (their validity depends on every other group).
"""
from __future__ import annotations

CLOSE_TOL = 0.005


def _restore(st, unit) -> bool:
    """Give back a removed fine unit (the inverse of _apply); False when it cannot come back
    alone (its block or layer is gone, or it is a grouped-query unit, never given back)."""
    _, kind, p = unit
    if kind == "hidden":
        st.H += len(p)
    elif kind == "head" and st.a[p[0]]:
        st.h[p[0]] += 1
    elif kind == "ffn" and st.b[p[0]]:
        st.f[p[0]] += len(p[1])
    elif kind == "rank":
        st.H += len(p[1])
        for l, _ in p[0]:
            st.h[l] += 1
    elif kind == "ffn_rank":
        for l, _ in p:
            st.f[l] += 1
    else:
        return False
    return True


def refill(st, removed: list, frac, target: float):
    """Give back removed fine units, most informative first, while the fraction stays <= target."""
    for unit in sorted(removed, key=lambda u: -u[0]):
        trial = st.copy()
        if _restore(trial, unit) and frac(trial) <= target:
            st = trial
            removed = [u for u in removed if u is not unit]
            if frac(st) >= target - CLOSE_TOL:
                break
    return st, removed

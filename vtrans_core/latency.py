"""Measured latency per structure width, for budgets in speedup (ZipLM-style, Kurtic et al. 2023).

A `LatencyTable` holds, for one model shape and device, the time of one attention block with
h heads (h = 0..max) and of one FFN block of width f (a grid of widths), at batch x seq tokens
(32 x 128, the benchmark's latency setting), for a few hidden widths when the hidden dimension
may be pruned. A shape's predicted time is

    base + sum over layers of attn(H, h_l) + ffn(H, f_l)

(linear interpolation between measured widths), where `base` (embeddings, pooler, classifier,
framework overhead) is calibrated once against a timed forward of the real dense model so the
prediction of the dense model equals its measured time. The planner removes units until the
predicted time is <= dense / target speedup. Tables are cached as JSON per shape + device +
torch version (`table_path`), so they are measured once; the delivered model is timed again by
the pipeline and its measured speedup is reported next to the target.

Measurement is injectable (`measure(kind, hidden, width) -> ms`) so tests run on a fake timer.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

BATCH, SEQ = 32, 128
RUNS = 5                                # timed forwards of the dense model (calibration)
PASSES = 3                              # sweeps over the table's entries (measure_table)
ENTRY_RUNS = 3                          # timed forwards of an entry per sweep (after one warm-up)
HIDDEN_GRID = (1.0, 0.75, 0.5, 0.25)   # hidden widths measured (share of the dense width) when hidden is pruned
FFN_STEPS = 16                          # FFN widths measured: 0 and max * k / FFN_STEPS

TABLE_VERSION = 2                       # 2: sweeps + monotone rows (tables cached before are measured again)

Measure = Callable[[str, int, int], float]


def cache_dir() -> Path:
    return Path(os.environ.get("VTRANS_CACHE_DIR", Path.home() / ".cache" / "vtrans")) / "latency"


@dataclass
class LatencyTable:
    key: str
    head_dim: int
    attn: dict = field(default_factory=dict)    # str(hidden) -> [ms for h = 0..max_heads]
    ffn: dict = field(default_factory=dict)     # str(hidden) -> {str(width): ms}
    base_ms: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "LatencyTable":
        return cls(**json.loads(text))

    def _at_hidden(self, hidden: int, fn: Callable[[str], float]) -> float:
        """Interpolate fn over the measured hidden widths (linear; flat beyond the ends)."""
        widths = sorted(int(h) for h in self.attn)
        if hidden <= widths[0]:
            return fn(str(widths[0])) * hidden / widths[0]
        for lo, hi in zip(widths, widths[1:]):
            if hidden <= hi:
                w = (hidden - lo) / (hi - lo)
                return (1 - w) * fn(str(lo)) + w * fn(str(hi))
        return fn(str(widths[-1]))

    def attn_ms(self, hidden: int, heads: int) -> float:
        return self._at_hidden(hidden, lambda h: self.attn[h][min(heads, len(self.attn[h]) - 1)])

    def ffn_ms(self, hidden: int, width: int) -> float:
        def at(h: str) -> float:
            pts = sorted((int(k), v) for k, v in self.ffn[h].items())
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                if width <= x1:
                    return y0 + (y1 - y0) * (width - x0) / (x1 - x0)
            return pts[-1][1]
        return self._at_hidden(hidden, at)

    def blocks_ms(self, shape) -> float:
        total = 0.0
        for l in range(shape.n_layers):
            if shape.attn_blocks[l] and shape.heads[l]:
                total += self.attn_ms(shape.hidden, shape.heads[l])
            if shape.ffn_blocks[l] and shape.ffn[l]:
                total += self.ffn_ms(shape.hidden, shape.ffn[l])
        return total

    def predict_ms(self, shape) -> float:
        return self.base_ms + self.blocks_ms(shape)


def table_key(shape, device: str, hidden_pruned: bool) -> str:
    import torch

    desc = {"family": shape.family, "hidden": shape.hidden, "head_dim": shape.head_dim, "heads": max(shape.heads),
            "ffn": max(shape.ffn), "device": device, "torch": torch.__version__, "batch": BATCH, "seq": SEQ,
            "hidden_grid": hidden_pruned, "threads": torch.get_num_threads(), "table_version": TABLE_VERSION}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def measure_table(shape, measure: Measure, hidden_pruned: bool, round_to: int = 8, passes: int = PASSES) -> LatencyTable:
    """Time every structure width (`measure` returns milliseconds): `passes` sweeps over the whole
    grid, the median per entry. Sweeping (rather than timing each entry `passes` times in a row)
    spreads an entry's timings over the whole measurement, so a burst of other work on the
    machine spoils one sweep of a few entries, not every timing of them: one row measured while
    another process ran came out 2-14x too slow and the planner cut a 3x target to 3% of the
    FLOPs (benchmarks/README.md, session 25)."""
    H, max_h, max_f = shape.hidden, max(shape.heads), max(shape.ffn)
    grid = sorted({max(round_to, int(round(H * s / round_to)) * round_to) for s in HIDDEN_GRID}) if hidden_pruned else [H]
    table = LatencyTable(key="", head_dim=shape.head_dim)
    widths = sorted({0, max_f} | {int(round(max_f * k / FFN_STEPS / round_to)) * round_to for k in range(1, FFN_STEPS)})
    entries = [(kind, h, w) for h in grid for kind, ws in (("attn", range(1, max_h + 1)), ("ffn", widths))
               for w in ws if w]
    timings: dict[tuple, list[float]] = {e: [] for e in entries}
    for _ in range(max(1, passes)):
        for e in entries:
            timings[e].append(measure(*e))
    ms = {e: statistics.median(t) for e, t in timings.items()}
    for h in grid:
        table.attn[str(h)] = monotone([0.0] + [ms[("attn", h, n)] for n in range(1, max_h + 1)])
        table.ffn[str(h)] = dict(zip(map(str, widths), monotone([ms[("ffn", h, w)] if w else 0.0 for w in widths])))
    return table


def monotone(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence (least squares, pool-adjacent-violators).

    A block never gets faster by growing, but single timings on a busy CPU do: one slow run of a
    wide block, or a fast one of a narrow block, made the planner buy too little or too much
    speed (a table measured while another process ran delivered 2.76x for a 2x target). Pooling
    the violators averages such a spike with its neighbours instead of trusting it."""
    blocks: list[list] = []   # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(n)]


def torch_measure(head_dim: int, device, runs: int = ENTRY_RUNS) -> Measure:
    """Real timer: a standalone attention block (q, k, v, SDPA, o, LayerNorm) or FFN block (in,
    GELU, out, LayerNorm) of the given widths on random [BATCH, SEQ, hidden] inputs, median ms."""
    import torch
    from torch import nn

    from .precision import float32_section

    def build(kind: str, hidden: int, width: int):
        if kind == "ffn":
            lin1, lin2, ln = nn.Linear(hidden, width), nn.Linear(width, hidden), nn.LayerNorm(hidden)
            return lambda x: ln(lin2(torch.nn.functional.gelu(lin1(x))) + x), (lin1, lin2, ln)
        A = width * head_dim
        q, k, v, o, ln = nn.Linear(hidden, A), nn.Linear(hidden, A), nn.Linear(hidden, A), nn.Linear(A, hidden), \
            nn.LayerNorm(hidden)

        def fwd(x):
            B, T, _ = x.shape
            split = lambda t: t.view(B, T, width, head_dim).transpose(1, 2)  # noqa: E731
            a = torch.nn.functional.scaled_dot_product_attention(split(q(x)), split(k(x)), split(v(x)))
            return ln(o(a.transpose(1, 2).reshape(B, T, A)) + x)
        return fwd, (q, k, v, o, ln)

    @torch.no_grad()
    def measure(kind: str, hidden: int, width: int) -> float:
        with float32_section(device):   # a served model runs float32, whatever the caller's autocast
            return _median_ms(kind, hidden, width)

    def _median_ms(kind: str, hidden: int, width: int) -> float:
        fwd, mods = build(kind, hidden, width)
        for m in mods:
            m.to(device)
        x = torch.randn(BATCH, SEQ, hidden, device=device)
        fwd(x)   # warm-up
        times = []
        for _ in range(runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fwd(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    return measure


def latency_table(model, device, hidden_pruned: bool, round_to: int = 8, measure: Measure | None = None,
                  dense_ms: Callable[[], float] | None = None, directory: Path | None = None) -> LatencyTable:
    """The cached table of this model's shape on `device`, measured (and calibrated) when missing."""
    from .evaluate import measure_latency_ms
    from .families import adapter_for

    shape = adapter_for(model).shape_of(model)
    key = table_key(shape, str(device), hidden_pruned)
    path = (directory or cache_dir()) / f"{key}.json"
    if path.is_file():
        try:
            return LatencyTable.from_json(path.read_text())
        except (ValueError, TypeError, KeyError):
            pass   # a damaged cache entry is measured again
    time_dense = dense_ms if dense_ms is not None else (lambda: measure_latency_ms([model], device, RUNS)[0])
    before = time_dense()
    table = measure_table(shape, measure or torch_measure(shape.head_dim, device), hidden_pruned, round_to)
    table.key = key
    # Timed before and after the sweeps, the faster kept: other work only ever adds time, and a
    # dense time too slow would make `base` (and every prediction) too slow with it.
    measured = min(before, time_dense())
    table.base_ms = max(0.0, measured - table.blocks_ms(shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(table.to_json())
    tmp.replace(path)
    return table


def latency_fraction(table: LatencyTable, reference) -> Callable:
    """size function for plan.make_plan: predicted time of a shape / predicted time of the reference."""
    dense = table.predict_ms(reference)
    return lambda shape: table.predict_ms(shape) / dense

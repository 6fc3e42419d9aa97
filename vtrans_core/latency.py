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
RUNS = 5
HIDDEN_GRID = (1.0, 0.75, 0.5, 0.25)   # hidden widths measured (share of the dense width) when hidden is pruned
FFN_STEPS = 16                          # FFN widths measured: 0 and max * k / FFN_STEPS

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
            "hidden_grid": hidden_pruned, "threads": torch.get_num_threads()}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def measure_table(shape, measure: Measure, hidden_pruned: bool, round_to: int = 8) -> LatencyTable:
    """Time every structure width once (`measure` returns milliseconds)."""
    H, max_h, max_f = shape.hidden, max(shape.heads), max(shape.ffn)
    grid = sorted({max(round_to, int(round(H * s / round_to)) * round_to) for s in HIDDEN_GRID}) if hidden_pruned else [H]
    table = LatencyTable(key="", head_dim=shape.head_dim)
    widths = sorted({0, max_f} | {int(round(max_f * k / FFN_STEPS / round_to)) * round_to for k in range(1, FFN_STEPS)})
    for h in grid:
        table.attn[str(h)] = [0.0] + [measure("attn", h, n) for n in range(1, max_h + 1)]
        table.ffn[str(h)] = {str(w): (measure("ffn", h, w) if w else 0.0) for w in widths}
    return table


def torch_measure(head_dim: int, device, runs: int = RUNS) -> Measure:
    """Real timer: a standalone attention block (q, k, v, SDPA, o, LayerNorm) or FFN block (in,
    GELU, out, LayerNorm) of the given widths on random [BATCH, SEQ, hidden] inputs, median ms."""
    import torch
    from torch import nn

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
    table = measure_table(shape, measure or torch_measure(shape.head_dim, device), hidden_pruned, round_to)
    table.key = key
    measured = dense_ms() if dense_ms is not None else measure_latency_ms([model], device, RUNS)[0]
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

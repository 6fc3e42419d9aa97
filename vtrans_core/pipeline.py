"""The work behind compress(): load -> (teacher) -> method -> evaluate -> save, with metrics.

Called by compress.py only after every cheap input check passed; writes into `out_dir`, a
temporary directory that compress() renames into place when this returns.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


from .budget import BUDGET_TOLERANCE, Budget
from .entry import dense_copy, head_matches, load_classifier, load_tokenizer, structures_of
from .data import encode, load_task, with_eval_data
from .evaluate import evaluate, evaluation_warnings, measure_latency_ms, quality_warnings, text_overlap
from .families import adapter_for
from .flops import count_flops, count_params
from .methods import Context, get_method, method_rows_for
from .options import CompressionOptions
from . import precision
from .progress import Progress
from .schedule import default_finetune_epochs
from .training import Teacher, epoch_steps, pick_device, seed_everything, train_supervised

TEACHER_STEP_COST = 1.0
EVAL_BATCH = 64


def _eval_cost(n_eval: int, opts: CompressionOptions) -> float:
    # two models evaluated; a latency forward at 32 x 128 costs ~4 tweet batches, forward ~1/3 step
    return 2 * (n_eval / EVAL_BATCH) * 0.6 + 2 * (opts.latency_runs + 1) * 1.5


TRAIN_CHECK_ROWS = 1000   # training rows the dense model is scored on (the memorisation check)


def run_pipeline(kind, source, config, data, budget: Budget, method: str, opts: CompressionOptions,
                 out_dir: Path, callback, eval_data=None, export: list[str] | None = None, session=None):
    """`session`: resume.Session (checkpoints; None: none are saved or read)."""
    if config is None and kind == "hub":   # a hub model's config is known only now
        from transformers import AutoConfig

        from .entry import _check_config
        from .entry import _hub_error
        try:
            config = AutoConfig.from_pretrained(source).to_dict()
        except Exception as err:
            raise _hub_error(str(source), err) from None
        _check_config(config, budget, opts, data)
    from .tasks import choose_task

    task_obj = choose_task(config, data, opts.task)
    if task_obj.name != "sequence-classification":   # a task that is its own teacher (language modelling)
        from .pipeline_lm import run_lm_pipeline

        return run_lm_pipeline(task_obj, kind, source, config, data, budget, method, opts, out_dir, callback,
                               eval_data=eval_data, export=export, session=session)
    started = time.perf_counter()
    strategy = get_method(method)
    progress = Progress(callback, {"load": 5.0, "teacher": 1e-6, "masks#1": 50.0, "finetune": 20.0,
                                   "evaluate": 10.0, "save": 2.0},
                        floor=session.fraction if session is not None else 0.0)   # a resumed run reports on from there
    progress.start("load")
    seed_everything(opts.seed)
    device = pick_device(opts.device)
    if opts.recovery == "auto":   # an encoder's full-weight training fits wherever it loads (recovery.py)
        opts.recovery = "full"
    if opts.activation_checkpointing == "auto":   # likewise its activations (checkpointing.py)
        opts.activation_checkpointing = "off"
    task = load_task(data)
    if eval_data is not None:
        task = with_eval_data(task, eval_data)
    tokenizer = load_tokenizer(kind, source)
    order = head_matches(config, task.label_names)
    if order is not None:
        task = task.reorder_labels(order)
    model = load_classifier(kind, source, task.label_names, keep_head=order is not None)
    adapter_for(model)  # refuses unsupported architectures before any training
    if kind != "object":
        model.config.name_or_path = str(source)

    train_split = task.train.sample(opts.max_train_examples, seed=opts.seed) if opts.max_train_examples else task.train
    eval_split = task.eval_split
    if opts.max_eval_examples and len(eval_split) > opts.max_eval_examples:
        eval_split = eval_split.subset(list(range(opts.max_eval_examples)))   # the split is already shuffled
    method_rows = method_rows_for(strategy, train_split, opts)
    enc_train = encode(tokenizer, method_rows, opts.seq_len)
    enc_eval = encode(tokenizer, eval_split, opts.seq_len)
    enc_check = encode(tokenizer, train_split.sample(TRAIN_CHECK_ROWS, seed=opts.seed), opts.seq_len)

    amp_dtype, amp_why = precision.resolve(opts.mixed_precision, device, next(model.parameters()).dtype, "sequence-classification")
    if opts.finetune_epochs is None:   # the schedule (and the progress plan below) follows the precision
        opts.finetune_epochs = default_finetune_epochs(amp_dtype)
    teacher_steps = 0 if order is not None else epoch_steps(len(train_split), opts.batch_size, opts.teacher_epochs)
    plan = {"teacher": teacher_steps * TEACHER_STEP_COST, **strategy.stage_plan(len(method_rows), opts),
            "evaluate": _eval_cost(len(eval_split), opts), "save": 2.0,
            # tracing + checking costs roughly a few dozen forwards of the model
            **({"export": 10.0 + 2 * opts.latency_runs} if export else {})}
    for key in ("teacher", "finetune"):
        plan.setdefault(key, 1e-6)
    progress.plan = {"load": progress.plan["load"], **plan}
    progress.total = sum(progress.plan.values())
    progress.update(1, 1, examples=len(train_split))

    model.to(device)
    teacher_info = {"fine_tuned": False, "epochs": 0, "accuracy": None}
    if session is not None:
        session.progress = progress
        _check_rows(session, len(enc_train))
    if session is not None and "dense" in session.carry:   # the teacher stage was done by an earlier attempt
        from .checkpoint import load_module

        load_module(model, session.carry["dense"], "the teacher's weights")
        teacher_info = dict(session.carry_state["teacher_info"])
        keys = list(progress.plan)
        progress.skip_to(keys[keys.index("teacher") + 1])
        if session.resumes_at("teacher"):
            session.restore_rng(session.loaded)
    elif order is None:
        # No head for these labels: fine-tune a dense teacher first (issue #2, item 8).
        progress.start("teacher")
        enc_teacher = encode(tokenizer, train_split, opts.seq_len)
        with precision.autocast(amp_dtype, device):
            train_supervised(model, enc_teacher, teacher_steps, opts.teacher_lr, opts.batch_size, device, opts.seed,
                             progress.update)
        enc_val = encode(tokenizer, task.validation, opts.seq_len)
        val = evaluate(model, enc_val, task.num_labels, EVAL_BATCH, device)
        teacher_info = {"fine_tuned": True, "epochs": opts.teacher_epochs, "steps": teacher_steps,
                        "accuracy": val["accuracy"], "split": "validation", "train_rows": len(train_split)}

    dense = dense_copy(model)
    if session is not None and teacher_info["fine_tuned"] and "dense" not in session.carry:
        # every later checkpoint repeats the teacher's weights (the frozen copy: never trained further)
        session.carry["dense"] = dense.state_dict()
        session.carry_state["teacher_info"] = teacher_info
        session.save("teacher", teacher_steps, {}, {})
    ctx = Context(model=model, dense=dense, teacher=Teacher(dense, len(enc_train)), enc_train=enc_train,
                  options=opts, budget=budget, device=device, progress=progress, structures=structures_of(opts),
                  checkpoint=session)
    ctx.info["mixed_precision"] = amp_why
    with precision.autocast(amp_dtype, device):
        pruned, final_plan = strategy.run(ctx)
    pruned.eval()

    progress.start("evaluate")
    n_eval_batches = max(1, (len(enc_eval) + EVAL_BATCH - 1) // EVAL_BATCH)
    units = 2 * n_eval_batches + 2 * opts.latency_runs + (len(enc_check) + EVAL_BATCH - 1) // EVAL_BATCH
    tick = _Ticker(progress, units)
    dense_eval = evaluate(dense, enc_eval, task.num_labels, EVAL_BATCH, device, tick.tick)
    pruned_eval = evaluate(pruned, enc_eval, task.num_labels, EVAL_BATCH, device, tick.tick)
    dense_train_acc = evaluate(dense, enc_check, task.num_labels, EVAL_BATCH, device, tick.tick)["accuracy"]
    dense_ms, pruned_ms = measure_latency_ms([dense, pruned], device, opts.latency_runs, tick=tick.tick)
    if teacher_info["accuracy"] is None:
        teacher_info["accuracy"] = dense_eval["accuracy"]
    sizes = {"dense": {"params": count_params(dense), "flops": count_flops(dense, budget.seq_len)},
             "pruned": {"params": count_params(pruned), "flops": count_flops(pruned, budget.seq_len)}}
    fractions = {k: sizes["pruned"][k] / sizes["dense"][k] for k in ("params", "flops")}
    if budget.kind != "speedup" and fractions[budget.kind] > budget.target + BUDGET_TOLERANCE:   # planner's guarantee
        raise RuntimeError(f"internal error: delivered {budget.kind} fraction {fractions[budget.kind]:.4f} "
                           f"exceeds the target {budget.target}")

    if eval_data is not None:
        eval_name = "eval_data"
        evaluation = {"source": "eval_data", "rows": len(eval_split),
                      "note": "a separate evaluation data set; the job trained on every row of the training data"}
    else:
        eval_name = task.eval_split_name
        evaluation = {"source": "training data split", "rows": len(eval_split),
                      "note": f"the {eval_name} split carved from the training data (no eval_dataset given): a "
                              "model fine-tuned on the same data before this job has seen these rows"}

    progress.start("save")
    from .loading import save_pruned

    pruned.config.vtrans = {"method": method, "budget": budget.to_dict(), "layout": opts.layout}
    save_pruned(pruned, tokenizer, final_plan, out_dir, opts.layout)   # also writes plan.json
    metrics = {
        "method": method, "budget": budget.to_dict(), "layout": opts.layout, "family": model.config.model_type,
        "device": str(device), "teacher": teacher_info, "eval_split": eval_name,
        "evaluation": evaluation, "eval_examples": len(eval_split), "train_examples": len(method_rows),
        "labels": task.label_names,
        "dense": {**_acc(dense_eval), **sizes["dense"], "latency_ms": dense_ms,
                  "train_accuracy": dense_train_acc, "train_accuracy_rows": len(enc_check)},
        "pruned": {**_acc(pruned_eval), **sizes["pruned"], "latency_ms": pruned_ms},
        "params_fraction": round(fractions["params"], 5), "flops_fraction": round(fractions["flops"], 5),
        "speedup": round(dense_ms / pruned_ms, 3) if pruned_ms > 0 else None,
        # a speedup budget: the target next to what was delivered (measured above) and predicted
        **({"speedup_target": budget.target, "speedup_predicted": ctx.info.get("speedup_predicted")}
           if budget.kind == "speedup" else {}),
        "kept": final_plan.kept_summary(), "method_info": ctx.info,
        "warnings": quality_warnings(dense_eval, pruned_eval, enc_eval.labels, task.num_labels)
        + evaluation_warnings(eval_data is None, dense_eval["accuracy"], dense_train_acc,
                              text_overlap(train_split.texts, eval_split.texts)),
        "history": ctx.history, "options": opts.to_dict(),
        **({"checkpoint": session.info()} if session is not None else {}),
    }
    if export:
        from .export import export_onnx, held_out_batches

        progress.start("export")
        metrics["export"] = {"onnx": export_onnx(pruned, out_dir, held_out_batches(enc_eval), tick=progress.update,
                                                 latency_runs=opts.latency_runs)}
    write_metrics(metrics, progress, started, out_dir)
    return final_plan, metrics


def _check_rows(session, rows: int) -> None:
    """The checkpoint's training rows must be this run's (the fingerprint covers the inputs; this
    catches a change in how they are read)."""
    from .checkpoint import CheckpointInvalid

    if session.loaded is not None and session.carry_state.get("rows") != rows:
        raise CheckpointInvalid(f"it was made on {session.carry_state.get('rows')} training rows, this run has {rows}")
    session.carry_state["rows"] = rows


def write_metrics(metrics: dict, progress: Progress, started: float, out_dir: Path) -> None:
    """Close the last stage, add stage and total times, write metrics.json, report done."""
    progress._finish_current()
    metrics["stage_seconds"] = {k: round(v, 2) for k, v in progress.stage_seconds.items()}
    metrics["total_seconds"] = round(time.perf_counter() - started, 2)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    progress.finish(total_seconds=metrics["total_seconds"])


def _acc(m: dict) -> dict:
    out = {"accuracy": m["accuracy"]}
    if "f1" in m:
        out["f1"] = m["f1"]
    if "macro_f1" in m:
        out["macro_f1"] = m["macro_f1"]
    return out


class _Ticker:
    """One running count for the evaluate stage: every batch / timed forward is one unit."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.total, self.count = progress, total, 0

    def tick(self, _done: int, _total: int) -> None:
        self.count += 1
        self.progress.update(min(self.count, self.total), self.total)

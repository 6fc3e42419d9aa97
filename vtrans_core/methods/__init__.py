"""Compression methods (names as in the paper): registry, shared context and plan bookkeeping.

A method is a small strategy over the shared pieces (training.train_masks, the surgery's
plan_for/materialize, training.train_supervised): it picks its training rows, plans its own
stages for the progress bar, and runs masks -> prune -> refine (-> finetune).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..budget import Budget
from ..data import Split
from ..options import CompressionOptions


@dataclass
class Context:
    """Everything a method needs; built by the pipeline after loading and the teacher stage."""
    model: Any                 # the dense classifier, trainable (becomes the student)
    dense: Any                 # frozen dense copy: teacher for distillation and refine targets
    teacher: Any               # training.Teacher (cached logits of `dense`)
    enc_train: Any             # data.Encoded of the method's training rows
    options: CompressionOptions
    budget: Budget
    device: Any
    progress: Any              # progress.Progress
    structures: set[str]
    history: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)   # method-specific metrics
    task: Any = None           # tasks.Task: owns the loss (None: sequence classification's)
    checkpoint: Any = None     # resume.Session: saves at the method's boundaries (None: no checkpoints)

    @property
    def loss_fn(self):
        from ..training import classification_loss

        return self.task.loss if self.task is not None else classification_loss


class Origin:
    """Maps the current (possibly already sliced) model back to the dense model, so the plan
    saved with the result lists kept indices of the ORIGINAL model whatever the rounds did."""

    def __init__(self, reference):
        L = reference.n_layers
        self.reference = reference
        self.hidden = list(range(reference.hidden))
        self.heads = [list(range(reference.heads[l])) for l in range(L)]
        self.ffn = [list(range(reference.ffn[l])) for l in range(L)]
        self.attn = list(reference.attn_blocks)
        self.ffnb = list(reference.ffn_blocks)
        self.layers = list(range(L))     # current layer k -> dense layer

    def apply(self, plan) -> None:
        self.hidden = [self.hidden[i] for i in plan.hidden]
        for k, d in enumerate(self.layers):
            self.heads[d] = [self.heads[d][j] for j in plan.heads[k]] if plan.attn_blocks[k] else []
            self.ffn[d] = [self.ffn[d][j] for j in plan.ffn[k]] if plan.ffn_blocks[k] else []
            self.attn[d] = self.attn[d] and plan.attn_blocks[k]
            self.ffnb[d] = self.ffnb[d] and plan.ffn_blocks[k]

    def follow(self, n_layers_now: int, plan) -> None:
        """After materialize: drop the layers a uniform layout removed from the module list."""
        if n_layers_now != len(self.layers):
            self.layers = [d for k, d in enumerate(self.layers) if plan.attn_blocks[k] or plan.ffn_blocks[k]]

    def plan(self, layout: str, meta: dict):
        from ..plan import PruningPlan

        return PruningPlan(hidden=list(self.hidden), heads=[list(h) for h in self.heads], ffn=[list(f) for f in self.ffn],
                           attn_blocks=list(self.attn), ffn_blocks=list(self.ffnb), shape=self.reference,
                           reference=self.reference, layout=layout, meta=dict(meta))


class Method:
    name = "base"
    trains_weights = True

    def train_rows(self, train: Split, options: CompressionOptions) -> Split:
        return train

    def mask_steps(self, n_rows: int, options: CompressionOptions) -> int:
        from ..schedule import mask_steps_per_round

        return mask_steps_per_round(n_rows, options)

    def stage_plan(self, n_rows: int, options: CompressionOptions) -> dict[str, float]:
        """Stage keys -> expected cost (in units of one forward+backward batch)."""
        raise NotImplementedError

    def run(self, ctx: Context):
        """-> (final plain HF model, plan relative to the dense model)."""
        raise NotImplementedError


# Progress weight of one calibration batch of the refit: ~3 passes of the pruned model + 1 of the dense
RECONSTRUCT_BATCH_WEIGHT = 0.9


def refine_weight(n_rows: int, options: CompressionOptions) -> float:
    """Progress-plan weight of the "refine" stage (reconstruct_cut on up to calibration_rows rows)."""
    return min(n_rows, options.calibration_rows) / options.batch_size * RECONSTRUCT_BATCH_WEIGHT


def row_lengths(enc, n: int) -> list[int]:
    """Real tokens of `enc`'s first n rows: classification rows (data.Encoded) vary in length,
    a language model's packed windows are all seq_len long."""
    ids = getattr(enc, "input_ids", None)
    if ids is not None:
        return [len(row) for row in ids[:n]]
    return [int(enc.seq_len)] * min(n, len(enc))


def refit_rows(enc, options: CompressionOptions, max_tokens: int | None = None) -> int:
    """How many of `enc`'s first rows the refit uses: up to calibration_rows, stopping before the
    real tokens exceed `max_tokens` (default calibration_tokens; the least-squares statistics
    cost per token)."""
    max_tokens = options.calibration_tokens if max_tokens is None else max_tokens
    lengths = row_lengths(enc, options.calibration_rows)
    n, tokens = 0, 0
    for length in lengths:
        tokens += length
        if n and tokens > max_tokens:
            break
        n += 1
    return n


def reconstruct_cut(ctx: Context, model, plan, enc, mode: str, max_tokens: int | None = None) -> dict:
    """Least-squares refit of the sliced `model` against ctx.dense on the first refit_rows() rows
    of `enc` (reconstruct.py); `plan` holds indices of ctx.dense. Returns the summary for
    method_info["reconstruct"]."""
    from ..data import iterate_batches
    from ..reconstruct import reconstruct

    if mode == "off":
        return {"mode": "off", "applied": False, "reason": "reconstruct is off"}
    ctx.progress.start("refine")
    # length-sorted batches: ~40% less padding on tweets (reconstruct holds out every 5th batch);
    # head(): row numbers are kept, so the teacher's logit cache stays valid
    rows = refit_rows(enc, ctx.options, max_tokens)
    batches = list(iterate_batches(enc.head(rows), ctx.options.batch_size, ctx.device, shuffle=False))
    summary = reconstruct(model, ctx.dense, plan, batches, mode, tick=lambda d, t: ctx.progress.update(d, t))
    return {**summary, "tokens": sum(row_lengths(enc, rows))}


def teacher_tensors(ctx: Context) -> dict:
    """The teacher's cached logits for a checkpoint: recomputed in another batch they could
    differ in the last bits (padding), and a resumed run must see the same ones."""
    t = ctx.teacher
    return {"teacher": {"cache": t.cache, "known": t.known}} if getattr(t, "cacheable", False) else {}


def restore_teacher(ctx: Context, checkpoint) -> None:
    if getattr(ctx.teacher, "cacheable", False) and checkpoint.has("teacher"):
        saved = checkpoint.tensors("teacher")
        if saved["cache"].shape != ctx.teacher.cache.shape:
            from ..checkpoint import CheckpointInvalid

            raise CheckpointInvalid("the teacher's cached logits have another shape")
        ctx.teacher.cache.copy_(saved["cache"])
        ctx.teacher.known.copy_(saved["known"])


def method_rows_for(strategy: Method, rows, options: CompressionOptions):
    """The rows the method gets (classification rows or LM windows), in a seeded random order.
    Methods read prefixes of them (the Fisher rows, the mask subset, the refit's calibration rows):
    in the file's order, a training file sorted by label or date would give them one class or one
    period only (a file given next to an `eval_dataset` keeps its order), and packed LM windows
    would be the corpus's first pages."""
    return strategy.train_rows(rows, options).shuffled(options.seed)


def get_method(name: str) -> Method:
    from .fast import FastVTrans
    from .faster import FasterVTrans
    from .vtrans import VTrans

    registry = {"vtrans": VTrans, "fast": FastVTrans, "faster": FasterVTrans}
    return registry[name]()


__all__ = ["Context", "Method", "Origin", "get_method", "method_rows_for", "reconstruct_cut", "refine_weight", "refit_rows",
           "restore_teacher", "teacher_tensors"]

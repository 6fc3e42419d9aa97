"""Training schedules that scale with the data: how many steps each stage of a method runs.

One place for every step count a user does not set (issue #11, "defaults that fit the data
size"); an explicit option (`mask_steps`, `finetune_steps`) always wins.

Measured (benchmarks/README.md, MiniLM-L6 teachers fine-tuned on the very rows given to the
job, evaluated on rows neither saw):
- Recovery fine-tuning is what decides quality once the plan is good: the plan vtrans learns,
  applied to the teacher's original weights and distilled for two epochs of the training rows,
  was level with Torch-Pruning + two epochs of distillation, while vtrans's own trained-while-
  gated weights stayed points behind. So the fine-tuning stage gets `finetune_epochs` (default
  2) epochs, never fewer than `min_finetune_steps` (small data: a few hundred rows still need a
  few hundred updates to settle; the teacher's logits keep them from over-fitting).
- The mask rounds only have to rank units: 2 rounds of 20, 40 or 60 steps ranked alike on
  6,000 rows (sessions 9-10). A round gets a tenth of an epoch, clamped to
  [MIN, MAX]_MASK_STEPS, so a large data set does not spend hours ranking.
- The whole recipe costs what `finetune_epochs` of fine-tuning would: the mask rounds' cost,
  converted into fine-tuning steps of the pruned model (`mask_cost_in_finetune_steps`), is
  taken from the fine-tuning, so vtrans takes about as long as the plain prune-then-distil
  recipe it is compared with (issue #11: "the same compression wall time as the peer or less").
- A small file cannot hold that: when the default ranking leaves the fine-tuning under its floor
  (`is_small_file`), the ranking itself shrinks to SHORT_MASK_STEPS a round and a refit of
  SHORT_CALIBRATION_TOKENS, and the fine-tuning gets the floor. Held-out spam (3,000 rows, two
  epochs = 188 steps), side by side with the peer: rounds of 40 steps (308 s), a 131k-token
  refit (142 s) and the 150-step floor (544 s) took 1,000 s against the peer's 740 s.
- The epochs follow the precision (`default_finetune_epochs`): bfloat16 matmuls (precision.py)
  made a step about half as dear, which left vtrans at 0.4-0.75x the peer's two float32 epochs;
  a third epoch spends that time on recovery, where quality is decided (held-out tweets at 0.4
  FLOPs and spam at 0.5, the two budgets vtrans trailed the peer at: benchmarks/README.md,
  session 28). In float32 the recipe keeps two.
"""
from __future__ import annotations

import math

MIN_MASK_STEPS = 40
MAX_MASK_STEPS = 2000
MASK_EPOCHS_PER_ROUND = 0.1
MAX_FINETUNE_STEPS = 50_000
# The short ranking of a small file. Rounds of 20, 40 or 60 steps ranked alike on 6,000 tweets
# (sessions 9-10; `fast`, whose rounds then trained the weights too, lost 1.55 points with 20);
# 64k tokens is `faster`'s refit (spam at 0.5: 96.67 against 96.80 on all 247k tokens).
SHORT_MASK_STEPS = 20
SHORT_CALIBRATION_TOKENS = 64 * 1024


# Fine-tuning epochs when the user sets none: the recipe's cost stays about that of the peer's
# two float32 epochs (module docstring).
FLOAT32_FINETUNE_EPOCHS = 2.0
BFLOAT16_FINETUNE_EPOCHS = 3.0


def default_finetune_epochs(amp_dtype) -> float:
    """`finetune_epochs` for a job whose matmuls run in `amp_dtype` (None: float32)."""
    return FLOAT32_FINETUNE_EPOCHS if amp_dtype is None else BFLOAT16_FINETUNE_EPOCHS


def finetune_epochs_of(options) -> float:
    """The options' epochs; float32's where a caller outside a job left them unresolved."""
    return options.finetune_epochs if options.finetune_epochs is not None else FLOAT32_FINETUNE_EPOCHS


def epoch_steps(n_rows: int, batch_size: int, epochs: float = 1.0) -> int:
    return max(1, int(math.ceil(epochs * n_rows / batch_size)))


def mask_steps_per_round(n_rows: int, options) -> int:
    """Steps of one train-then-prune round (vtrans/fast)."""
    if options.mask_steps:
        return options.mask_steps
    steps = epoch_steps(n_rows, options.batch_size, MASK_EPOCHS_PER_ROUND)
    return int(min(MAX_MASK_STEPS, max(MIN_MASK_STEPS, steps)))


# One mask-round step in fine-tuning steps of a model kept at 0.5 FLOPs (MiniLM-L6, tweets, CPU,
# batch 32, measured side by side in the held-out benchmark, session 12): the dense-size model
# with gates, weights trained (1.3) or frozen (0.95: no weight gradients, no dropout). A
# fine-tuning step costs ~0.3 + 0.7 f of a dense one at FLOPs fraction f (the pruned matmuls
# plus what does not shrink: optimizer, the teacher's logits on first sight, data).
MASK_STEP_COST = {"trained": 1.3, "frozen": 0.95}


def _finetune_step(kept_fraction: float) -> float:
    return 0.3 + 0.7 * min(1.0, max(0.0, kept_fraction))


def mask_cost_in_finetune_steps(mask_steps: int, mask_weights: str, kept_fraction: float) -> int:
    """The cost of `mask_steps` mask-round steps, in fine-tuning steps of the pruned model."""
    return int(round(mask_steps * MASK_STEP_COST[mask_weights] * _finetune_step(0.5) / _finetune_step(kept_fraction)))


# One calibration batch of the least-squares refit (reconstruct.py: the dense model and ~3 passes
# of the pruned one, no gradients), in fine-tuning steps of a model kept at 0.5 FLOPs: measured
# 92 s for 64 batches against 4.8 s a fine-tuning step at 0.4 FLOPs (held-out tweets, session 13).
RECONSTRUCT_BATCH_COST = 0.3


def reconstruct_cost_in_finetune_steps(batches: int, kept_fraction: float) -> int:
    return int(round(batches * RECONSTRUCT_BATCH_COST * _finetune_step(0.5) / _finetune_step(kept_fraction)))


def is_small_file(n_rows: int, options, default_ranking_cost: int) -> bool:
    """Whether `finetune_epochs` of `n_rows` cannot hold the default ranking's cost (in fine-tuning
    steps, at 0.5 FLOPs kept: a property of the data and the options, not of the budget) plus
    `min_finetune_steps`. Explicit step counts are the user's schedule: never small then."""
    if options.mask_steps or options.finetune_steps is not None:
        return False
    total = epoch_steps(n_rows, options.batch_size, finetune_epochs_of(options))
    return total - default_ranking_cost < options.min_finetune_steps


def finetune_steps(n_rows: int, options, spent_steps: int = 0) -> int:
    """Distillation fine-tuning steps after the last cut (0 skips the stage): `finetune_epochs`
    of the rows minus `spent_steps`, what the mask rounds cost in fine-tuning steps."""
    if options.finetune_steps is not None:
        return options.finetune_steps
    steps = epoch_steps(n_rows, options.batch_size, finetune_epochs_of(options)) - spent_steps
    return int(min(MAX_FINETUNE_STEPS, max(options.min_finetune_steps, steps)))

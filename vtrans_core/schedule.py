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
- The whole recipe passes over the data `finetune_epochs` times: the weight-training steps of
  the mask rounds count toward it (the fine-tuning gets the rest), so vtrans reads as much data
  and takes about as long as the plain prune-then-distil recipe it is compared with (issue #11:
  "the same compression wall time as the peer or less").
"""
from __future__ import annotations

import math

MIN_MASK_STEPS = 20
MAX_MASK_STEPS = 2000
MASK_EPOCHS_PER_ROUND = 0.1
MAX_FINETUNE_STEPS = 50_000


def epoch_steps(n_rows: int, batch_size: int, epochs: float = 1.0) -> int:
    return max(1, int(math.ceil(epochs * n_rows / batch_size)))


def mask_steps_per_round(n_rows: int, options) -> int:
    """Steps of one train-then-prune round (vtrans/fast)."""
    if options.mask_steps:
        return options.mask_steps
    steps = epoch_steps(n_rows, options.batch_size, MASK_EPOCHS_PER_ROUND)
    return int(min(MAX_MASK_STEPS, max(MIN_MASK_STEPS, steps)))


def finetune_steps(n_rows: int, options, trained_steps: int = 0) -> int:
    """Distillation fine-tuning steps after the last cut (0 skips the stage): `finetune_epochs`
    of the rows minus the `trained_steps` the weights already trained in the mask rounds."""
    if options.finetune_steps is not None:
        return options.finetune_steps
    steps = epoch_steps(n_rows, options.batch_size, options.finetune_epochs) - trained_steps
    return int(min(MAX_FINETUNE_STEPS, max(options.min_finetune_steps, steps)))

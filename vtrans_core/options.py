"""Every knob of a compression, with its default, in one place.

Defaults follow the benchmarks (benchmarks/README.md: MiniLM-L6 teachers on tweets and on
SpamAssassin emails, evaluated on held-out rows; 2-core CPU). Two rounds of mask training with
the weights frozen rank the units (`prune_rounds` 2, `mask_weights` "frozen"); the learned plan
then slices the dense model's original weights (`finetune_from` "dense"), which are distilled
for `finetune_epochs` 2, less what the rounds cost (schedule.py), at a constant rate
(`finetune_schedule` "constant") from the teacher's logits only: on held-out tweets at 0.5
FLOPs that recipe lost 0.2 points where the session-8 recipe (warmup/decay, hidden-state
distillation, fine-tuning the weights the rounds trained) lost 0.9 on the same plan. Step counts
scale with the data (schedule.py). `faster` ranks by Fisher information by default and reconstructs after the cut (issue #12,
benchmarks/README.md: Fisher alone beat the VIB mask-only ranking at 0.5 FLOPs).
A null default is resolved per method by `parse` (`method_defaults`: what `faster` prunes and
distils differs); methods may also pick their own data (e.g. `fast` samples 3% of the training
data). Tasks have their own defaults too (TASK_DEFAULTS): decoders round kept widths to 64
(`round_to`, halved for a small model by fit_round_to; docs/DECODERS.md). An explicit user
value always wins.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from .checkpointing import MODES as CHECKPOINTING_MODES
from .errors import CompressionError
from .precision import MODES as PRECISION_MODES
from .recovery import RECOVERY_MODES

METHODS = ("vtrans", "fast", "faster")
LAYOUTS = ("uniform", "per_layer")
FINETUNE_FROM = ("dense", "trained")
FINETUNE_SCHEDULES = ("linear", "constant")
MASK_WEIGHTS = ("trained", "frozen")


@dataclass
class CompressionOptions:
    # --- what is pruned and how the result is laid out ---
    layout: str = "uniform"          # uniform: stock transformers checkpoint; per_layer: needs load_pruned
    # null = the method's default (`method_defaults`): true for vtrans/fast; faster keeps the
    # hidden dimension (and, in uniform, the heads tied to it) because frozen weights cannot
    # absorb a narrower residual stream (benchmark: 54.8% -> 67.3% at 0.5 FLOPs without it).
    prune_hidden: bool | None = None  # the hidden/embedding dimension (one mask shared by all layers)
    prune_heads: bool | None = None
    prune_ffn: bool = True
    prune_blocks: bool = True        # whole attention / FFN blocks (whole layers in `uniform`)
    # kept hidden/FFN widths rounded to a multiple of this (speed); decoders default to 64, halved
    # for a small model (TASK_DEFAULTS, fit_round_to). Head counts are not rounded by it: GQA
    # prunes whole key/value groups or one query head per group (planner.py), which stays valid.
    round_to: int = 8

    # --- data ---
    seq_len: int = 128               # max tokens per example for training and evaluation
    batch_size: int = 32
    max_train_examples: int | None = None   # cap on training rows (None: all)
    max_eval_examples: int | None = None    # cap on evaluation rows (None: all of the eval split)
    fast_fraction: float = 0.03      # Fast-VTrans: share of the training data used
    # ... but never fewer than this many rows. 1,024, not 512: on the held-out benchmark (files of
    # 3,000-6,000 rows, where this floor decides) 512 rows lost 2.15/2.33 points at 0.5 FLOPs and
    # 1,024 lost 0.90/0.67, in less wall time (the fine-tuning stops at its step floor either way).
    fast_min_examples: int = 1024

    # --- teacher (only when the model has no head for the task) ---
    teacher_epochs: float = 2.0
    teacher_lr: float = 5e-5

    # --- VIB mask training and iterative pruning ---
    mask_steps: int | None = None    # optimisation steps per pruning round (None: schedule.py, a tenth of an epoch, 40-2000)
    prune_rounds: int = 2            # vtrans/fast: rounds of train-then-prune to reach the target
    lr: float = 2e-5                 # model weights during mask training (vtrans/fast)
    # vtrans/fast: "frozen" = the rounds train the masks only (0.7x the cost a step: the rounds
    # only rank, the final plan slices the dense weights anyway when finetune_from is "dense");
    # "trained" = the weights train with the masks (the paper's recipe). Measured at equal time
    # (tweets, 0.5 FLOPs, the same kept shape): frozen 75.60, trained 74.85 (benchmarks/README.md)
    mask_weights: str = "frozen"
    # VIB mask parameters (mu, log sigma^2) and the KL weight; null: the method's (method_defaults)
    mask_lr: float | None = None
    beta: float | None = None
    budget_lambda_lr: float = 0.1    # gradient ascent rate of the budget Lagrangian multipliers

    # --- recovery after pruning ---
    finetune_steps: int | None = None   # distillation fine-tuning steps (None: finetune_epochs; 0: skip)
    # passes over the method's rows, mask rounds included; >= min_finetune_steps. null: 3 where the
    # job's matmuls run in bfloat16, 2 in float32 (schedule.default_finetune_epochs)
    finetune_epochs: float | None = None
    min_finetune_steps: int | None = None   # null = the method's (method_defaults)
    # "dense": the learned plan slices the dense model's ORIGINAL weights, which are then
    # fine-tuned; "trained": keep the weights as the mask rounds trained them (before session 11).
    # Measured (issue #11): the trained-while-gated weights recover worse than the untouched ones.
    finetune_from: str = "dense"
    finetune_lr: float = 5e-5
    # "constant" (measured +0.7 points over "linear" = 10% warmup then linear decay, issue #11)
    finetune_schedule: str = "constant"
    distill_temperature: float = 2.0
    distill_weight: float = 0.5      # share of the loss from the teacher's logits (rest: task labels)
    # teacher hidden-state MSE on every kept layer and channel, in the mask rounds and the
    # fine-tuning (null: the method's; 0 for every method since issue #11: with the dense restart
    # the teacher's logits alone recovered better, and the hidden-state pass costs ~15% a step)
    hidden_distill_weight: float | None = None
    rescale: bool = False            # legacy switch: true = reconstruct "scales" when reconstruct is "off"
    # which weights the fine-tuning trains (recovery.py): "full" (all), "lora" (peft adapters of
    # rank lora_rank at lora_lr, merged into the weights before saving: the output never needs
    # peft), "auto" = full when its training fits in memory (lm_runtime's estimate), else lora
    # (on a GPU; on CPU LoRA measured no lower process memory, so "auto" stays full there)
    recovery: str = "auto"
    lora_rank: int = 16
    # adapters start at zero and need a higher rate than full weights: SmolLM2, fast@0.8, 32
    # recovery steps: 1e-3 -> perplexity 15.55, 2e-4 -> 16.36 (full weights at 5e-5: 15.35)
    lora_lr: float = 1e-3
    # recompute each transformer layer's activations in backward instead of keeping them
    # (checkpointing.py): "on", "off", or "auto" = on only when the job would not fit without it
    # (lm_runtime's estimate; encoders: off). Costs about one more forward a training step.
    activation_checkpointing: str = "auto"
    # matmuls in bfloat16 while compressing (precision.py): "auto" = where the device runs them
    # faster (measured once on a CPU; a GPU's bf16 support), classification jobs only; "bfloat16";
    # "off". Weights, evaluation, latency and the saved model stay float32.
    mixed_precision: str = "auto"

    # --- faster: ranking and retraining-free reconstruction (importance.py, reconstruct.py) ---
    # null = the method's default (method_defaults). importance: "vib" (log alpha after mask-only
    # training), "fisher" (empirical Fisher per gate / its FLOPs, no mask training), "vib+fisher"
    # (gates start at a log alpha set by their Fisher rank, then mask-only training). vtrans/fast
    # take "vib" or "vib+fisher" (each mask round starts its gates by Fisher rank).
    importance: str | None = None
    gate_init: float | None = None   # faster, vib: starting log alpha of every gate (9: the dense model, noise ~1%)
    # after the cut: "scales" (Kwon's per-unit least-squares rescale), "weights" (refit the output
    # projections), "off"; solved layer by layer on `calibration_rows` rows, kept only where it
    # lowers the error on held-out calibration rows
    reconstruct: str | None = None
    calibration_rows: int = 2048     # faster: rows for reconstruction (and Fisher, see fisher_rows)
    # ... and at most this many real tokens of them (null: the method's, method_defaults): the
    # refit's cost grows with tokens, not rows (2,048 emails are 3.7x the tokens of 2,048 tweets)
    calibration_tokens: int | None = None
    fisher_rows: int = 512           # faster: rows whose own (per-row) gate gradients give the Fisher scores

    # --- evaluation and runtime ---
    latency_runs: int = 10           # repeated timed forwards at batch 32 x seq 128 (median reported)
    seed: int = 0
    device: str | None = None        # None: cuda when available, else cpu

    # --- task and decoders (language modelling, tasks/language_modeling.py) ---
    # null: chosen from the model (a causal LM -> "language-modeling", an encoder -> classification)
    task: str | None = None
    # weights' dtype while compressing and in the saved model; null: float32 on CPU, bfloat16 on CUDA
    dtype: str | None = None
    prefill_batch: int = 4           # LM latency: prefill of prefill_batch x prefill_seq tokens ...
    prefill_seq: int = 512
    decode_tokens: int = 32          # ... and greedy decode tokens/s at batch 1 after a short prompt
    generation_samples: int = 3      # greedy samples (held-out prompts) before/after in the metrics
    # memory the job may use, in GB (null: what the device reports available); checked before any
    # work against the estimate of docs/DECODERS.md
    max_memory_gb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, value: "CompressionOptions | dict[str, Any] | None", method: str = "vtrans") -> "CompressionOptions":
        """Checked options with every method-dependent default (null) resolved for `method`."""
        if value is None:
            value = {}
        if isinstance(value, CompressionOptions):
            value = value.to_dict()
        if not isinstance(value, dict):
            raise CompressionError("options", "must be an object")
        known = {f.name: f for f in fields(cls)}
        for key in value:
            if key not in known:
                raise CompressionError(f"options.{key}", f"is not a known option (known: {', '.join(sorted(known))})")
        opts = cls(**value)
        opts._explicit = set(value)   # what the user set (task defaults never override it)
        opts._method = method
        for name, sample in METHOD_DEPENDENT.items():
            _check_type(name, getattr(opts, name), sample, nullable=True)
        for name, default in method_defaults(method, opts.layout).items():
            if getattr(opts, name) is None:
                setattr(opts, name, default)
        if method != "faster" and "reconstruct" not in opts._explicit and opts.finetune_from != "dense":
            opts.reconstruct = "off"
        opts._check()
        if method != "faster" and opts.importance not in ("vib", "vib+fisher"):   # vtrans/fast rank by their VIB rounds
            raise CompressionError("options.importance", f"{method} ranks by its VIB mask rounds: 'vib' or 'vib+fisher' "
                                                         f"(gates started by their Fisher rank), got {opts.importance!r}")
        if method != "faster" and opts.reconstruct != "off" and opts.finetune_from != "dense":
            # the refit targets the dense model's outputs from the dense model's sliced weights
            raise CompressionError("options.reconstruct", f"{method} reconstructs only with finetune_from 'dense'")
        return opts

    def apply_task_defaults(self, task: str, widths: Callable[["CompressionOptions"], list[int]] | None = None
                            ) -> "CompressionOptions":
        """Defaults of a task (and of the task for this method) for every option the user left
        unset (TASK_DEFAULTS, TASK_METHOD_DEFAULTS), re-checked. `widths(options)`: the model's
        prunable hidden/FFN widths under the final options, when known: a task's default round_to
        is then fitted to them (fit_round_to); a user's round_to is never changed."""
        explicit = getattr(self, "_explicit", set())
        defaults = {**TASK_DEFAULTS.get(task, {}), **TASK_METHOD_DEFAULTS.get((task, getattr(self, "_method", None)), {})}
        for name, value in defaults.items():
            if name not in explicit:
                setattr(self, name, value)
        if "round_to" in defaults and "round_to" not in explicit and widths is not None:
            self.round_to = fit_round_to(defaults["round_to"], widths(self))
        self._check()
        return self

    def _check(self) -> None:
        defaults = CompressionOptions()
        for f in fields(self):
            value, default = getattr(self, f.name), getattr(defaults, f.name)
            if f.name in METHOD_DEPENDENT:
                default = METHOD_DEPENDENT[f.name]   # resolved by parse() before this check
            if f.name in NULLABLE_SAMPLES:   # null allowed; otherwise of the sample's type
                _check_type(f.name, value, NULLABLE_SAMPLES[f.name], nullable=True)
                continue
            _check_type(f.name, value, default)
        if self.finetune_from not in FINETUNE_FROM:
            raise CompressionError("options.finetune_from", f"must be one of {', '.join(FINETUNE_FROM)}, got {self.finetune_from!r}")
        if self.mask_weights not in MASK_WEIGHTS:
            raise CompressionError("options.mask_weights", f"must be one of {', '.join(MASK_WEIGHTS)}, got {self.mask_weights!r}")
        if self.finetune_schedule not in FINETUNE_SCHEDULES:
            raise CompressionError("options.finetune_schedule",
                                   f"must be one of {', '.join(FINETUNE_SCHEDULES)}, got {self.finetune_schedule!r}")
        if self.layout not in LAYOUTS:
            raise CompressionError("options.layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if not (self.prune_hidden or self.prune_heads or self.prune_ffn or self.prune_blocks):
            raise CompressionError("options", "at least one of prune_hidden, prune_heads, prune_ffn, prune_blocks must be true")
        if self.importance not in IMPORTANCES:
            raise CompressionError("options.importance", f"must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}")
        if self.recovery not in RECOVERY_MODES:
            raise CompressionError("options.recovery", f"must be one of {', '.join(RECOVERY_MODES)}, got {self.recovery!r}")
        if self.activation_checkpointing not in CHECKPOINTING_MODES:
            raise CompressionError("options.activation_checkpointing",
                                   f"must be one of {', '.join(CHECKPOINTING_MODES)}, got {self.activation_checkpointing!r}")
        if self.mixed_precision not in PRECISION_MODES:
            raise CompressionError("options.mixed_precision",
                                   f"must be one of {', '.join(PRECISION_MODES)}, got {self.mixed_precision!r}")
        if self.reconstruct not in RECONSTRUCT_MODES:
            raise CompressionError("options.reconstruct",
                                   f"must be one of {', '.join(RECONSTRUCT_MODES)}, got {self.reconstruct!r}")
        positive = ["round_to", "seq_len", "batch_size", "fast_min_examples", "prune_rounds", "latency_runs",
                    "calibration_rows", "calibration_tokens", "fisher_rows", "lora_rank"]
        for name in positive:
            if getattr(self, name) < 1:
                raise CompressionError(f"options.{name}", "must be at least 1")
        for name in ["max_train_examples", "max_eval_examples", "mask_steps"]:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CompressionError(f"options.{name}", "must be at least 1 (or null for no limit)")
        if self.finetune_steps is not None and self.finetune_steps < 0:
            raise CompressionError("options.finetune_steps", "must be 0 or more (or null for one epoch)")
        if not 0.0 < self.fast_fraction <= 1.0:
            raise CompressionError("options.fast_fraction", "must be in (0, 1]")
        for name in ["distill_weight"]:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CompressionError(f"options.{name}", "must be between 0 and 1")
        for name in ["teacher_epochs", "finetune_epochs", "min_finetune_steps", "teacher_lr", "lr", "mask_lr", "beta", "budget_lambda_lr",
                     "finetune_lr", "lora_lr", "distill_temperature", "hidden_distill_weight"]:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise CompressionError(f"options.{name}", "must not be negative")
        if self.task is not None and self.task not in TASK_NAMES:
            raise CompressionError("options.task", f"must be one of {', '.join(TASK_NAMES)}, got {self.task!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise CompressionError("options.dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("prefill_batch", "prefill_seq", "decode_tokens"):
            if getattr(self, name) < 1:
                raise CompressionError(f"options.{name}", "must be at least 1")
        if self.generation_samples < 0:
            raise CompressionError("options.generation_samples", "must be 0 or more")
        if self.max_memory_gb is not None and self.max_memory_gb <= 0:
            raise CompressionError("options.max_memory_gb", "must be positive (or null: what the device has)")
        if self.device is not None and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise CompressionError("options.device", f"must be 'cpu' or 'cuda[:N]', got {self.device!r}")


# Options whose null default is resolved per method by parse() (value: a sample of the type).
METHOD_DEPENDENT: dict[str, Any] = {"prune_hidden": True, "prune_heads": True, "hidden_distill_weight": 1.0,
                                    "mask_lr": 0.05, "beta": 1e-5, "importance": "vib", "gate_init": 9.0,
                                    "reconstruct": "off", "calibration_tokens": 1, "min_finetune_steps": 1}
IMPORTANCES = ("vib", "fisher", "vib+fisher")
# Options whose default is null and stays null unless set (value: a sample of the type).
NULLABLE_SAMPLES: dict[str, Any] = {"task": "language-modeling", "dtype": "float32", "max_memory_gb": 1.0,
                                    "finetune_epochs": 2.0}
TASK_NAMES = ("sequence-classification", "language-modeling")
DTYPES = ("float32", "bfloat16", "float16")
# Per-task defaults for options the user did not set. Language modelling: a row is a packed
# window of seq_len tokens (512: the window perplexity is usually reported at), so far fewer rows
# and smaller batches than classification (a batch's logits are batch x seq_len x vocabulary:
# 4 x 512 x 49k floats = 400 MB for SmolLM2, twice with the dense teacher's). The least-squares
# refit (reconstruct.py) fits pre-LN decoders too: "weights" (SmolLM2-135M, faster at params 0.8:
# perplexity 40.85 -> 19.20, dense 14.73; "scales" made it worse, 43.93; benchmarks/README.md).
# round_to 64: decoders are judged by measured speed, and CPU/GPU matmul kernels tile widths in
# multiples of 32-128, so a kept FFN width of 1,000 runs no faster than 1,024 would; 64 keeps the
# speedup following the FLOPs cut. A small model gets it halved (fit_round_to).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "language-modeling": {"reconstruct": "weights", "seq_len": 512, "batch_size": 4, "fast_min_examples": 32,
                          "calibration_rows": 64, "fisher_rows": 32, "latency_runs": 3, "min_finetune_steps": 20, "round_to": 64},
}
# ... and per task and method. `faster` on a language model keeps the hidden width. Decoders have
# the least-squares refit now (what made hidden pruning work with frozen weights on encoders), but
# on SmolLM2 at params 0.8 the planner kept all 576 channels even with prune_hidden on (same plan,
# benchmarks/README.md): off until measured at lower targets.
# vtrans/fast on a language model start each mask round's gates by Fisher rank ("vib+fisher"):
# their rounds are a few dozen steps of a few windows, too short to move gates that all start at
# log alpha 9. SmolLM2-135M, `fast` at params 0.8 (32 mask steps, refit, 32 distillation steps):
# "vib" expected to keep 0.9997 when the cut came, cut hidden to 504 and reached perplexity 22.42
# (dense 14.73); "vib+fisher" 15.45, in the same schedule (benchmarks/README.md, session 19).
# They keep the hidden width too, as `faster` does: at params 0.7 `fast` cut it 576 -> 504 (the
# planner's one coarse step) and reached 23.49, worse than `faster` with the width kept and no
# training (22.46); after the refit its held-out calibration KL was 0.94 against faster's 0.65.
TASK_METHOD_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("language-modeling", "faster"): {"prune_hidden": False},
    ("language-modeling", "fast"): {"importance": "vib+fisher", "prune_hidden": False},
    ("language-modeling", "vtrans"): {"importance": "vib+fisher", "prune_hidden": False},
}
# A default round_to leaves at least this many groups in the narrowest prunable width: with
# fewer, the planner's steps are too coarse to land near a budget (a 64-wide FFN would be one
# group of 64, the last one, which is never removed, so a tiny test model would not prune at all).
MIN_ROUND_GROUPS = 8


def fit_round_to(round_to: int, widths: list[int], min_groups: int = MIN_ROUND_GROUPS) -> int:
    """`round_to` halved while the narrowest nonzero width holds fewer than `min_groups` of it
    (64 for SmolLM2's hidden 576 / FFN 1,536; 8 for a 64-wide test FFN; never below 1)."""
    narrowest = min((w for w in widths if w > 0), default=None)
    while narrowest is not None and round_to > 1 and narrowest // round_to < min_groups:
        round_to //= 2
    return round_to
RECONSTRUCT_MODES = ("off", "scales", "weights")


def method_defaults(method: str, layout: str) -> dict[str, Any]:
    """Defaults that depend on the method (measured on the benchmark, MiniLM-L6 at 0.5 FLOPs).

    Faster-VTrans trains masks only, and prunes every structure like the other methods: with
    the Fisher ranking and the least-squares refit (held-out tweets, uniform, dense 76.25) hidden
    + heads + FFN + layers scored 75.35 / 74.35 / 74.05 at 0.5 / 0.4 / 0.3 FLOPs against
    75.35 / 73.85 / 61.50 for FFN + layers only (the planner picks the same plan at 0.5; at 0.3
    FFN + layers alone must drop whole layers). Before the refit existed, slicing the hidden
    dimension under frozen weights cost 12 points: that is why it used to be off. Its
    short schedule (32 steps) needs a faster mask rate (0.1) and a KL weight of 1e-4: the task
    gradient of a gate is ~1e-4 per FFN-neuron of cost, so at 1e-5 the information prior barely
    ranks units (65.9% -> 68.9%). With weights trained (vtrans/fast) beta 1e-4 makes the KL
    (~18 vs a task loss of ~1) collapse every mask (45% accuracy), so they keep 1e-5 and 0.05.
    Hidden-state distillation is off for every method (issue #11, held-out tweets at 0.5 FLOPs:
    logits only + constant rate 76.05% against 75.35% with it and warmup/decay); it stays
    method-dependent so a method can opt in again when measured.
    Issue #12 (same benchmark, 0.5 FLOPs, uniform): the Fisher ranking without any mask training
    scored 68.45 against 66.95 for the VIB mask-only ranking, and the layer-wise least-squares
    reconstruction ("scales") raised it to 72.75; in per_layer, Fisher 70.30 -> 74.15 with "scales"
    and 75.45 with "weights" (refitted output projections; dense 76.25). So `faster` defaults to
    importance "fisher" and reconstruct "weights" (each refit is kept only where it lowers the
    held-out error); "vib" / "vib+fisher" and "scales" stay selectable (mask_lr, beta and gate_init
    apply to the vib rankings).
    calibration_tokens: the refit's cost grows with the real tokens it reads. `faster` reads 64k
    (~2,000 tweets, ~540 emails): on held-out spam at 0.5 FLOPs all 2,048 emails (247k tokens,
    Kwon et al.'s 2,048 x 128) scored 96.80 and 64k tokens 96.67 (dense 97.40; 0.13 = two
    emails) with a 5.8x shorter refit, which keeps `faster` near its 2-minute budget on CPU.
    vtrans/fast distil afterwards: 128k (all 2,048 tweets, ~1,090 emails; on spam the refit on
    all rows scored higher at 0.5/0.4 but took 1.6-2x the time, see benchmarks/README.md).
    min_finetune_steps: the fewest distillation steps. `fast` fine-tunes for exactly this many on
    any file under ~130,000 rows (~88,000 with the three epochs of bf16 jobs; two epochs of its
    1,024-row subset are 64 steps); it was
    measured with 150. `vtrans` reaches it only on a small file (schedule.is_small_file), where it
    fine-tunes for 120 after a short ranking, so that the whole recipe takes no longer than two
    epochs of plain distillation (held-out spam, 3,000 rows: side by side 717 s against the
    peer's 749 s for its Taylor prune + 188 steps; see benchmarks/README.md).
    """
    if method == "faster":
        return {"prune_hidden": True, "prune_heads": True, "hidden_distill_weight": 0.0,
                "mask_lr": 0.1, "beta": 1e-4, "importance": "fisher", "gate_init": 9.0, "reconstruct": "weights",
                "calibration_tokens": 64 * 1024, "min_finetune_steps": 150}
    # vtrans/fast: the sliced dense weights are refitted ("weights") before distillation (issue #11,
    # held-out tweets at 0.4 FLOPs: the learned plan on the dense weights scored 48.30 untrained,
    # 74.50 after the refit, still untrained; dense 76.25). Fine-tuning the weights the rounds
    # trained (finetune_from "trained") has no dense-matching start to refit: off there.
    return {"prune_hidden": True, "prune_heads": True, "hidden_distill_weight": 0.0, "mask_lr": 0.05, "beta": 1e-5,
            "importance": "vib", "gate_init": 9.0, "reconstruct": "weights", "calibration_tokens": 1024 * 128,
            "min_finetune_steps": 120 if method == "vtrans" else 150}


def _check_type(name: str, value: Any, default: Any, nullable: bool = False) -> None:
    """Reject wrong JSON types early (a string where a number belongs, a bool for an int...)."""
    if value is None:
        if default is None or nullable:
            return
        raise CompressionError(f"options.{name}", "must not be null")
    expected: tuple[type, ...]
    if isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int) or default is None and name != "device":
        expected = (int,)
    elif isinstance(default, float):
        expected = (int, float)
    else:
        expected = (str,)
    if isinstance(value, bool) and bool not in expected:
        raise CompressionError(f"options.{name}", f"must be a {expected[-1].__name__}, got a boolean")
    if not isinstance(value, expected):
        raise CompressionError(f"options.{name}", f"must be a {expected[-1].__name__}, got {type(value).__name__}")

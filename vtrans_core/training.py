"""Training loops: dense teacher fine-tuning, distillation fine-tuning, and VIB mask training.

The mask loop is shared by the three methods; they differ only in what is trainable (masks and
weights for vtrans/fast, masks only for faster) and in the data they feed it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .checkpointing import checkpointed_layers
from .data import Encoded, endless_batches
from .schedule import epoch_steps  # noqa: F401  (re-exported: pipeline, benchmarks)

Tick = Callable[..., None]  # tick(done, total, **metrics) -> progress within the current stage


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _linear_warmup_decay(optimizer, total: int, warmup_share: float = 0.1):
    warmup = max(1, int(total * warmup_share))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _strip(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "index")}


# ----------------------------------------------------------------------------- teacher signal

class Teacher:
    """The dense teacher's outputs for distillation.

    Logits are cached per training row the first time a row is seen (the teacher is frozen and
    in eval mode, so they never change): later epochs, rounds and the fine-tuning stage reuse
    them instead of running the teacher again. Hidden states (only when asked for) are computed
    on the fly.
    """

    def __init__(self, model, n_rows: int, cacheable: bool = True):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # A language model's teacher logits (windows x seq_len x vocabulary) do not fit in a
        # cache: the task says so (Task.teacher_cacheable) and they are recomputed per batch.
        self.cacheable = cacheable
        self.cache = torch.zeros(n_rows, model.config.num_labels) if cacheable else None
        self.known = torch.zeros(n_rows, dtype=torch.bool)

    @torch.no_grad()
    def outputs(self, batch: dict, want_hidden: bool):
        idx = batch["index"]
        hidden = None
        if not self.cacheable:
            out = self.model(**_strip(batch), output_hidden_states=want_hidden)
            return out.logits, (out.hidden_states if want_hidden else None)
        if want_hidden or not bool(self.known[idx].all()):
            out = self.model(**_strip(batch), output_hidden_states=want_hidden)
            self.cache[idx] = out.logits.float().cpu()
            self.known[idx] = True
            hidden = out.hidden_states if want_hidden else None
        device = batch["input_ids"].device
        return self.cache[idx].to(device), hidden


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, weight: float):
    """(1-w)*CE(labels) + w*T^2*KL(teacher_T || student_T). Returns (total, task, distill)."""
    task = F.cross_entropy(student_logits, labels)
    if weight <= 0 or teacher_logits is None:
        return task, task.detach(), torch.zeros(())
    t = temperature
    distill = F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1),
                       reduction="batchmean") * (t * t)
    return (1 - weight) * task + weight * distill, task.detach(), distill.detach()


def classification_loss(student_logits, teacher_logits, batch: dict, temperature: float, weight: float):
    """The default task loss of the loops below (Task.loss signature: the whole batch)."""
    return distillation_loss(student_logits, teacher_logits, batch["labels"], temperature, weight)


def student_origin(model) -> tuple[torch.Tensor | None, list[int] | None]:
    """(teacher hidden channels, teacher layers) behind a sliced student's, from the config keys
    materialize.py writes; (None, None) for a model that was never sliced."""
    hidden = getattr(model.config, "vtrans_hidden_origin", None)
    layers = getattr(model.config, "vtrans_layer_origin", None)
    return (torch.tensor(hidden, dtype=torch.long) if hidden is not None else None,
            list(layers) if layers is not None else None)


def hidden_distillation(student_hidden, teacher_hidden, attention_mask, hidden_origin: torch.Tensor | None = None,
                        layer_origin: list[int] | None = None) -> torch.Tensor:
    """Mean over layers of the token-averaged MSE between student and teacher hidden states.

    A sliced student keeps a subset of the teacher's hidden channels (`hidden_origin`) and, in
    the uniform layout, of its layers (`layer_origin`: student layer k is teacher layer
    layer_origin[k]); the teacher's states are indexed accordingly, so every kept layer is
    distilled (CoFi-style layer distillation) instead of only the shape-equal ones."""
    if not student_hidden or not teacher_hidden:
        return torch.zeros((), device=attention_mask.device)
    n = len(student_hidden) - 1
    if layer_origin is None and len(teacher_hidden) == len(student_hidden):
        layer_origin = list(range(n))
    pairs = [(0, 0)] + ([(k + 1, o + 1) for k, o in enumerate(layer_origin)] if layer_origin and len(layer_origin) == n
                        else [(n, len(teacher_hidden) - 1)])
    mask = attention_mask.unsqueeze(-1).to(student_hidden[0].dtype)
    losses = []
    for si, ti in pairs:
        s, t = student_hidden[si], teacher_hidden[ti]
        if hidden_origin is not None and t.shape[-1] != s.shape[-1]:
            t = t.index_select(-1, hidden_origin.to(t.device))
        if s.shape == t.shape:
            losses.append((((s - t) ** 2) * mask).sum() / (mask.sum() * s.shape[-1]))
    return torch.stack(losses).mean() if losses else torch.zeros((), device=attention_mask.device)


# ----------------------------------------------------------------------------- dense / finetune

def adamw(params: list, lr: float, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW (weight decay 0.01) with torch's fused kernel where every parameter allows it.

    Why fused: torch's default on a CPU is its per-tensor loop, ~10 passes over every weight per
    step; on held-out tweets at 0.6 FLOPs it was 62 s of vtrans's 408 (a MiniLM-L6's 22M weights:
    226 ms a step, fused 42 ms; same result to float rounding). fused=False keeps the loop: the
    benchmarks' teachers were trained with it (rebuilt bit for bit on a new machine), and the
    peer's recipe is what its users write, torch.optim.AdamW(params, lr)."""
    ok = fused and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params) \
        and len({p.device.type for p in params}) <= 1
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, **({"fused": True} if ok else {}))


def train_supervised(model, enc: Encoded, steps: int, lr: float, batch_size: int, device, seed: int,
                     tick: Tick, teacher: Teacher | None = None, temperature: float = 2.0,
                     distill_weight: float = 0.0, hidden_weight: float = 0.0, constant_lr: bool = False,
                     loss_fn=classification_loss, resume: dict | None = None, on_step=None,
                     checkpoint_layers: bool = False, fused_optimizer: bool = True) -> list[dict]:
    """AdamW with linear warmup/decay (or a constant rate) for `steps` batches; distils from
    `teacher` when given.

    Used for the dense teacher (no teacher) and for recovery fine-tuning of a pruned model.
    Checkpoints (resume.py): `on_step(step, snapshot)` is called after every step, `snapshot()`
    giving the loop's state (JSON, tensors); `resume` is such a snapshot to continue from (the
    model's weights and the RNG states are the caller's to restore). `checkpoint_layers`:
    recompute the layers' activations in backward (checkpointing.py). `fused_optimizer`: see adamw().
    """
    from .checkpoint import load_optimizer, optimizer_tensors
    from .resume import BatchStream

    params = [p for p in model.parameters() if p.requires_grad]
    if steps <= 0 or not params:
        return []
    opt = adamw(params, lr, fused_optimizer)
    sched = None if constant_lr else _linear_warmup_decay(opt, steps)
    batches = BatchStream(enc, batch_size, device, random.Random(seed))   # = endless_batches, resumable
    model.train()
    history, running, first = [], 0.0, 1
    if resume is not None:
        loop = resume["state"]
        load_optimizer(opt, resume["tensors"], loop["optim"])
        if sched is not None:
            sched.load_state_dict(loop["sched"])
        batches.load_state(loop["stream"])
        history, running, first = list(loop["history"]), float(loop["running"]), int(loop["step"]) + 1

    def snapshot(step: int):
        flat, meta = optimizer_tensors(opt)
        return ({"step": step, "running": running, "history": list(history), "optim": meta,
                 "sched": sched.state_dict() if sched is not None else None, "stream": batches.state()}, flat)

    want_hidden = teacher is not None and hidden_weight > 0
    origin = student_origin(model) if want_hidden else (None, None)
    for step in range(first, steps + 1):
        batch = next(batches)
        with checkpointed_layers(model, checkpoint_layers):
            out = model(**_strip(batch), output_hidden_states=want_hidden)
            t_logits, t_hidden = teacher.outputs(batch, want_hidden) if teacher is not None else (None, None)
            loss, task, distill = loss_fn(out.logits, t_logits, batch, temperature,
                                          distill_weight if teacher is not None else 0.0)
            if want_hidden:
                loss = loss + hidden_weight * hidden_distillation(out.hidden_states, t_hidden, batch["attention_mask"], *origin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
        if step % 10 == 0 or step == steps:
            history.append({"step": step, "loss": round(running, 5)})
        if on_step is not None and step < steps:
            on_step(step, lambda: snapshot(step))
        tick(step, steps, step=step, total_steps=steps, loss=running, task_loss=task.item(), distill_loss=distill.item())
    model.eval()
    return history


# ----------------------------------------------------------------------------- VIB mask training

@dataclass
class BudgetLagrangian:
    """lambda1*(s-t) + lambda2*(s-t)^2, with the lambdas raised by gradient ascent."""
    lr: float
    lambda1: float = 0.0
    lambda2: float = 0.0

    def term(self, s: torch.Tensor, t: float) -> torch.Tensor:
        gap = s - t
        return self.lambda1 * gap + self.lambda2 * gap * gap

    def ascend(self, s: float, t: float) -> None:
        gap = s - t
        self.lambda1 += self.lr * gap
        self.lambda2 += self.lr * gap * gap


@dataclass
class MaskRound:
    steps: int
    start_fraction: float      # expected size (of the dense model) when the round starts
    target: float              # size this round must reach (fraction of the dense model)
    kind: str                  # "params" | "flops"
    seq_len: int
    train_weights: bool
    history: list = field(default_factory=list)


def train_masks(pm, enc: Encoded, rnd: MaskRound, options, device, tick: Tick, teacher: Teacher | None,
                lagrangian: BudgetLagrangian, step_offset: int = 0, fraction_scale: float = 1.0,
                loss_fn=classification_loss) -> list[dict]:
    """One round of VIB mask training (and, for vtrans/fast, weight training) toward rnd.target.

    The target warms up linearly from the round's starting size over the first half of the
    steps, so the Lagrangian never has to fight a jump. `fraction_scale` converts the wrapped
    model's expected fraction into a fraction of the ORIGINAL dense model (after a previous
    round materialized a smaller one).
    """
    model = pm.model
    mask_params = list(pm.mask_parameters())
    weight_params = []
    for p in model.parameters():
        if any(p is m for m in mask_params):
            continue
        p.requires_grad_(rnd.train_weights)
        if rnd.train_weights:
            weight_params.append(p)
    groups = [torch.optim.Adam(mask_params, lr=options.mask_lr)]
    if weight_params:
        groups.append(adamw(weight_params, options.lr))
    sched = _linear_warmup_decay(groups[-1], rnd.steps) if weight_params else None
    # Weights frozen (faster): eval mode turns dropout off, the masks' own noise is the only noise.
    model.train(rnd.train_weights)
    pm.set_sampling(True)
    batches = endless_batches(enc, options.batch_size, device, random.Random(options.seed + step_offset))
    warm = max(1, rnd.steps // 2)
    want_hidden = options.hidden_distill_weight > 0 and teacher is not None
    running = None
    recompute = getattr(options, "activation_checkpointing", "off") == "on"   # resolved by the pipeline
    for step in range(1, rnd.steps + 1):
        batch = next(batches)
        t_now = rnd.start_fraction + (rnd.target - rnd.start_fraction) * min(1.0, step / warm)
        with checkpointed_layers(model, recompute, pm):
            out = model(**_strip(batch), output_hidden_states=want_hidden)
            t_logits, t_hidden = teacher.outputs(batch, want_hidden) if teacher is not None else (None, None)
            loss, task, distill = loss_fn(out.logits, t_logits, batch, options.distill_temperature,
                                          options.distill_weight if teacher is not None else 0.0)
            if want_hidden:
                loss = loss + options.hidden_distill_weight * hidden_distillation(
                    out.hidden_states, t_hidden, batch["attention_mask"], pm.hidden_origin, pm.layer_origin)
            kl = pm.kl()
            s = pm.expected_fraction(rnd.kind, rnd.seq_len) * fraction_scale
            total = loss + options.beta * kl + lagrangian.term(s, t_now)
            for opt in groups:
                opt.zero_grad(set_to_none=True)
            total.backward()
        if weight_params:
            torch.nn.utils.clip_grad_norm_(weight_params, 1.0)
        for opt in groups:
            opt.step()
        if sched is not None:
            sched.step()
        lagrangian.ascend(float(s.detach()), t_now)
        kl, s = kl.detach(), s.detach()
        running = total.item() if running is None else 0.9 * running + 0.1 * total.item()
        if step % 10 == 0 or step == rnd.steps:
            with torch.no_grad():
                other = "params" if rnd.kind == "flops" else "flops"
                s_other = float(pm.expected_fraction(other, rnd.seq_len)) * (fraction_scale if other == rnd.kind else 1.0)
            rnd.history.append({"step": step_offset + step, "loss": round(running, 5), "kl": round(float(kl), 3),
                                f"kept_{rnd.kind}": round(float(s), 4),
                                # the other kind is only exact before the first materialization
                                f"kept_{other}": round(s_other, 4) if fraction_scale == 1.0 else None,
                                "lambda1": round(lagrangian.lambda1, 4), "target": round(t_now, 4)})
        tick(step, rnd.steps, step=step_offset + step, total_steps=rnd.steps, loss=running, kl=float(kl),
             task_loss=task.item(), distill_loss=float(distill), **{f"kept_{rnd.kind}": float(s)})
    pm.set_sampling(False)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return rnd.history

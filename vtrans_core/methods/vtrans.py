"""`vtrans` (full VTrans): iterative train-then-prune with distillation, then fine-tuning.

Each of `prune_rounds` rounds trains the VIB masks (and, with `mask_weights: "trained"`, the
weights; by default they stay frozen, which costs ~0.7x a step and ranked as well at equal time)
on the training rows (task CE + distillation from the dense teacher + beta*KL + the budget
Lagrangian toward that round's target), then slices the model to the round's target. Round targets step linearly from 1.0 to
the final budget, so the last round meets it exactly.

The rounds decide WHAT to keep. By default (`finetune_from: "dense"`) the final plan then slices
the dense model's original weights, and that is what is fine-tuned with distillation: measured
on held-out data (issue #11), the same plan on the untouched teacher weights recovered to within
a point of the dense model, while the weights trained under the gates (noise in every unit, the
budget pulling on them, the gates folded in at each cut) stayed several points behind, even
before any fine-tuning (4.3 vs 5.95 points lost at 0.5 FLOPs). Before distillation the sliced
weights get the layer-wise least-squares refit toward the dense outputs (`reconstruct`, default
"weights", reconstruct.py): a cut that loses most of the accuracy on its own (48.30% at 0.4 FLOPs
on held-out tweets, dense 76.25%) is back at 74.50% with no gradient step, so the distillation
starts close to the teacher instead of spending its first hundreds of steps getting there. The
step counts scale with the data, and the rounds' and the refit's cost is taken from the
fine-tuning budget (schedule.py).
"""
from __future__ import annotations

import math

import torch

from ..budget import Budget
from ..importance import fisher_stage_weight
from ..recovery import trainable_fraction, unwrap as unwrap_lora, wrap as wrap_lora
from ..schedule import (SHORT_CALIBRATION_TOKENS, SHORT_MASK_STEPS, finetune_steps, is_small_file,
                        mask_cost_in_finetune_steps, mask_steps_per_round, reconstruct_cost_in_finetune_steps)
from ..training import BudgetLagrangian, MaskRound, train_masks, train_supervised
from . import Context, Method, Origin, reconstruct_cut, refine_weight, restore_teacher, teacher_tensors

# Relative cost of one step, in forward+backward batches of the dense model (for the ETA).
MASK_STEP_COST = 1.3     # gates, KL and expected-size terms, teacher logits on first sight
FINETUNE_STEP_COST = 0.7  # the pruned model is smaller


class VTrans(Method):
    name = "vtrans"
    trains_weights = True
    # A small file gets the short ranking (schedule.is_small_file). Not `fast`: its 1,024-row
    # subset is always "small", and its schedule was measured as it is.
    shortens_ranking_on_small_files = True

    def round_targets(self, target: float, rounds: int) -> list[float]:
        return [1.0 - (1.0 - target) * r / rounds for r in range(1, rounds + 1)]

    def _ranking_cost(self, n_rows: int, options, mask_steps: int, kept_fraction: float, refit: int | None) -> int:
        """The mask rounds' and the refit's cost in fine-tuning steps. `refit`: rows the refit
        really used (refit_rows); before the run, calibration_rows."""
        spent = mask_cost_in_finetune_steps(options.prune_rounds * mask_steps, options.mask_weights, kept_fraction)
        if options.reconstruct != "off":
            rows = min(n_rows, options.calibration_rows) if refit is None else refit
            spent += reconstruct_cost_in_finetune_steps(math.ceil(rows / options.batch_size), kept_fraction)
        return spent

    def small_file(self, n_rows: int, options) -> bool:
        return self.shortens_ranking_on_small_files and is_small_file(
            n_rows, options, self._ranking_cost(n_rows, options, mask_steps_per_round(n_rows, options), 0.5, None))

    def mask_steps(self, n_rows: int, options) -> int:
        return SHORT_MASK_STEPS if self.small_file(n_rows, options) else mask_steps_per_round(n_rows, options)

    def calibration_tokens(self, n_rows: int, options) -> int:
        """Real tokens the refit may read: a small file's short ranking reads fewer, unless the
        user set calibration_tokens."""
        if self.small_file(n_rows, options) and "calibration_tokens" not in getattr(options, "_explicit", ()):
            return min(options.calibration_tokens, SHORT_CALIBRATION_TOKENS)
        return options.calibration_tokens

    def finetune_steps(self, n_rows: int, options, kept_fraction: float = 0.5, refit: int | None = None) -> int:
        if options.finetune_steps is None and self.small_file(n_rows, options):
            return options.min_finetune_steps    # the epochs are spent: the short ranking + the floor
        spent = self._ranking_cost(n_rows, options, self.mask_steps(n_rows, options), kept_fraction, refit)
        return finetune_steps(n_rows, options, spent)

    def stage_plan(self, n_rows: int, options) -> dict[str, float]:
        plan: dict[str, float] = {}
        for r in range(1, options.prune_rounds + 1):
            plan[f"masks#{r}"] = self.mask_steps(n_rows, options) * MASK_STEP_COST + (
                fisher_stage_weight(n_rows, options.fisher_rows) if options.importance == "vib+fisher" else 0.0)
            plan[f"prune#{r}"] = 1.0
        if options.reconstruct != "off":   # parse() allows it only with finetune_from "dense"
            # the refit's cost follows its tokens: a small file's shorter refit weighs less
            plan["refine"] = refine_weight(n_rows, options) * min(
                1.0, self.calibration_tokens(n_rows, options) / options.calibration_tokens)
        plan["finetune"] = self.finetune_steps(n_rows, options) * FINETUNE_STEP_COST
        return plan

    def run(self, ctx: Context):
        from ..checkpoint import load_module
        from ..plan import PruningPlan
        from ..prunable import PrunableModel

        opts, budget, session = ctx.options, ctx.budget, ctx.checkpoint
        pm = PrunableModel(ctx.model, structures=ctx.structures, layout=opts.layout)
        origin = Origin(pm.reference)
        lagrangian = BudgetLagrangian(opts.budget_lambda_lr)
        steps = self.mask_steps(len(ctx.enc_train), opts)
        done, plans, first = 0, [], 1
        # a checkpoint of an earlier attempt: after a round's cut, or after the refit / during fine-tuning
        at_round = session.resumes_at("round") if session is not None else None
        late = session.resumes_at("refine", "finetune") if session is not None else None
        if at_round is not None or late is not None:
            saved = (at_round or late).state["method"]
            done, plans, first = saved["done"], list(saved["plans"]), saved["round"] + 1
            lagrangian.lambda1, lagrangian.lambda2 = saved["lambdas"]
            ctx.history[:], ctx.info = list(saved["history"]), dict(saved["info"])
            restore_teacher(ctx, at_round or late)
            for d in plans:   # the rounds' cuts again (shapes and origins); the weights come next
                plan = PruningPlan.from_dict(d)
                origin.apply(plan)
                pm = pm.materialize(plan)
                origin.follow(pm.shape.n_layers, plan)
            if at_round is not None:
                load_module(pm.model, at_round.tensors("model"), "the model")
                load_module(pm.masks, at_round.tensors("masks"), "the masks")
                session.restore_rng(at_round)
                ctx.progress.skip_to(f"masks#{first}" if first <= opts.prune_rounds else
                                     ("refine" if opts.reconstruct != "off" else "finetune"))
        for r, target in enumerate(self.round_targets(budget.target, opts.prune_rounds), start=1):
            if r < first:
                continue
            ctx.progress.start(f"masks#{r}")
            if opts.importance == "vib+fisher":
                fisher_start(ctx, pm, r)
            with torch.no_grad():
                start = float(pm.expected_fraction(budget.kind, budget.seq_len))
            rnd = MaskRound(steps, start, target, budget.kind, budget.seq_len,
                            train_weights=self.trains_weights and opts.mask_weights == "trained")
            ctx.history.extend(train_masks(pm, ctx.enc_train, rnd, opts, ctx.device, ctx.progress.update, ctx.teacher,
                                           lagrangian, step_offset=done, loss_fn=ctx.loss_fn))
            done += steps
            ctx.progress.start(f"prune#{r}")
            plan = pm.plan_for(Budget(budget.kind, target, budget.seq_len), opts.layout, opts.round_to)
            origin.apply(plan)
            pm = pm.materialize(plan)
            origin.follow(pm.shape.n_layers, plan)
            kept = {k: round(plan.fraction(k, budget.seq_len), 4) for k in ("params", "flops")}
            ctx.history.append({"step": done, "round": r, "pruned_to": target,
                                "kept_params": kept["params"], "kept_flops": kept["flops"]})
            plans.append(plan.to_dict())
            if session is not None:
                session.save(f"round#{r}", done, {"method": _state(r, done, plans, lagrangian, ctx)},
                             {"model": pm.model.state_dict(), "masks": pm.masks.state_dict(), **teacher_tensors(ctx)})
            ctx.progress.update(1, 1, step=done, kept_flops=kept["flops"], kept_params=kept["params"])
        model = pm.remove_hooks()
        final_plan = origin.plan(opts.layout, {"budget": budget.to_dict(), "round_to": opts.round_to, "method": self.name})
        if opts.finetune_from == "dense":
            model = slice_dense(ctx, final_plan)
            if opts.reconstruct != "off" and late is None:
                # least-squares refit toward the dense outputs before distillation: a closer start
                ctx.info["reconstruct"] = reconstruct_cut(ctx, model, final_plan, ctx.enc_train, opts.reconstruct,
                                                          self.calibration_tokens(len(ctx.enc_train), opts))
        state = _state(opts.prune_rounds, done, plans, lagrangian, ctx)
        loop = None
        # recovery "lora" (recovery.py): adapters train, merged into the weights after the loop.
        # A fine-tuning checkpoint holds the wrapped model's tensors, so it is wrapped before loading.
        lora = opts.recovery == "lora"
        wrapped = lora and late is not None and late.stage == "finetune"
        if wrapped:
            model = wrap_lora(model, opts.lora_rank)
        if late is not None:
            load_module(model, late.tensors("model"), "the model")
            session.restore_rng(late)
            ctx.progress.skip_to("finetune")
            if late.stage == "finetune":
                loop = {"state": late.state["loop"], "tensors": late.tensors("optim")}
        elif session is not None:
            session.save("refine", done, {"method": state}, {"model": model.state_dict(), **teacher_tensors(ctx)})
        if lora and not wrapped:
            model = wrap_lora(model, opts.lora_rank)

        def on_step(step, snapshot):   # every checkpoint_seconds of fine-tuning
            if session.due():
                loop_state, optim = snapshot()
                session.save("finetune", step, {"method": state, "loop": loop_state},
                             {"model": model.state_dict(), "optim": optim, **teacher_tensors(ctx)})

        ctx.progress.start("finetune")
        refit = ctx.info.get("reconstruct", {}).get("rows", 0)
        ft = self.finetune_steps(len(ctx.enc_train), opts, final_plan.fraction("flops", budget.seq_len), refit)
        ft_history = train_supervised(model, ctx.enc_train, ft, opts.lora_lr if lora else opts.finetune_lr,
                                      opts.batch_size, ctx.device,
                                      opts.seed + 1, ctx.progress.update, teacher=ctx.teacher,
                                      temperature=opts.distill_temperature, distill_weight=opts.distill_weight,
                                      hidden_weight=opts.hidden_distill_weight,
                                      constant_lr=opts.finetune_schedule == "constant", loss_fn=ctx.loss_fn,
                                      resume=loop, on_step=on_step if session is not None else None,
                                      checkpoint_layers=opts.activation_checkpointing == "on")
        ctx.history.extend({"step": done + h["step"], "finetune_loss": h["loss"]} for h in ft_history)
        if lora:
            ctx.info["recovery"] = {"mode": "lora", "rank": opts.lora_rank, "lr": opts.lora_lr,
                                    "trained_fraction": round(trainable_fraction(model), 5)}
            model = unwrap_lora(model)
        else:
            ctx.info["recovery"] = {"mode": "full", "lr": opts.finetune_lr}
        ctx.info.update(mask_steps_per_round=steps, prune_rounds=opts.prune_rounds, finetune_steps=ft,
                        finetune_epochs=opts.finetune_epochs,
                        schedule="small-file" if self.small_file(len(ctx.enc_train), opts) else "epochs",
                        mask_weights=opts.mask_weights,
                        finetune_from=opts.finetune_from, train_rows=len(ctx.enc_train),
                        lambda1=round(lagrangian.lambda1, 4), lambda2=round(lagrangian.lambda2, 4))
        return model, final_plan


def fisher_start(ctx: Context, pm, r: int) -> None:
    """importance "vib+fisher": the round's gates start at a log alpha set by each unit's Fisher
    rank (importance.init_gates_from_fisher) instead of all at gate_init. Why: a round of a few
    dozen steps barely moves gates that all start at log alpha 9 (SmolLM2, `fast` at params 0.8,
    32 steps: the expected kept size was still 0.9997 when the cut came), so the cut ranked units
    by the noise of those few Adam steps; started by their Fisher rank, the least salient units sit
    near the decision region and the VIB training decides between them. The Fisher pass reads
    `fisher_rows` of the round's rows (the pruned model of the previous round from round 2 on)."""
    from ..importance import fisher_information, fisher_scores, init_gates_from_fisher

    budget = ctx.budget
    info = fisher_information(pm, ctx.enc_train.head(ctx.options.fisher_rows), ctx.device, loss_fn=ctx.loss_fn,
                              recompute=ctx.options.activation_checkpointing == "on")
    init_gates_from_fisher(pm, fisher_scores(pm, info, budget.kind, budget.seq_len))
    ctx.info.setdefault("fisher_rows", min(len(ctx.enc_train), ctx.options.fisher_rows))
    ctx.info.setdefault("fisher_rounds", []).append(r)


def _state(r: int, done: int, plans: list, lagrangian: BudgetLagrangian, ctx: Context) -> dict:
    """What a checkpoint of this method holds besides tensors (JSON)."""
    return {"round": r, "done": done, "plans": list(plans), "lambdas": [lagrangian.lambda1, lagrangian.lambda2],
            "history": list(ctx.history), "info": dict(ctx.info)}


def slice_dense(ctx: Context, plan):
    """The dense model's original weights sliced to `plan` (kept indices of the dense model).

    materialize() slices a copy, so the frozen teacher is wrapped directly (its hooks are
    removed again right after): one copy of the model, not two."""
    from ..prunable import PrunableModel

    pm = PrunableModel(ctx.dense, structures=ctx.structures, layout=ctx.options.layout)
    try:
        sliced = pm.materialize(plan)   # fresh gates are mu = 1: folding them changes no weight
    finally:
        pm.remove_hooks()
    model = sliced.remove_hooks()
    for p in model.parameters():        # the teacher's copy is frozen; the student trains
        p.requires_grad_(True)
    return model

"""Training pieces (losses, Lagrangian, mask loop, progress) and each method end to
end on a tiny BERT."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vtrans_core import compress, load_pruned
from vtrans_core.data import encode, load_task
from vtrans_core.evaluate import classification_metrics, evaluate, quality_warnings
from vtrans_core.progress import Progress
from vtrans_core.training import (BudgetLagrangian, MaskRound, Teacher, adamw, distillation_loss,
                                  hidden_distillation, train_masks)

TINY = {"mask_steps": 6, "finetune_steps": 4, "prune_rounds": 2, "latency_runs": 1, "round_to": 4}


def test_distillation_loss_math():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 1, 0])
    total, task, distill = distillation_loss(s, t, y, temperature=2.0, weight=0.0)
    assert torch.allclose(total, F.cross_entropy(s, y))
    _, _, same = distillation_loss(t, t, y, 2.0, 0.5)
    assert abs(same.item()) < 1e-6
    total, task, distill = distillation_loss(s, t, y, 2.0, 0.25)
    p_t = F.softmax(t / 2, -1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert math.isclose(distill.item(), manual.item(), rel_tol=1e-5)
    assert math.isclose(total.item(), 0.75 * task.item() + 0.25 * manual.item(), rel_tol=1e-5)


def test_hidden_distillation_follows_kept_channels_and_layers():
    torch.manual_seed(0)
    mask = torch.ones(2, 5)
    teacher = [torch.randn(2, 5, 8) for _ in range(4)]          # embeddings + 3 layers, width 8
    keep, layers = torch.tensor([1, 4, 6]), [0, 2]                # student: 3 channels, teacher layers 0 and 2
    exact = [teacher[0][..., keep], teacher[1][..., keep], teacher[3][..., keep]]
    assert hidden_distillation(exact, teacher, mask, keep, layers).item() == pytest.approx(0.0, abs=1e-12)
    # student layer 1 copied from the WRONG teacher layer (2 instead of 3): a positive loss, from that pair only
    wrong = [exact[0], exact[1], teacher[2][..., keep]]
    expected = ((teacher[2][..., keep] - teacher[3][..., keep]) ** 2).mean() / 3
    assert hidden_distillation(wrong, teacher, mask, keep, layers).item() == pytest.approx(expected.item(), rel=1e-5)
    # padding positions do not count
    padded = mask.clone()
    padded[:, -1] = 0
    noisy = [t.clone() for t in exact]
    noisy[2][:, -1] += 100.0
    assert hidden_distillation(noisy, teacher, padded, keep, layers).item() == pytest.approx(0.0, abs=1e-12)
    # an unsliced student of the same depth pairs layer by layer without any origin
    assert hidden_distillation(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_adamw_takes_the_fused_kernel_and_steps_like_the_loop():
    def run(fused):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(64, 16)), torch.nn.Parameter(torch.randn(16))]
        opt = adamw(params, 1e-2, fused)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return opt, [p.detach() for p in params]

    fused_opt, fused = run(True)
    loop_opt, loop = run(False)
    assert fused_opt.defaults["fused"] is True and not loop_opt.defaults.get("fused")
    assert loop_opt.defaults["weight_decay"] == fused_opt.defaults["weight_decay"] == 0.01
    for a, b in zip(fused, loop):   # the same update, to float rounding
        assert torch.allclose(a, b, atol=1e-5)
    torch.manual_seed(0)
    start = torch.randn(64, 16)
    assert not torch.allclose(fused[0], start, atol=1e-3)   # and it did move the weights


def test_lagrangian_pushes_toward_target():
    lag = BudgetLagrangian(lr=0.5)
    for _ in range(3):
        lag.ascend(0.9, 0.5)           # too big: both multipliers grow
    assert lag.lambda1 > 0 and lag.lambda2 > 0
    s = torch.tensor(0.9, requires_grad=True)
    lag.term(s, 0.5).backward()
    assert s.grad.item() > 0            # minimising the term shrinks s
    small = BudgetLagrangian(lr=0.5)
    small.ascend(0.3, 0.5)
    assert small.lambda1 < 0            # below target: the penalty lets the size grow back


def test_classification_metrics():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    m = classification_metrics(logits, [0, 1, 0, 1], 2)
    assert m["accuracy"] == 50.0            # predictions 0,1,1,0
    assert m["f1"] == pytest.approx(50.0)   # tp=1 fp=1 fn=1
    m3 = classification_metrics(torch.eye(3), [0, 1, 1], 3)
    assert m3["accuracy"] == pytest.approx(200 / 3, abs=1e-2) and "f1" not in m3


def test_quality_warning_flags_a_model_that_answers_like_a_constant():
    labels = [0] * 45 + [1] * 30 + [2] * 25               # majority class: 45%
    dead = quality_warnings({"accuracy": 76.0}, {"accuracy": 45.0}, labels, 3)
    assert len(dead) == 1 and "45.0%" in dead[0] and "options.beta" in dead[0]
    assert quality_warnings({"accuracy": 76.0}, {"accuracy": 70.0}, labels, 3) == []   # degraded, not dead
    # a task the dense model itself barely learns is not blamed on the compression
    assert quality_warnings({"accuracy": 47.0}, {"accuracy": 45.0}, labels, 3) == []
    assert quality_warnings({"accuracy": 76.0}, {"accuracy": None}, labels, 3) == []


def test_progress_is_monotonic_and_times_stages():
    seen = []
    prog = Progress(lambda s, f, m: seen.append((s, f)), {"load": 1, "masks#1": 5, "masks#2": 5, "save": 1})
    prog.start("load")
    prog.start("masks#1")
    for i in range(1, 4):
        prog.update(i, 3)
    prog.replan("save", 3)
    prog.start("masks#2")
    prog.update(1, 2)
    prog.start("save")
    prog.finish()
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {s for s, _ in seen} == {"load", "masks", "save"}
    assert set(prog.stage_seconds) == {"load", "masks", "save"}


def _tiny_setup(tiny_model_dir, tiny_dataset_csv):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = load_task(tiny_dataset_csv)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    return task, tok, model, encode(tok, task.train, 32)


@pytest.mark.parametrize("train_weights", [False, True])
def test_mask_loop_freezes_or_trains_weights(tiny_model_dir, tiny_dataset_csv, train_weights):
    from vtrans_core.options import CompressionOptions
    from vtrans_core.prunable import PrunableModel

    task, tok, model, enc = _tiny_setup(tiny_model_dir, tiny_dataset_csv)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = copy.deepcopy(model)
    pm = PrunableModel(model, layout="per_layer")
    mu_before = [p.detach().clone() for p in pm.mask_parameters()]
    opts = CompressionOptions.parse({"batch_size": 16, "mask_lr": 0.1})
    rnd = MaskRound(steps=5, start_fraction=1.0, target=0.5, kind="flops", seq_len=128, train_weights=train_weights)
    history = train_masks(pm, enc, rnd, opts, torch.device("cpu"), lambda *a, **k: None, Teacher(dense, len(enc)),
                          BudgetLagrangian(0.1))
    assert history and history[-1]["step"] == 5 and history[-1]["target"] == 0.5
    changed = [not torch.equal(a, b.detach()) for a, b in zip(mu_before, pm.mask_parameters())]
    assert all(changed)
    pm.remove_hooks()
    same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert same is (not train_weights)


@pytest.mark.parametrize("method,layout", [("faster", "uniform"), ("fast", "per_layer"), ("vtrans", "uniform")])
def test_methods_end_to_end_tiny(tiny_model_dir, tiny_dataset_csv, tmp_path, method, layout):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    stages = []
    result = compress(tiny_model_dir, tiny_dataset_csv, {"kind": "flops", "target": 0.6}, method,
                      {**TINY, "layout": layout, "fast_min_examples": 32, "rescale": True}, tmp_path / "out",
                      lambda s, f, m: stages.append((s, f)))
    m = result.metrics
    assert m["flops_fraction"] <= 0.61 and m["pruned"]["flops"] < m["dense"]["flops"]
    assert [f for _, f in stages] == sorted(f for _, f in stages) and stages[-1][1] == 1.0
    # every method refits the cut by least squares ("refine"); vtrans/fast then distil ("finetune")
    expected = ["load", "masks", "prune", "refine"] + (["finetune"] if method != "faster" else []) + ["evaluate", "save"]
    assert list(dict.fromkeys(s for s, _ in stages)) == expected    # first occurrences, in contract order
    assert m["teacher"]["fine_tuned"] is False
    assert set(m["stage_seconds"]) >= {"load", "masks", "prune", "evaluate", "save"}
    if method == "fast":
        assert m["train_examples"] == 32
    plan = json.loads((result.output_dir / "plan.json").read_text())
    assert plan["kept"] == m["kept"] and len(plan["attn_blocks"]) == 2
    # The delivered files reproduce the reported accuracy.
    loader = AutoModelForSequenceClassification.from_pretrained if layout == "uniform" else load_pruned
    loaded = loader(str(result.output_dir))
    task = load_task(tiny_dataset_csv)
    enc = encode(AutoTokenizer.from_pretrained(result.output_dir), task.test, 128)
    assert evaluate(loaded, enc, 2, 64, "cpu")["accuracy"] == m["pruned"]["accuracy"]


def test_teacher_stage_when_model_has_no_head(tiny_base_model_dir, tiny_dataset_csv, tmp_path):
    stages = []
    result = compress(tiny_base_model_dir, tiny_dataset_csv, {"kind": "params", "target": 0.7}, "faster",
                      {**TINY, "teacher_epochs": 3.0, "rescale": False}, tmp_path / "out",
                      lambda s, f, m: stages.append(s))
    m = result.metrics
    assert m["teacher"]["fine_tuned"] is True and m["teacher"]["accuracy"] is not None
    assert "teacher" in stages and stages.index("teacher") < stages.index("masks")
    assert m["params_fraction"] <= 0.71
    cfg = json.loads((result.output_dir / "config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "positive"}

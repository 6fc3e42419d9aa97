"""Resumable compress() (issue #16, item 2): checkpoints at stage boundaries and during
fine-tuning; a run stopped after a mask round (or mid fine-tuning) and started again with the
same checkpoint folder ends with the same weights as a run that was never stopped; a corrupt,
foreign or missing checkpoint means a clean start (with a warning), never a crash."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vtrans_core import CompressionCancelled, compress
from vtrans_core.checkpoint import (CheckpointInvalid, load_checkpoint, load_optimizer, optimizer_tensors,
                                    save_checkpoint)

from conftest import build_tiny_bert_dir, write_tiny_dataset

BUDGET = {"kind": "flops", "target": 0.6, "seq_len": 16}
# Two rounds (so "after round 1" is mid-run), a teacher stage (no head: the teacher's weights
# travel in the checkpoint), dropout on (the RNG states matter), a few fine-tuning steps.
OPTS = {"max_train_examples": 64, "max_eval_examples": 16, "mask_steps": 6, "prune_rounds": 2, "finetune_steps": 8,
        "teacher_epochs": 1.0, "batch_size": 16, "seq_len": 16, "latency_runs": 1, "round_to": 1,
        "hidden_distill_weight": 0.1, "reconstruct": "weights", "calibration_rows": 32}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = build_tiny_bert_dir(root / "model", with_head=False)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    (model / "config.json").write_text(json.dumps(config))
    return model, write_tiny_dataset(root / "data.csv", rows=96)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


class StopAt:
    """A progress callback that cancels the run at the first report matching `when`."""

    def __init__(self, when):
        self.when, self.events, self.armed = when, [], True

    def __call__(self, stage, fraction, metrics):
        self.events.append((stage, fraction, dict(metrics)))
        if self.armed and self.when(stage, metrics, self.events):
            self.armed = False
            raise CompressionCancelled("stopped by the test")


def _after_round_1(stage, metrics, events):
    return stage == "masks" and any(s == "prune" for s, _, _ in events[:-1])


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """The uninterrupted run (no checkpoint folder at all)."""
    model, data = inputs
    out = tmp_path_factory.mktemp("ref") / "out"
    return compress(model, data, BUDGET, "vtrans", OPTS, out)


def test_checkpoint_round_trip_with_optimiser_state(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    flat, meta = optimizer_tensors(opt)
    save_checkpoint(tmp_path, "fp", "finetune", 3, 0.5, {"optim": meta, "note": [1, None]},
                    {"model": net.state_dict(), "optim": flat})
    ck = load_checkpoint(tmp_path, "fp")
    assert (ck.stage, ck.step, ck.manifest["fraction"], ck.state["note"]) == ("finetune", 3, 0.5, [1, None])
    net2 = torch.nn.Linear(4, 3)
    net2.load_state_dict(ck.tensors("model"))
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.1)
    load_optimizer(opt2, ck.tensors("optim"), ck.state["optim"])
    x = torch.randn(5, 4)
    for n, o in ((net, opt), (net2, opt2)):   # one more step each: identical when the state came back whole
        o.zero_grad()
        n(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(net.weight, net2.weight) and torch.equal(net.bias, net2.bias)
    # only the latest save is kept; another request's fingerprint is refused
    save_checkpoint(tmp_path, "fp", "finetune", 4, 0.6, {}, {"model": net.state_dict()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000002-model.safetensors", "manifest.json"]
    with pytest.raises(CheckpointInvalid, match="different request"):
        load_checkpoint(tmp_path, "other")
    assert load_checkpoint(tmp_path / "none", "fp") is None


def test_resume_after_a_mask_round_gives_the_same_model(inputs, reference, tmp_path):
    model, data = inputs
    ck_dir = tmp_path / "ck"
    stop = StopAt(_after_round_1)
    with pytest.raises(CompressionCancelled):
        compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", stop, checkpoint=ck_dir)
    manifest = json.loads((ck_dir / "manifest.json").read_text())
    assert manifest["stage"] == "round#1" and manifest["step"] == OPTS["mask_steps"]
    assert not (tmp_path / "out").exists()

    seen = []
    result = compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", lambda s, f, m: seen.append((s, f)),
                      checkpoint=ck_dir)
    diff = _max_diff(_weights(reference.output_dir), _weights(result.output_dir))
    assert diff == 0.0, f"max abs weight difference {diff}"
    assert result.metrics["pruned"]["accuracy"] == reference.metrics["pruned"]["accuracy"]
    assert result.metrics["history"] == reference.metrics["history"]
    assert result.metrics["checkpoint"]["resumed_from"] == {"stage": "round#1", "step": OPTS["mask_steps"]}
    # progress goes on from where the checkpoint was, not from 0
    assert seen[0][1] == pytest.approx(manifest["fraction"]) and seen[0][1] > 0.2
    assert [f for _, f in seen] == sorted(f for _, f in seen)
    assert "teacher" not in [s for s, _ in seen] and not list(ck_dir.iterdir())   # removed on success


def test_resume_after_the_teacher_stage_gives_the_same_model(inputs, reference, tmp_path):
    model, data = inputs
    ck_dir = tmp_path / "ck"
    with pytest.raises(CompressionCancelled):   # stopped in round 1: the teacher's checkpoint is the latest
        compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", StopAt(lambda s, m, e: s == "masks"),
                 checkpoint=ck_dir)
    assert json.loads((ck_dir / "manifest.json").read_text())["stage"] == "teacher"
    stages = []
    result = compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", lambda s, f, m: stages.append(s),
                      checkpoint=ck_dir)
    assert "teacher" not in stages and result.metrics["teacher"] == reference.metrics["teacher"]
    assert _max_diff(_weights(reference.output_dir), _weights(result.output_dir)) == 0.0


def test_resume_mid_finetune_gives_the_same_model(inputs, reference, tmp_path, monkeypatch):
    import vtrans_core.progress

    monkeypatch.setattr(vtrans_core.progress, "MIN_INTERVAL_SECONDS", 0.0)   # every step reported: stop at 5
    model, data = inputs
    ck_dir = tmp_path / "ck"
    stop = StopAt(lambda s, m, e: s == "finetune" and m.get("step") == 5)
    with pytest.raises(CompressionCancelled):   # checkpoint_seconds=0: a save after every step
        compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", stop, checkpoint=ck_dir, checkpoint_seconds=0)
    manifest = json.loads((ck_dir / "manifest.json").read_text())
    assert (manifest["stage"], manifest["step"]) == ("finetune", 5)
    result = compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", checkpoint=ck_dir, checkpoint_seconds=0)
    assert _max_diff(_weights(reference.output_dir), _weights(result.output_dir)) == 0.0
    assert result.metrics["checkpoint"]["resumed_from"] == {"stage": "finetune", "step": 5}


def test_faster_resumes_after_its_mask_round(inputs, tmp_path):
    model, data = inputs
    opts = {k: v for k, v in OPTS.items() if k not in ("prune_rounds", "finetune_steps", "hidden_distill_weight")}
    ref = compress(model, data, BUDGET, "faster", opts, tmp_path / "ref")
    ck_dir = tmp_path / "ck"
    with pytest.raises(CompressionCancelled):
        compress(model, data, BUDGET, "faster", opts, tmp_path / "out", StopAt(lambda s, m, e: s == "prune"),
                 checkpoint=ck_dir)
    assert json.loads((ck_dir / "manifest.json").read_text())["stage"] == "masks"
    result = compress(model, data, BUDGET, "faster", opts, tmp_path / "out", checkpoint=ck_dir)
    assert _max_diff(_weights(ref.output_dir), _weights(result.output_dir)) == 0.0
    assert result.metrics["checkpoint"]["resumed_from"]["stage"] == "masks"


def test_a_corrupt_checkpoint_means_a_clean_restart_with_a_warning(inputs, reference, tmp_path):
    model, data = inputs
    ck_dir = tmp_path / "ck"
    with pytest.raises(CompressionCancelled):
        compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", StopAt(_after_round_1), checkpoint=ck_dir)
    victim = next(p for p in ck_dir.iterdir() if p.name.endswith("-model.safetensors"))
    raw = bytearray(victim.read_bytes())
    raw[-5] ^= 0xFF                                  # one flipped byte in the weights
    victim.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="checkpoint not used: .*does not match its hash.*starting over"):
        result = compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", checkpoint=ck_dir)
    assert "resumed_from" not in result.metrics["checkpoint"]
    assert _max_diff(_weights(reference.output_dir), _weights(result.output_dir)) == 0.0   # a full clean run


def test_another_requests_checkpoint_is_not_used(inputs, tmp_path):
    model, data = inputs
    ck_dir = tmp_path / "ck"
    with pytest.raises(CompressionCancelled):
        compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", StopAt(_after_round_1), checkpoint=ck_dir)
    with pytest.warns(RuntimeWarning, match="different request"):
        result = compress(model, data, dict(BUDGET, target=0.7), "vtrans", OPTS, tmp_path / "out", checkpoint=ck_dir)
    assert "resumed_from" not in result.metrics["checkpoint"] and result.metrics["flops_fraction"] <= 0.71


def test_a_missing_checkpoint_is_a_clean_start(inputs, reference, tmp_path, recwarn):
    model, data = inputs
    result = compress(model, data, BUDGET, "vtrans", OPTS, tmp_path / "out", checkpoint=tmp_path / "nothing-here")
    assert not [w for w in recwarn if "checkpoint" in str(w.message)]
    assert result.metrics["checkpoint"]["saves"] == 4            # teacher, round 1, round 2, refit
    assert _max_diff(_weights(reference.output_dir), _weights(result.output_dir)) == 0.0   # saving changes nothing


def test_the_fingerprint_follows_the_model_files_not_their_folder(inputs, tmp_path):
    """A retry downloads the model to a new folder: same files, same request. Other weights (a
    file of another size) are another request, even with the same config."""
    import shutil

    from vtrans_core.budget import Budget
    from vtrans_core.entry import resolve_model_source
    from vtrans_core.options import CompressionOptions
    from vtrans_core.resume import request_fingerprint

    model, data = inputs
    opts, budget = CompressionOptions.parse(OPTS, "vtrans"), Budget.parse(BUDGET)

    def fingerprint(folder):
        return request_fingerprint(*resolve_model_source(str(folder)), data, None, budget, "vtrans", opts, None)

    copy = shutil.copytree(model, tmp_path / "elsewhere")
    assert fingerprint(copy) == fingerprint(model)
    with open(copy / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * 64)
    assert fingerprint(copy) != fingerprint(model)

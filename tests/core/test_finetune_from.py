"""`finetune_from` (issue #11): by default the learned plan slices the dense model's ORIGINAL
weights; "trained" keeps the weights the mask rounds trained. Checked on the delivered files."""
from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification

from vtrans_core import compress
from vtrans_core.plan import PruningPlan

BUDGET = {"kind": "flops", "target": 0.6, "seq_len": 16}
OPTS = {"mask_steps": 6, "finetune_steps": 0, "prune_rounds": 2, "latency_runs": 1, "round_to": 1, "seq_len": 16,
        "lr": 1e-3, "layout": "per_layer", "max_eval_examples": 8}


def _kept_weights(model_dir, plan: PruningPlan, dense):
    """(delivered, dense sliced by the plan) for layer 0's FFN input projection."""
    from vtrans_core import load_pruned

    pruned = load_pruned(model_dir)
    layer = 0 if plan.ffn_blocks[0] else next(i for i, f in enumerate(plan.ffn_blocks) if f)
    w_dense = dense.bert.encoder.layer[layer].intermediate.dense.weight
    expect = w_dense[plan.ffn[layer]][:, plan.hidden]
    got = pruned.bert.encoder.layer[layer].intermediate.dense.weight
    return got, expect


def test_default_slices_the_dense_weights_and_trained_does_not(tiny_model_dir, tiny_dataset_csv, tmp_path):
    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    out = tmp_path / "dense"
    r = compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans", OPTS, out)
    assert r.metrics["method_info"]["finetune_from"] == "dense"
    plan = PruningPlan.from_json((out / "plan.json").read_text())
    got, expect = _kept_weights(out, plan, dense)
    assert r.metrics["flops_fraction"] <= BUDGET["target"] + 0.01     # something was really cut
    torch.testing.assert_close(got, expect)     # untouched: no fine-tuning ran, the gates were never folded in

    out2 = tmp_path / "trained"
    r2 = compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans", {**OPTS, "finetune_from": "trained", "mask_weights": "trained"}, out2)
    # slicing wraps the frozen teacher for a moment: it must come back untouched (same dense score)
    assert r.metrics["dense"]["accuracy"] == r2.metrics["dense"]["accuracy"]
    assert r.metrics["dense"]["train_accuracy"] == r2.metrics["dense"]["train_accuracy"]
    plan2 = PruningPlan.from_json((out2 / "plan.json").read_text())
    got2, expect2 = _kept_weights(out2, plan2, dense)
    assert not torch.allclose(got2, expect2)    # the mask rounds trained these weights (lr 1e-3)


def test_reconstruct_refits_the_sliced_dense_weights_before_finetuning(tiny_model_dir, tiny_dataset_csv, tmp_path):
    """vtrans + reconstruct "weights": the output projections are refitted toward the dense outputs
    (or left as they were, with the reason), the input projections stay the dense slice."""
    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    out = tmp_path / "recon"
    opts = {**OPTS, "reconstruct": "weights", "calibration_rows": 48, "batch_size": 8}
    r = compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans", opts, out)
    info = r.metrics["method_info"]["reconstruct"]
    assert info["mode"] == "weights" and info["rows"] == 48
    assert "refine" in r.metrics["stage_seconds"]
    plan = PruningPlan.from_json((out / "plan.json").read_text())
    got, expect = _kept_weights(out, plan, dense)
    torch.testing.assert_close(got, expect)     # not an output projection: untouched
    from vtrans_core import load_pruned

    pruned = load_pruned(out)
    layer = next(i for i, f in enumerate(plan.ffn_blocks) if f)
    out_w = pruned.bert.encoder.layer[layer].output.dense.weight
    dense_out = dense.bert.encoder.layer[layer].output.dense.weight[plan.hidden][:, plan.ffn[layer]]
    if info["applied"]:
        assert info["blocks_refit"] > 0
        assert any(not torch.allclose(pruned.bert.encoder.layer[i].output.dense.weight,
                                      dense.bert.encoder.layer[i].output.dense.weight[plan.hidden][:, plan.ffn[i]])
                   for i, f in enumerate(plan.ffn_blocks) if f)
    else:
        assert info["reason"]
        torch.testing.assert_close(out_w, dense_out)


def test_refit_rows_stop_at_the_token_cap(tiny_model_dir, tiny_dataset_csv, tmp_path):
    """The refit takes calibration_rows rows, fewer when they hold more than calibration_tokens
    real tokens (long emails); what it used is in the metrics and the fine-tuning pays only for it."""
    from vtrans_core.data import Encoded
    from vtrans_core.methods import refit_rows
    from vtrans_core.options import CompressionOptions

    enc = Encoded([[1] * 10] * 50, None, [0] * 50, 0)
    opts = CompressionOptions.parse({"calibration_rows": 40, "calibration_tokens": 95}, "vtrans")
    assert refit_rows(enc, opts) == 9                      # 9 x 10 tokens fit under 95, the 10th does not
    assert refit_rows(enc, CompressionOptions.parse({"calibration_rows": 40}, "vtrans")) == 40   # 128k: rows decide
    assert refit_rows(Encoded([[1] * 500] * 5, None, [0] * 5, 0), opts) == 1   # never zero rows
    # resolved per method (options.method_defaults says why): faster's refit is the one it has time for
    assert (CompressionOptions.parse(None, "faster").calibration_tokens,
            CompressionOptions.parse(None, "vtrans").calibration_tokens) == (64 * 1024, 128 * 1024)

    out = tmp_path / "capped"
    opts = {**OPTS, "reconstruct": "weights", "calibration_rows": 48, "calibration_tokens": 60, "batch_size": 8}
    r = compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans", opts, out)
    info = r.metrics["method_info"]["reconstruct"]
    assert 0 < info["rows"] < 48 and info["tokens"] <= 60


def test_a_small_file_runs_the_short_ranking_end_to_end(tiny_model_dir, tiny_dataset_csv, tmp_path, monkeypatch):
    """With no step counts given, a file too small for two epochs to hold the ranking and the
    floor (schedule.is_small_file) gets short mask rounds, the short refit's token cap and the
    fine-tuning floor; the metrics say which schedule ran."""
    import vtrans_core.methods.vtrans as vtrans_method

    monkeypatch.setattr(vtrans_method, "SHORT_CALIBRATION_TOKENS", 60)   # small enough to bite on 96 short rows
    opts = {"latency_runs": 1, "round_to": 1, "seq_len": 16, "batch_size": 8, "max_eval_examples": 8,
            "layout": "per_layer"}
    r = compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans", opts, tmp_path / "small")
    info = r.metrics["method_info"]
    assert (info["schedule"], info["mask_steps_per_round"], info["finetune_steps"]) == ("small-file", 20, 120)
    assert 0 < info["reconstruct"]["tokens"] <= 60 and info["reconstruct"]["rows"] < info["train_rows"]
    assert r.metrics["flops_fraction"] <= BUDGET["target"] + 1e-6


def test_reconstruct_needs_the_dense_weights(tiny_model_dir, tiny_dataset_csv, tmp_path):
    import pytest

    from vtrans_core.errors import CompressionError
    from vtrans_core.options import CompressionOptions

    assert CompressionOptions.parse({"reconstruct": "scales"}, "vtrans").reconstruct == "scales"
    assert CompressionOptions.parse(None, "vtrans").reconstruct == "weights"      # the default refit
    # fine-tuning the rounds' weights: nothing dense-matching to refit, so the default is off there
    assert CompressionOptions.parse({"finetune_from": "trained"}, "vtrans").reconstruct == "off"
    with pytest.raises(CompressionError) as err:
        CompressionOptions.parse({"reconstruct": "scales", "finetune_from": "trained"}, "vtrans")
    assert err.value.field == "options.reconstruct"

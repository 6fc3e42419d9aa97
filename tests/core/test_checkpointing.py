"""Activation checkpointing (vtrans_core/checkpointing.py, issue #13 item 5): the layers'
activations are recomputed in backward instead of kept, the gradients (masks and weights, with
the gates' noise and dropout on) are those of the plain forward, "auto" turns it on only when the
job does not fit without it, and a compression with it on gives the same model."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from .decoders import decoder_config, decoder_inputs, save_tiny_lm, tiny_decoder, write_text_corpus
from vtrans_core import compress
from vtrans_core.checkpointing import checkpointed_layers
from vtrans_core.errors import CompressionError
from vtrans_core.lm_runtime import check_memory, estimate_peak_bytes
from vtrans_core.prunable import PrunableModel

SEQ = 16


def _grads_and_saved_bytes(family: str, recompute: bool, train_weights: bool, draw_first: bool = False):
    """One sampled-gates forward/backward; the gradients and the bytes autograd kept for backward.
    `draw_first`: draw every gate at the start of the forward, as checkpointing does."""
    model = tiny_decoder(family, layers=3)
    pm = PrunableModel(model)
    pm.keep_gates = draw_first
    pm.set_sampling(True)
    model.train(train_weights)   # gpt2: dropout on when weights train, so its replay is checked too
    for p in model.parameters():
        p.requires_grad_(train_weights)
    for p in pm.mask_parameters():
        p.requires_grad_(True)
    batch = decoder_inputs(length=24)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    torch.manual_seed(7)
    with checkpointed_layers(model, recompute, pm), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch, labels=batch["input_ids"])
        loss = out.loss + 1e-3 * pm.kl()
    loss.backward()
    named = dict(model.named_parameters()) | {f"mask.{k}": p for k, p in pm.masks.named_parameters()}
    return {k: p.grad.clone() for k, p in named.items() if p.grad is not None}, saved[0]


# llama without dropout: the gates drawn up front take the same random numbers as drawn where
# used, so the gradients equal the stock forward's. gpt2 with dropout on: its embedding dropout
# draws between the gates, so the reference draws its gates up front too; what is checked is that
# backward's recomputation replays the forward's gates and dropout masks exactly.
@pytest.mark.parametrize("family,train_weights", [("llama-gqa", False), ("gpt2", True)])
def test_recomputed_layers_give_the_same_gradients_and_keep_less(family, train_weights):
    plain, plain_bytes = _grads_and_saved_bytes(family, False, train_weights, draw_first=train_weights)
    ckpt, ckpt_bytes = _grads_and_saved_bytes(family, True, train_weights)
    assert plain.keys() == ckpt.keys() and any(k.startswith("mask.") for k in plain)
    assert all(k.startswith("mask.") for k in plain) != train_weights   # frozen weights get no gradient
    for k in plain:
        # the recomputation must see the forward's own gate samples (PrunableModel.keep_gates)
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5, msg=k)
    assert ckpt_bytes < 0.6 * plain_bytes, (ckpt_bytes, plain_bytes)


def test_layers_get_their_own_forward_back():
    model = tiny_decoder("llama-gqa")
    batch = decoder_inputs()
    with torch.no_grad():
        before = model(**batch).logits
    with checkpointed_layers(model):
        assert all("forward" in vars(layer) for layer in model.model.layers)
        with torch.no_grad():   # no grad: the layers run as they are
            torch.testing.assert_close(model(**batch).logits, before)
    assert not any("forward" in vars(layer) for layer in model.model.layers)
    patched = model.model.layers[0].forward = lambda *a, **k: type(model.model.layers[0]).forward(
        model.model.layers[0], *a, **k)   # an instance patch made before ours is kept
    with checkpointed_layers(model):
        assert model.model.layers[0].forward is not patched
    assert model.model.layers[0].forward is patched


def test_the_estimate_counts_one_layer_and_auto_turns_it_on_only_when_needed():
    cfg = decoder_config("llama-gqa", layers=8).to_dict()
    plain = estimate_peak_bytes(cfg, "float32", 8, 1024, trains_weights=False)
    ckpt = estimate_peak_bytes(cfg, "float32", 8, 1024, trains_weights=False, checkpointing=True)
    H, F, L = 48, 64, 8
    assert plain["parts"]["activations"] == 8 * 1024 * L * (16 * H + 4 * F) * 4
    assert ckpt["parts"]["activations"] == 8 * 1024 * (L * H + 16 * H + 4 * F) * 4
    assert ckpt["total_bytes"] < plain["total_bytes"] and ckpt["activation_checkpointing"] == "on"
    between = (plain["total_bytes"] + ckpt["total_bytes"]) / 2 / 1e9
    roomy = check_memory(cfg, "float32", 8, 1024, False, "cpu", 100.0, activation_checkpointing="auto")
    assert roomy["activation_checkpointing"] == "off"   # fits as it is: no extra forward
    tight = check_memory(cfg, "float32", 8, 1024, False, "cpu", between, activation_checkpointing="auto")
    assert tight["activation_checkpointing"] == "on" and tight["total_bytes"] == ckpt["total_bytes"]
    with pytest.raises(CompressionError) as refused:
        check_memory(cfg, "float32", 8, 1024, False, "cpu", between, activation_checkpointing="off")
    assert refused.value.field == "options.batch_size" and "activation_checkpointing 'on'" in refused.value.message


def test_faster_s_fisher_pass_with_checkpointing_gives_the_same_model(tmp_path, monkeypatch):
    """`faster` ranks by Fisher information (one backward per batch, no mask training): the
    same plan and weights with the layers recomputed."""
    import vtrans_core.checkpointing as ckpt

    calls = []

    def counted(fn, *args, **kwargs):
        if isinstance(getattr(fn, "__self__", None), torch.nn.Module):   # a layer's forward (not the loss's windows)
            calls.append(1)
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(ckpt, "checkpoint", counted)
    model_dir = save_tiny_lm("gpt2", tmp_path / "model")
    corpus = write_text_corpus(tmp_path / "corpus.txt", n_docs=40, words=60)
    budget = {"kind": "params", "target": 0.7, "seq_len": SEQ}
    opts = {"seq_len": SEQ, "prefill_batch": 2, "prefill_seq": 32, "decode_tokens": 4, "latency_runs": 1,
            "generation_samples": 1, "round_to": 1}
    runs = {"off": compress(str(model_dir), str(corpus), budget, "faster", {**opts, "activation_checkpointing": "off"},
                            output_dir=tmp_path / "off").metrics}
    assert not calls
    runs["on"] = compress(str(model_dir), str(corpus), budget, "faster", {**opts, "activation_checkpointing": "on"},
                          output_dir=tmp_path / "on").metrics
    assert runs["on"]["method_info"]["importance"] == "fisher" and calls   # the layers were recomputed
    assert runs["on"]["kept"] == runs["off"]["kept"]
    assert runs["on"]["pruned"]["perplexity"] == pytest.approx(runs["off"]["pruned"]["perplexity"], rel=1e-4)


def test_a_compression_with_checkpointing_gives_the_same_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = save_tiny_lm("llama-gqa", tmp_path / "model")
    corpus = write_text_corpus(tmp_path / "corpus.txt", n_docs=40, words=60)
    budget = {"kind": "params", "target": 0.7, "seq_len": SEQ}
    opts = {"seq_len": SEQ, "prefill_batch": 2, "prefill_seq": 32, "decode_tokens": 4, "latency_runs": 1,
            "generation_samples": 1, "round_to": 1, "mask_steps": 4, "prune_rounds": 1, "finetune_steps": 4}
    runs = {mode: compress(str(model_dir), str(corpus), budget, "fast", {**opts, "activation_checkpointing": mode},
                           output_dir=tmp_path / mode) for mode in ("off", "on")}
    on, off = runs["on"].metrics, runs["off"].metrics
    assert on["memory"]["activation_checkpointing"] == "on" and off["memory"]["activation_checkpointing"] == "off"
    assert on["memory"]["estimate_parts"]["activations"] < off["memory"]["estimate_parts"]["activations"]
    assert on["kept"] == off["kept"]
    a, b = (load_file(str(runs[m].output_dir / "model.safetensors")) for m in ("off", "on"))
    assert a.keys() == b.keys()
    for k in a:   # the same masks, cut and fine-tuning: only float summation order may differ
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    assert on["pruned"]["perplexity"] == pytest.approx(off["pruned"]["perplexity"], rel=1e-4)
    AutoModelForCausalLM.from_pretrained(runs["on"].output_dir)   # a stock checkpoint, as without it
    # "auto" (the default): off while the job fits, on when only the checkpointed job fits
    assert compress(str(model_dir), str(corpus), budget, "fast", opts, output_dir=tmp_path / "auto"
                    ).metrics["memory"]["activation_checkpointing"] == "off"
    # (without the refit, whose stage would set this tiny model's peak whatever the activations)
    cfg, batch = json.loads((model_dir / "config.json").read_text()), off["options"]["batch_size"]
    totals = [estimate_peak_bytes(cfg, "float32", batch, SEQ, True, checkpointing=c)["total_bytes"] for c in (False, True)]
    assert totals[1] < totals[0]
    tight = compress(str(model_dir), str(corpus), budget, "fast",
                     {**opts, "reconstruct": "off", "max_memory_gb": sum(totals) / 2 / 1e9},
                     output_dir=tmp_path / "tight").metrics
    assert tight["memory"]["activation_checkpointing"] == "on" and tight["options"]["activation_checkpointing"] == "on"
    with pytest.raises(CompressionError) as bad:
        compress(str(model_dir), str(corpus), budget, "fast", {**opts, "activation_checkpointing": "yes"},
                 output_dir=tmp_path / "bad")
    assert bad.value.field == "options.activation_checkpointing"

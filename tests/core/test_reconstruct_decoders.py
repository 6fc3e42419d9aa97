"""The least-squares refit (reconstruct.py) on pre-LN decoders: tiny random LLaMA (grouped-query
attention, RMSNorm, gated FFN) and GPT-2 (Conv1D weights stored [in, out], fused q|k|v, biases).
The sums fitted are the residual stream after each block (adapter.block_sums)."""
from __future__ import annotations

import copy

import pytest
import torch

from .decoders import VOCAB, tiny_decoder
from vtrans_core.families import adapter_for
from vtrans_core.prunable import PrunableModel
from vtrans_core.reconstruct import reconstruct

CASES = ["llama-gqa", "gpt2"]


def _lm_batches(n: int = 10, batch: int = 4, length: int = 16, padded: bool = False) -> list[dict]:
    """Packed-window batches as language_modeling.window_batches makes them (no padding), or
    left-padded ones (one row of each batch) for the masked path."""
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        ids = torch.randint(3, VOCAB, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        if padded:
            ids[0, :5], mask[0, :5] = 0, 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids, "index": torch.arange(batch)})
    return out


def _gap(a, b, batches) -> float:
    """Mean squared logit gap over real tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x in batches:
            m = x["attention_mask"].bool()
            d = a(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits[m] - \
                b(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits[m]
            total, count = total + float(d.pow(2).sum()), count + d.numel()
    return total / count


def _cut(model, structures, target=0.6, seed=0):
    pm = PrunableModel(model, structures=structures, layout="per_layer")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in pm.masks.values():
            m.log_sigma2.copy_(-9.0 + torch.randn(m.log_sigma2.shape, generator=g))
    plan = pm.plan_for({"kind": "params", "target": target}, round_to=1)
    return pm.materialize(plan).remove_hooks(), plan


def test_decoder_sums_are_the_residual_stream_after_each_block():
    model = tiny_decoder("llama-gqa")
    taps = adapter_for(model).block_sums(model, 0)
    layer = model.model.layers[0]
    assert taps == {"attn": (layer.post_attention_layernorm, "input"), "ffn": (layer, "output")}
    gpt2 = tiny_decoder("gpt2")
    assert adapter_for(gpt2).block_sums(gpt2, 1)["attn"] == (gpt2.transformer.h[1].ln_2, "input")


def test_block_error_is_the_residual_stream_gap_on_kept_channels():
    """The held-out error of layer 0's attention before any fit is exactly the squared gap between
    the pruned and dense residual streams after attention, the dense one read at the kept channels."""
    dense = tiny_decoder("llama-gqa", layers=2)
    model, plan = _cut(copy.deepcopy(dense), ("hidden", "heads", "ffn"))
    batches = _lm_batches()

    def stream(m, x):
        seen = []
        h = m.model.layers[0].post_attention_layernorm.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
        with torch.no_grad():
            m(input_ids=x["input_ids"])
        h.remove()
        return seen[0]

    keep = torch.tensor(plan.hidden)
    held = (batches[4], batches[9])     # every 5th batch is held out
    expected = sum(float((stream(model, b) - stream(dense, b)[..., keep]).pow(2).sum()) for b in held)
    first = reconstruct(model, dense, plan, batches, mode="scales", relative=False)["per_block"][0]
    assert (first["layer"], first["block"]) == (0, "attn")
    assert first["held_out_before"] == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("mode", ["scales", "weights"])
@pytest.mark.parametrize("name", CASES)
def test_nothing_pruned_leaves_the_logits_unchanged(name, mode):
    dense = tiny_decoder(name, layers=2)
    pm = PrunableModel(copy.deepcopy(dense), structures=("hidden", "heads", "ffn"), layout="per_layer")
    plan = pm.plan_from_masks()
    model = pm.materialize(plan).remove_hooks()
    batches = _lm_batches(n=6, padded=True)
    summary = reconstruct(model, dense, plan, batches, mode=mode)
    assert len(summary["per_block"]) == 4     # 2 layers x (attention, FFN), all present
    assert all(b["held_out_before"] < 1e-6 for b in summary["per_block"])
    assert _gap(model, dense, batches) < 1e-4 ** 2
    logits = lambda m: m(input_ids=batches[0]["input_ids"]).logits   # noqa: E731
    with torch.no_grad():
        assert torch.allclose(logits(model), logits(dense), atol=1e-4)


@pytest.mark.parametrize("mode", ["scales", "weights"])
@pytest.mark.parametrize("name", CASES)
def test_pruned_decoder_error_goes_down(name, mode):
    dense = tiny_decoder(name, layers=2)
    model, plan = _cut(copy.deepcopy(dense), ("hidden", "heads", "ffn"))
    assert len(plan.hidden) < dense.config.hidden_size if name != "gpt2" else len(plan.hidden) < dense.config.n_embd
    assert any(len(f) < 64 for f in plan.ffn) and any(len(h) < plan.reference.heads[0] for h in plan.heads)
    batches = _lm_batches()
    before = _gap(model, dense, batches)
    summary = reconstruct(model, dense, plan, batches, mode=mode)
    assert summary["applied"], summary["reason"]
    assert summary["weighting"] == "relative"      # pre-LN: errors relative to the stream's RMS
    kept = [b for b in summary["per_block"] if b["kept"]]
    assert kept and all(b["held_out_after"] < b["held_out_before"] for b in kept)
    assert summary["held_out_kl_after"] < summary["held_out_kl_before"]   # what an LM is judged by
    assert summary["held_out_logit_mse_after"] < summary["held_out_logit_mse_before"]
    assert _gap(model, dense, batches) < before
    assert summary["fit_batches"] == 8 and summary["held_out_batches"] == 2


def test_removed_blocks_are_skipped_and_the_rest_refitted():
    dense = tiny_decoder("llama-gqa", layers=3)
    pm = PrunableModel(copy.deepcopy(dense), structures=("ffn", "attn_block", "ffn_block"), layout="per_layer")
    plan = pm.plan_from_masks()
    plan.attn_blocks[1], plan.heads[1] = False, []       # layer 1 keeps only its FFN
    plan.ffn_blocks[2], plan.ffn[2] = False, []          # layer 2 keeps only its attention
    plan.ffn[0] = plan.ffn[0][: len(plan.ffn[0]) // 2]
    model = pm.materialize(plan).remove_hooks()
    batches = _lm_batches(padded=True)
    before = _gap(model, dense, batches)
    summary = reconstruct(model, dense, plan, batches, mode="weights")
    fitted = {(b["layer"], b["block"]) for b in summary["per_block"]}
    assert fitted == {(0, "attn"), (0, "ffn"), (1, "ffn"), (2, "attn")}
    assert summary["applied"], summary["reason"]
    assert _gap(model, dense, batches) < before


def test_gpt2_conv1d_weights_are_written_back_transposed():
    """A Conv1D's [in, out] weight: scaling one FFN neuron must scale its ROW, not a column."""
    dense = tiny_decoder("gpt2", layers=1)
    pm = PrunableModel(copy.deepcopy(dense), structures=("ffn",), layout="per_layer")
    plan = pm.plan_from_masks()
    model = pm.materialize(plan).remove_hooks()
    c_proj = model.transformer.h[0].mlp.c_proj
    with torch.no_grad():
        c_proj.weight[:6] *= 0.5                  # six neurons at half strength
    summary = reconstruct(model, dense, plan, _lm_batches(n=8, batch=8), mode="scales")
    assert summary["applied"]
    ratio = c_proj.weight / dense.transformer.h[0].mlp.c_proj.weight
    assert ((ratio - 1).abs() < 0.05).all()
    assert summary["held_out_logit_mse_after"] < 0.01 * summary["held_out_logit_mse_before"]


@pytest.mark.parametrize("family", ["bert", *CASES])
def test_outputs_derived_after_an_ffn_refit_match_running_the_layer_again(family, monkeypatch):
    """After an FFN refit the next layer's inputs come from the recorded sums (no 4th run of the
    layer): the refitted model must behave as the plain re-run's does, padding included."""
    import vtrans_core.reconstruct as rec
    from .conftest import tiny_inputs, tiny_model

    if family == "bert":
        dense = tiny_model("bert", layers=3)
        batches = [tiny_inputs(seed=10 + i, batch=4, length=12) for i in range(6)]
        pm = PrunableModel(copy.deepcopy(dense), structures=("hidden", "heads", "ffn"), layout="per_layer")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in pm.masks.values():
                m.log_sigma2.copy_(-9.0 + torch.randn(m.log_sigma2.shape, generator=g))
        plan = pm.plan_for({"kind": "flops", "target": 0.6}, round_to=1)
        model = pm.materialize(plan).remove_hooks()
    else:
        dense = tiny_decoder(family, layers=3)
        batches = _lm_batches(padded=True)
        # a cut where later layers' refits are kept too (on these tiny random decoders some seeds keep only layer 0's)
        model, plan = _cut(copy.deepcopy(dense), ("hidden", "heads", "ffn"), seed=3)
    rerun = copy.deepcopy(model)
    derived = []
    real = rec._outputs_after_ffn_refit

    def spy(*args):
        out = real(*args)
        derived.append(out is not None)
        return out

    monkeypatch.setattr(rec, "_outputs_after_ffn_refit", spy)
    summary = reconstruct(model, copy.deepcopy(dense), plan, batches, mode="weights")
    kept = [(b["layer"], b["block"]) for b in summary["per_block"] if b["kept"]]
    first_ffn = min(layer for layer, block in kept if block == "ffn")
    assert summary["applied"] and derived[0] and any(layer > first_ffn for layer, _ in kept), kept
    monkeypatch.setattr(rec, "_outputs_after_ffn_refit", lambda *args: None)
    reconstruct(rerun, copy.deepcopy(dense), plan, batches, mode="weights")
    with torch.no_grad():
        for x in batches:
            x = {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]}
            assert torch.allclose(model(**x).logits, rerun(**x).logits, rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(model.state_dict().items(), rerun.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-3), name   # the solves amplify float-rounding differences


def test_an_lm_refit_that_lowers_the_kl_but_makes_the_text_less_likely_is_reverted():
    """The revert rule: the fit's objective (KL for an LM, logit error otherwise) must drop, and an
    LM's next-token loss on the held-out windows must not rise (Kwon's scales on SmolLM2 lowered
    the logit error while perplexity rose)."""
    from vtrans_core.reconstruct import _rose

    g = torch.Generator().manual_seed(0)
    nll = 3.0 + torch.rand(400, generator=g, dtype=torch.float64)
    noise = 0.05 * torch.randn(400, generator=g, dtype=torch.float64)
    lm = {"kl": 0.5, "nll": nll, "mse": 9.0}
    assert _rose(lm, {"kl": 0.4, "nll": nll - 0.1 + noise, "mse": 9.5}) is None        # better text
    assert _rose(lm, {"kl": 0.4, "nll": nll + noise - noise.mean(), "mse": 9.5}) is None   # unchanged, noise
    why = _rose(lm, {"kl": 0.4, "nll": nll + 0.05 + noise, "mse": 1.0})
    assert why is not None and "next-token loss rose" in why                         # worse beyond the noise
    assert "KL" in _rose(lm, {"kl": 0.6, "nll": nll - 1.0})
    assert "logit error" in _rose({"kl": None, "nll": None, "mse": 1.0}, {"kl": None, "nll": None, "mse": 1.5})
    assert _rose({"kl": None, "nll": None, "mse": 1.0}, {"kl": None, "nll": None, "mse": 0.5}) is None

    dense = tiny_decoder("llama-gqa")
    model, plan = _cut(copy.deepcopy(dense), ("hidden", "heads", "ffn"))
    summary = reconstruct(model, dense, plan, _lm_batches(), mode="weights")
    assert summary["held_out_nll_before"] > 0 and summary["held_out_nll_after"] > 0
    if summary["applied"]:
        assert summary["held_out_nll_after"] <= summary["held_out_nll_before"]
    else:
        assert "reverted" in summary["reason"] or "no block" in summary["reason"]


def test_the_held_out_comparison_window_by_window_equals_the_whole_batch_one():
    """_logit_gap takes an LM's statistics one window at a time (memory: reconstruct.py); on padded
    batches its figures are the whole-batch formulas' (mean squared gap per row, KL(dense ||
    pruned) per real token, next-token losses where both tokens are real)."""
    import torch.nn.functional as F

    from vtrans_core.reconstruct import _logit_gap

    a, b = tiny_decoder("llama-gqa", seed=0), tiny_decoder("llama-gqa", seed=1)
    batches = _lm_batches(n=3, padded=True)
    mse, kl, nll = _logit_gap(a, b, batches)
    ref_mse, ref_kl, tokens, ref_nll = 0.0, 0.0, 0, []
    with torch.no_grad():
        for bt in batches:
            inputs = {"input_ids": bt["input_ids"], "attention_mask": bt["attention_mask"]}
            p, d = a(**inputs).logits, b(**inputs).logits
            real = bt["attention_mask"].bool()
            ref_mse += float((p - d).pow(2)[real].sum())
            lp, ld = F.log_softmax(p[real], -1), F.log_softmax(d[real], -1)
            ref_kl += float((ld.exp() * (ld - lp)).sum())
            tokens += int(real.sum())
            both = real[:, :-1] & real[:, 1:]
            ref_nll.append(F.cross_entropy(p[:, :-1][both], bt["labels"][:, 1:][both], reduction="none"))
    assert mse == pytest.approx(ref_mse / 12, rel=1e-5) and kl == pytest.approx(ref_kl / tokens, rel=1e-5)
    torch.testing.assert_close(nll, torch.cat(ref_nll).double())

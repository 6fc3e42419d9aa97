"""Decoder surgery (LLaMA family, GPT-2): masked forward vs sliced model, GQA-valid plans, stock
checkpoints that plain transformers loads and generates with, per_layer round trips, and the
analytic counts against sum(numel) / FlopCounterMode."""
from __future__ import annotations

import random

import pytest
import torch

from .conftest import perturb_masks
from .decoders import DECODERS, decoder_config, decoder_inputs, numel, tiny_decoder
from vtrans_core.flops import count_flops, count_params
from vtrans_core.loading import load_pruned, save_pruned
from vtrans_core.prunable import PrunableModel

ATOL = 2e-5


@pytest.fixture
def no_torch_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.load (pickle) must not be used")
    monkeypatch.setattr(torch, "load", refuse)


@pytest.fixture(params=sorted(DECODERS))
def decoder(request):
    return request.param


def _logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def _real(x):
    """Compare only positions that are real tokens (left padding is junk in any model)."""
    return x["attention_mask"].bool()


def _close(a, b, x, atol=ATOL):
    m = _real(x)
    return torch.allclose(a[m], b[m], atol=atol)


def _groups_ok(shape, plan) -> bool:
    """Every kept layer keeps the same number of query heads in each kept k/v group."""
    for l, heads in enumerate(plan.heads):
        if not plan.attn_blocks[l]:
            continue
        r, counts = shape.group_size(l), {}
        for j in heads:
            counts[j // r] = counts.get(j // r, 0) + 1
        if len(set(counts.values())) != 1:
            return False
    return True


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
def test_nothing_pruned_equals_plain_model(decoder, layout):
    model = tiny_decoder(decoder)
    x = decoder_inputs()
    plain = _logits(model, x)
    pm = PrunableModel(model, layout=layout)
    assert torch.equal(_logits(pm.model, x), plain)
    new = pm.materialize(pm.plan_from_masks())
    assert torch.allclose(_logits(new.model, x), plain, atol=ATOL)
    assert numel(new.model) == numel(model)
    pm.remove_hooks()
    assert torch.equal(_logits(model, x), plain)


def _edit(plan, shape, structure, rng):
    L = shape.n_layers
    if structure == "hidden":
        plan.hidden = sorted(rng.sample(plan.hidden, shape.hidden - 8))
    elif structure == "group":        # drop a whole k/v group (its query heads) in layer 0
        r = shape.group_size(0)
        if shape.kv[0] > 1:
            plan.heads[0] = [j for j in plan.heads[0] if j // r != 1]
        else:                          # a single group (MQA): one query head of it instead
            plan.heads[0] = plan.heads[0][1:]
    elif structure == "query":        # one query head out of every group of layer 1
        r = shape.group_size(1)
        plan.heads[1] = [j for j in plan.heads[1] if j % r != 0] if r > 1 else plan.heads[1][1:]
    elif structure == "ffn":
        plan.ffn = [sorted(rng.sample(f, len(f) - 24)) for f in plan.ffn]
    elif structure == "attn_block":
        plan.attn_blocks[0], plan.heads[0] = False, []
    elif structure == "ffn_block":
        plan.ffn_blocks[L - 1], plan.ffn[L - 1] = False, []
    return plan


@pytest.mark.parametrize("structure", ["hidden", "group", "query", "ffn", "attn_block", "ffn_block"])
def test_sliced_equals_hard_masked(decoder, structure):
    model = tiny_decoder(decoder)
    x = decoder_inputs()
    pm = PrunableModel(model)
    perturb_masks(pm)                   # mu in 0.5..1.5: folding the gates is exercised
    soft = _logits(pm.model, x)
    plan = _edit(pm.plan_from_masks(), pm.shape, structure, random.Random(0))
    assert _groups_ok(pm.shape, plan)
    pm.apply_plan(plan)
    hard = _logits(pm.model, x)
    assert not torch.allclose(hard, soft)          # the edit removed something that mattered
    new = pm.materialize(plan)
    assert _close(_logits(new.model, x), hard, x)  # the new masks (mu = 1) change nothing
    small = new.remove_hooks()
    assert _close(_logits(small, x), hard, x)
    assert numel(small) < numel(model)
    assert count_params(small) == numel(small) == count_params(plan)


def test_tied_head_stays_tied_and_is_sliced_once():
    model = tiny_decoder("qwen3")
    pm = PrunableModel(model)
    perturb_masks(pm)
    plan = _edit(pm.plan_from_masks(), pm.shape, "hidden", random.Random(0))
    small = pm.materialize(plan).remove_hooks()
    assert small.lm_head.weight is small.model.embed_tokens.weight
    assert small.lm_head.weight.shape == (100, len(plan.hidden))


@pytest.mark.parametrize("kind", ["params", "flops"])
def test_budget_plans_are_valid_gqa_and_slice_exactly(decoder, kind):
    model = tiny_decoder(decoder)
    x = decoder_inputs()
    pm = PrunableModel(model)
    perturb_masks(pm, seed=3)
    plan = pm.plan_for({"kind": kind, "target": 0.55, "seq_len": 32}, round_to=4)
    assert plan.fraction(kind, 32) <= 0.55 and _groups_ok(pm.shape, plan)
    pm.apply_plan(plan)
    hard = _logits(pm.model, x)
    small = pm.materialize(plan).remove_hooks()
    assert _close(_logits(small, x), hard, x)
    assert count_params(small) == numel(small)


def test_planner_prunes_inside_groups_and_whole_groups():
    """With group 1 of layer 0 uninformative and one query head of every group of layer 1
    uninformative, a small cut removes exactly those: both unit kinds are live."""
    model = tiny_decoder("llama-gqa")          # 6 query heads, 2 k/v groups of 3
    pm = PrunableModel(model, structures={"heads"})
    with torch.no_grad():
        m = pm.masks["heads"]
        m.log_sigma2.fill_(-9.0)
        m.log_sigma2[0, 3:6] = 4.0               # group 1 of layer 0
        m.log_sigma2[1, [0, 3]] = 3.0            # head 0 of each group of layer 1
    want = pm.plan_from_masks()
    want.heads = [[0, 1, 2], [1, 2, 4, 5]]
    plan = pm.plan_for({"kind": "params", "target": want.fraction("params")}, round_to=1)
    assert plan.heads[0] == [0, 1, 2]
    assert plan.heads[1] == [1, 2, 4, 5]
    assert plan.result_shape().kv == [1, 2]
    assert plan.kept_summary()["kv_heads_per_layer"] == [1, 2]


def _uniform_pruned(decoder, target=0.6):
    model = tiny_decoder(decoder)
    pm = PrunableModel(model, layout="uniform")
    perturb_masks(pm, seed=5)
    plan = pm.plan_for({"kind": "params", "target": target}, layout="uniform", round_to=4)
    return pm.materialize(plan).remove_hooks(), plan


def test_uniform_output_loads_with_plain_transformers_and_generates(decoder, tmp_path):
    from transformers import AutoModelForCausalLM

    small, plan = _uniform_pruned(decoder)
    assert plan.result_shape().is_uniform(removed_layers=True)
    save_pruned(small, None, plan, tmp_path, "uniform")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True).eval()
    x = decoder_inputs()
    assert torch.allclose(_logits(loaded, x), _logits(small, x), atol=ATOL)
    assert numel(loaded) == numel(small) < count_params(decoder_config(decoder))
    prompt = x["input_ids"][:1, :5]
    out = loaded.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert out.shape == (1, 11)
    assert torch.equal(out, small.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6))
    cfg = loaded.config
    if decoder == "gpt2":   # stock GPT-2: head size = n_embd / n_head
        assert cfg.n_embd == cfg.n_head * plan.shape.head_dim
    else:
        assert cfg.head_dim == plan.shape.head_dim
        assert cfg.num_attention_heads % cfg.num_key_value_heads == 0


def _per_layer_pruned(decoder):
    model = tiny_decoder(decoder)
    pm = PrunableModel(model)
    perturb_masks(pm, seed=7)
    plan = pm.plan_for({"kind": "params", "target": 0.6}, round_to=4)
    rng = random.Random(1)
    plan = _edit(_edit(plan, pm.shape, "attn_block", rng), pm.shape, "ffn_block", rng)
    pm.apply_plan(plan)
    return pm.materialize(plan).remove_hooks(), plan


def test_per_layer_round_trips_through_load_pruned(decoder, tmp_path, no_torch_load):
    small, plan = _per_layer_pruned(decoder)   # layer 0 without attention, last layer without FFN
    save_pruned(small, None, plan, tmp_path, "per_layer")
    loaded = load_pruned(tmp_path)
    x = decoder_inputs()
    assert torch.allclose(_logits(loaded, x), _logits(small, x), atol=ATOL)
    assert numel(loaded) == numel(small) == count_params(plan)
    # generation with the KV cache equals generation without it, although layer 0 (whose cache
    # entry transformers reads the sequence length from) has no attention
    prompt = x["input_ids"][:1, :5]
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(loaded.generate(prompt, **kw), loaded.generate(prompt, use_cache=False, **kw))


def test_per_layer_checkpoint_is_not_silently_loaded_by_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    small, plan = _per_layer_pruned("llama-gqa")
    save_pruned(small, None, plan, tmp_path, "per_layer")
    with pytest.raises(Exception):
        AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)


@pytest.mark.parametrize("seq_len", [8, 24])
def test_counts_match_numel_and_flop_counter(decoder, seq_len):
    from torch.utils.flop_counter import FlopCounterMode

    def measured(model):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(input_ids=torch.randint(3, 100, (1, seq_len)))
        return fc.get_total_flops()

    dense = tiny_decoder(decoder, attn="eager")    # the counter has no rule for CPU flash attention
    assert count_params(dense) == numel(dense) == count_params(decoder_config(decoder))
    assert count_flops(dense, seq_len) == measured(dense) == count_flops(decoder_config(decoder), seq_len)
    pm = PrunableModel(dense)
    perturb_masks(pm, seed=2)
    plan = pm.plan_for({"kind": "flops", "target": 0.5, "seq_len": seq_len}, round_to=4)
    small = pm.materialize(plan).remove_hooks()
    assert count_params(small) == numel(small)
    assert count_flops(small, seq_len) == measured(small) == count_flops(plan, seq_len)


def test_expected_fraction_counts_kv_groups():
    """At init every gate is on (fraction 1); with one whole group's keep probabilities at 0 the
    expected size drops by that group's q, k, v and o, with one query head per group only by q, o."""
    model = tiny_decoder("llama-gqa")
    pm = PrunableModel(model, structures={"heads"})
    assert abs(pm.expected_fraction("params").item() - 1.0) < 1e-6
    with torch.no_grad():
        pm.masks["heads"].pruned[0, 3:6] = True     # group 1 of layer 0
    whole = pm.expected_fraction("params").item()
    exact_whole = pm.plan_from_masks().fraction("params")
    with torch.no_grad():
        pm.masks["heads"].pruned[0] = False
        pm.masks["heads"].pruned[0, [0, 3]] = True  # one query head of each group
    inside = pm.expected_fraction("params").item()
    assert abs(whole - exact_whole) < 1e-6
    assert abs(inside - pm.plan_from_masks().fraction("params")) < 1e-6
    assert whole < inside < 1.0


def test_llama_uniform_hidden_stays_divisible_by_heads(tmp_path):
    """LlamaConfig refuses hidden % heads != 0 (transformers 5), Mistral's does not. This mask
    state makes the greedy plan keep 40 hidden channels and 6 heads; the planner drops 4 more."""
    from transformers import AutoModelForCausalLM
    from vtrans_core.plan import make_plan

    pm = PrunableModel(tiny_decoder("llama-gqa"), layout="uniform")
    perturb_masks(pm, seed=1)
    scores = pm.log_alphas()
    free = make_plan(pm.shape.replace(hidden_divisible_by_heads=False), pm.reference, scores, "params", 0.5,
                     128, "uniform", 4).result_shape()
    assert free.hidden % free.heads[0] != 0      # the case the rule exists for
    plan = pm.plan_for({"kind": "params", "target": 0.5}, layout="uniform", round_to=4)
    shape = plan.result_shape()
    assert shape.hidden % shape.heads[0] == 0 and shape.hidden < free.hidden
    save_pruned(pm.materialize(plan).remove_hooks(), None, plan, tmp_path, "uniform")
    AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)


def test_uniform_layer_removal_gives_a_stock_checkpoint(decoder, tmp_path):
    """A whole layer removed in the uniform layout: layers renumbered (KV cache indices), Qwen's
    per-layer attention types follow, and plain transformers loads and generates."""
    from transformers import AutoModelForCausalLM

    model = tiny_decoder(decoder, layers=3)
    x = decoder_inputs()
    pm = PrunableModel(model, layout="uniform")
    perturb_masks(pm)
    plan = pm.plan_from_masks()
    plan.attn_blocks[0] = plan.ffn_blocks[0] = False
    plan.heads[0], plan.ffn[0] = [], []
    pm.apply_plan(plan)
    hard = _logits(pm.model, x)
    small = pm.materialize(plan).remove_hooks()
    assert _close(_logits(small, x), hard, x)
    save_pruned(small, None, plan, tmp_path, "uniform")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True).eval()
    assert _close(_logits(loaded, x), hard, x)
    assert loaded.config.num_hidden_layers == 2 and small.config.vtrans_layer_origin == [1, 2]
    if getattr(loaded.config, "layer_types", None) is not None:
        assert len(loaded.config.layer_types) == 2
    prompt = x["input_ids"][:1, :5]
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(loaded.generate(prompt, **kw), loaded.generate(prompt, use_cache=False, **kw))


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
def test_every_mask_gets_a_gradient(decoder, layout):
    """The gates sit where training can move them: each mask's mu has a non-zero gradient."""
    model = tiny_decoder(decoder)
    x = decoder_inputs()
    pm = PrunableModel(model, layout=layout)
    pm.set_sampling(True)
    out = pm.model(**x, labels=x["input_ids"])
    (out.loss + pm.kl() * 1e-6).backward()
    for key, m in pm.masks.items():
        assert m.mu.grad is not None and m.mu.grad.abs().sum() > 0, key


def test_counts_from_a_raw_config_json(decoder):
    """validate_request works from config.json alone (no weights): same counts as the model."""
    cfg = decoder_config(decoder)
    model = tiny_decoder(decoder)
    assert count_params(cfg.to_dict()) == numel(model)
    assert count_flops(cfg.to_dict(), 16) == count_flops(model, 16)

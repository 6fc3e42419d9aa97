"""Saving and loading: uniform outputs are stock checkpoints, per_layer outputs round-trip
through load_pruned; no pickle anywhere; unknown families and remote code are refused."""
from __future__ import annotations

import json

import pytest
import torch

from .conftest import logits, perturb_masks, tiny_inputs, tiny_model
from vtrans_core.errors import CompressionError
from vtrans_core.families import adapter_for
from vtrans_core.loading import load_pruned
from vtrans_core.materialize import save_pruned
from vtrans_core.plan import PruningPlan
from vtrans_core.prunable import PrunableModel

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _no_pickle(path):
    return not [p for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES]


def _pruned(family, layout, target=0.5, seed=0):
    model = tiny_model(family, layers=3, seed=seed)
    pm = PrunableModel(model, layout=layout)
    perturb_masks(pm, seed=seed + 1)
    plan = pm.plan_for({"kind": "flops", "target": target, "seq_len": 16}, round_to=4)
    return pm.materialize(plan).remove_hooks(), plan


@pytest.fixture
def no_torch_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.load (pickle) must not be used")
    monkeypatch.setattr(torch, "load", refuse)


def test_uniform_output_loads_with_plain_transformers(family, tmp_path, no_torch_load):
    from transformers import AutoModelForSequenceClassification

    small, plan = _pruned(family, "uniform")
    x = tiny_inputs()
    out = save_pruned(small, None, plan, tmp_path / "out", "uniform")
    assert (out / "model.safetensors").exists() and _no_pickle(out)
    cfg = json.loads((out / "config.json").read_text())
    assert "vtrans_layout" not in cfg
    plain = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert torch.allclose(logits(plain, x), logits(small, x), atol=1e-5)
    kept = plan.kept_summary()
    a = adapter_for(plain)
    hidden_key, heads_key, ffn_key, layers_key = a.config_keys
    assert getattr(plain.config, hidden_key) == kept["hidden"] < 32
    assert getattr(plain.config, layers_key) == 3 - len(kept["attn_blocks_removed"])
    assert torch.allclose(logits(load_pruned(out), x), logits(small, x), atol=1e-5)
    assert PruningPlan.from_json((out / "plan.json").read_text()) == plan


def test_per_layer_output_round_trips_through_load_pruned(family, tmp_path, no_torch_load):
    small, plan = _pruned(family, "per_layer", target=0.4, seed=2)
    assert not plan.result_shape().is_uniform(), "this test needs a genuinely per-layer shape"
    x = tiny_inputs()
    out = save_pruned(small, None, plan, tmp_path / "out", "per_layer")
    assert _no_pickle(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vtrans_layout"]["heads"] == plan.result_shape().heads
    loaded = load_pruned(out)
    assert torch.equal(logits(loaded, x), logits(small, x))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())
    # the loaded model can be wrapped again and keeps the dense reference for fractions
    pm = PrunableModel(loaded, layout="per_layer")
    assert pm.reference.hidden == 32 and pm.plan_from_masks().fraction("flops", 16) == pytest.approx(
        plan.fraction("flops", 16))


def test_per_layer_checkpoint_is_not_silently_loaded_by_plain_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    small, plan = _pruned("bert", "per_layer", target=0.4, seed=2)
    out = save_pruned(small, None, plan, tmp_path / "out")
    with pytest.raises(Exception):
        AutoModelForSequenceClassification.from_pretrained(str(out))


def test_save_with_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    small, plan = _pruned("bert", "uniform")
    out = save_pruned(small, tok, plan, tmp_path / "out")
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()


def test_unknown_family_and_remote_code_refused(tmp_path):
    from transformers import T5Config

    with pytest.raises(CompressionError) as err:
        adapter_for(T5Config())
    assert err.value.field == "model" and "t5" in str(err.value)
    with pytest.raises(CompressionError):
        adapter_for({"model_type": "bert", "auto_map": {"AutoModel": "x.Y"}})
    from transformers import BertForMaskedLM

    with pytest.raises(CompressionError) as err:
        PrunableModel(BertForMaskedLM(tiny_model("bert").config))
    assert err.value.field == "model"
    # load_pruned checks config.json before touching weights
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"x": "y"}}))
    with pytest.raises(CompressionError):
        load_pruned(tmp_path)


def test_pickle_only_checkpoint_refused(tmp_path):
    small, plan = _pruned("bert", "per_layer", target=0.4, seed=2)
    out = save_pruned(small, None, plan, tmp_path / "out")
    (out / "model.safetensors").rename(out / "pytorch_model.bin")
    with pytest.raises(CompressionError) as err:
        load_pruned(out)
    assert "safetensors" in str(err.value)


def test_per_layer_with_a_whole_layer_skipped_is_not_saved_as_stock(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_model("bert", layers=3)
    x = tiny_inputs()
    pm = PrunableModel(model, layout="per_layer")
    plan = pm.plan_from_masks()
    plan.attn_blocks[1] = plan.ffn_blocks[1] = False
    plan.heads[1], plan.ffn[1] = [], []
    pm.apply_plan(plan)
    hard = logits(pm.model, x)
    small = pm.materialize(plan).remove_hooks()
    out = save_pruned(small, None, plan, tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vtrans_layout"]["attn_blocks"] == [True, False, True]
    assert torch.allclose(logits(load_pruned(out), x), hard, atol=1e-5)
    with pytest.raises(Exception):
        AutoModelForSequenceClassification.from_pretrained(str(out))

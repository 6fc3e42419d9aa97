"""Tiny models of each supported family, built in the test (no downloads), and helpers to
perturb VIB masks so that equivalence tests are not trivially true (mu != 1)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ("bert", "roberta", "distilbert")


def tiny_config(family: str, hidden: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64,
                vocab: int = 100, num_labels: int = 3):
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    if family == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=ffn, max_position_embeddings=64, num_labels=num_labels,
                          initializer_range=0.2)
    if family == "roberta":
        return RobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=ffn, max_position_embeddings=66, pad_token_id=1, num_labels=num_labels,
                             initializer_range=0.2)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn,
                                max_position_embeddings=64, num_labels=num_labels, initializer_range=0.2)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, **kw):
    """Randomly initialised classifier with non-trivial LayerNorm affine parameters (the stock
    init is weight 1 / bias 0, which would hide mistakes in LayerNorm slicing). Weights use a
    10x larger init range than the stock 0.02 so logits are O(1) and differences are visible."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, **kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def tiny_inputs(seed: int = 1, batch: int = 3, length: int = 12, vocab: int = 100):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # one padded row exercises the attention mask
    ids[1, -4:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def perturb_masks(pm, seed: int = 0, blocks_at_one: bool = True) -> None:
    """Random mu in [0.5, 1.5] (so folding mu into weights matters) and random log sigma^2
    (so log alpha ranks entries). Block gates keep mu = 1 unless asked: kept blocks are snapped
    to 1 at materialization (prunable.py docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, m in pm.masks.items():
            if not (blocks_at_one and key in ("attn_block", "ffn_block", "layer")):
                m.mu.copy_(0.5 + torch.rand(m.mu.shape, generator=g))
            m.log_sigma2.copy_(torch.randn(m.mu.shape, generator=g) * 3 - 3)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param

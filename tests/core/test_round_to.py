"""Decoder width rounding (`options.round_to`): a decoder default of 64, halved for a small model
until its narrowest prunable width holds 8 groups, a user's value untouched, classification
unchanged; a tiny LLaMA compressed without round_to still prunes, in whole groups."""
from __future__ import annotations

import json

from .decoders import decoder_config, save_tiny_lm, write_text_corpus
from vtrans_core import compress, validate_request
from vtrans_core.options import fit_round_to

SEQ = 16
BUDGET = {"kind": "params", "target": 0.8, "seq_len": SEQ}


def _round_to(config: dict, method: str, options: dict | None = None) -> int:
    return validate_request(config, BUDGET, method, options)["options"]["round_to"]


def _llama(**kw) -> dict:
    import transformers

    base = dict(vocab_size=1000, num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3, head_dim=64)
    return transformers.LlamaConfig(**{**base, **kw}).to_dict()


def test_fit_round_to_halves_until_eight_groups():
    assert fit_round_to(64, [576, 1536, 1536]) == 64      # SmolLM2-135M: 9 and 24 groups of 64
    assert fit_round_to(64, [64, 64]) == 8                # 64 -> 32 -> 16 -> 8: 8 groups
    assert fit_round_to(64, [48, 64]) == 4                # the narrowest width decides: 48 // 8 = 6 < 8
    assert fit_round_to(64, [0, 64]) == 8                 # a removed FFN (width 0) does not count
    assert fit_round_to(64, [5]) == 1                     # never below 1
    assert fit_round_to(64, []) == 64


def test_decoder_default_follows_the_model_size():
    # SmolLM2-135M's shape (config only, no weights): the full default
    assert _round_to(_llama(hidden_size=576, intermediate_size=1536), "faster") == 64
    # a 2-layer 320-wide model: 320 // 64 = 5 groups -> 32 (10 groups)
    assert _round_to(_llama(hidden_size=320, intermediate_size=320, num_attention_heads=5, num_key_value_heads=5), "faster") == 32
    tiny = decoder_config("llama-gqa").to_dict()          # hidden 48, FFN 64
    # faster keeps the hidden dimension: only the FFN counts (64 -> 8)
    assert _round_to(tiny, "faster") == 8
    # vtrans keeps a decoder's hidden dimension by default too (8); asked to prune it, the hidden
    # width counts: 48 // 8 = 6 groups, so 4
    assert _round_to(tiny, "vtrans") == 8
    assert _round_to(tiny, "vtrans", {"prune_hidden": True}) == 4


def test_explicit_round_to_and_classification_are_untouched():
    tiny = decoder_config("llama-gqa").to_dict()
    assert _round_to(tiny, "faster", {"round_to": 16}) == 16     # the user's value wins, even when coarse
    assert _round_to(tiny, "faster", {"round_to": 1}) == 1
    bert = {"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
            "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 64, "type_vocab_size": 2}
    assert _round_to(bert, "faster") == 8                         # the generic default, not fitted
    assert _round_to(None, "faster") == 8                         # no config known: generic default


def test_tiny_llama_without_round_to_prunes_in_whole_groups(tmp_path):
    from transformers import AutoConfig

    model_dir = save_tiny_lm("llama-gqa", tmp_path / "model")
    corpus = write_text_corpus(tmp_path / "corpus.txt", n_docs=30, words=60)
    opts = {"seq_len": SEQ, "prefill_batch": 2, "prefill_seq": 32, "decode_tokens": 4, "latency_runs": 1,
            "generation_samples": 1}
    out = tmp_path / "out"
    result = compress(str(model_dir), str(corpus), BUDGET, "faster", opts, output_dir=out)
    m = result.metrics
    assert m["options"]["round_to"] == 8
    assert m["params_fraction"] <= BUDGET["target"] + 0.01
    ffn = AutoConfig.from_pretrained(out).intermediate_size     # uniform: one width for every layer
    assert ffn < 64 and ffn % 8 == 0, ffn
    assert json.loads((out / "metrics.json").read_text())["options"]["round_to"] == 8



def test_every_method_keeps_a_decoders_hidden_width_unless_asked():
    """Every method prunes the hidden width of encoders but not of language models by default
    (SmolLM2: cutting it cost more than it saved at params 0.7-0.8, benchmarks/README.md); an
    explicit value wins."""
    config = _llama(hidden_size=576, intermediate_size=1536)
    opts = lambda method, o=None: validate_request(config, BUDGET, method, o)["options"]  # noqa: E731
    assert opts("faster")["prune_hidden"] is False
    assert opts("faster", {"prune_hidden": True})["prune_hidden"] is True
    assert opts("vtrans")["prune_hidden"] is False and opts("fast")["prune_hidden"] is False
    assert opts("fast", {"prune_hidden": True})["prune_hidden"] is True
    assert validate_request(None, BUDGET, "vtrans", None)["options"]["prune_hidden"] is True   # encoders

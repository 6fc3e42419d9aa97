"""LLaMA-family causal LMs: LLaMA 1/2/3, Mistral, Qwen2, Qwen3 (one module layout).

transformers 5 names: model.embed_tokens; model.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj
(+ Qwen3's q_norm / k_norm over head_dim), post_attention_layernorm, mlp.{gate,up,down}_proj};
model.norm; lm_head (tied to embed_tokens when config.tie_word_embeddings). Pre-LN with RMSNorm,
RoPE (no position table), grouped-query attention (num_key_value_heads <= num_attention_heads).

Heads under grouped-query attention. The head mask has one gate per QUERY head; the planner
(plan.py) turns it into two kinds of removable units per layer so that every plan is a valid GQA
layout (each kept key/value head serves the same number of query heads):
- a whole key/value GROUP: its k/v head and all of its query heads (saves the k/v projection
  and that group's KV cache, which is what bounds decode speed on long contexts);
- one query head IN EVERY kept group (the least informative of each): a finer step that keeps
  the k/v heads. SmolLM2 has 3 groups of 3 query heads and Qwen2.5-0.5B 2 groups of 7, so
  groups alone would move attention in steps of 1/3 or 1/2 of a layer.
Both are offered; the VIB scores decide which goes first (a group's score is the mean log alpha
of its query heads). Measured on SmolLM2-135M (Q4_1-dequantized Instruct; 30 layers, 3 groups
of 3 query heads), no training, heads ranked by activation x weight (the norm of each head's
contribution through o_proj on 4 x 256 Bible tokens), perplexity on 4 other 256-token windows
(dense 16.43):
    per layer, 1 whole group removed (6/9 heads left):  ppl 36.0,  params 0.934
    per layer, 1 query head of each group (6/9 left):    ppl 66.6,  params 0.951
    per layer, 2 whole groups (3/9 left):                ppl 491,   params 0.869
    per layer, 2 query heads of each group (3/9 left):   ppl 3140,  params 0.901
so on this model a whole group is the better unit at the same head count (and saves its k/v
projection and KV cache too); query heads inside groups stay available as the finer step for
models with few, large groups, and the VIB ranking arbitrates between the two. Query heads are never pruned unevenly inside a layer: repeat_kv in
transformers repeats every k/v head the same number of times, so a stock config cannot say
"group 0 keeps 3 query heads, group 1 keeps 2".
head_dim is never changed (RoPE rotates pairs of channels inside a head), and Qwen3's q/k norms
act over head_dim, so they are kept whole.

The hidden width is one mask shared by the token embedding, every RMSNorm, every projection's
input or output and the LM head; a tied LM head is the embedding's weight and is sliced once
(materialize.py re-ties it). LLaMA-family configs carry head_dim and num_key_value_heads
separately, so any uniform result (same heads / FFN in every kept layer) is a stock checkpoint:
hidden and heads are pruned independently in the uniform layout too (attn_width_tied False).
One exception: LlamaConfig (model_type "llama", transformers 5) refuses hidden_size not divisible
by num_attention_heads although the forward never needs it; a uniform plan for a LLaMA then drops
the (fewer than heads) least informative extra hidden channels (plan.py), Mistral/Qwen need not.
"""
from __future__ import annotations

from typing import Any

from .base import AttnParts, FfnParts
from .decoder import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
    attn_width_tied = False

    def base(self, model):
        return model.model

    def embedding_tables(self, model):
        return [model.model.embed_tokens]

    def final_norm(self, model):
        return model.model.norm

    def layers(self, model):
        return model.model.layers

    def _set_layer_list(self, model, layers):
        model.model.layers = layers

    def attention(self, model, i):
        layer = self.layers(model)[i]
        if self._attn_removed(layer):
            return None
        a = layer.self_attn
        return AttnParts(q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj, norm=layer.input_layernorm, self_attn=a)

    def ffn(self, model, i):
        layer = self.layers(model)[i]
        if self._ffn_removed(layer):
            return None
        m = layer.mlp
        return FfnParts(inp=m.up_proj, out=m.down_proj, norm=layer.post_attention_layernorm, gate=m.gate_proj)

    def head_dim(self, self_attn):
        return int(self_attn.head_dim)

    def kv_heads(self, parts):
        return parts.k.out_features // self.head_dim(parts.self_attn)

    def set_heads(self, self_attn, n_heads, head_dim, kv_heads=None):
        # The forward reshapes with view(..., -1, head_dim); repeat_kv / SDPA read
        # num_key_value_groups. Scaling stays head_dim ** -0.5 (head size unchanged).
        kv = kv_heads or n_heads
        self_attn.num_key_value_groups = n_heads // kv
        self_attn.num_heads, self_attn.num_key_value_heads = n_heads, kv   # informational

    def facts(self, config: Any) -> dict[str, Any]:
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        bias = bool(get("attention_bias", False))
        qwen2 = get("model_type") == "qwen2"     # Qwen2: q/k/v always biased, o never
        return {"gated_ffn": True, "qkv_bias": True if qwen2 else bias, "o_bias": False if qwen2 else bias,
                "ffn_bias": bool(get("mlp_bias", False)), "norm_bias": False, "qk_norm": get("model_type") == "qwen3",
                "rope": True, "lm_head": True, "head_tied": bool(get("tie_word_embeddings", False)), "head_bias": False,
                "hidden_divisible_by_heads": get("model_type") == "llama"}

    def _config_head_dim(self, config):
        layout = getattr(config, "vtrans_layout", None)
        if layout:
            return int(layout["head_dim"])
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    def shape_from_config(self, config):
        if isinstance(config, dict) and not config.get("vtrans_layout"):
            from transformers import CONFIG_MAPPING
            config = CONFIG_MAPPING[config["model_type"]].from_dict(
                {k: v for k, v in config.items() if k != "transformers_version"})
        if isinstance(config, dict) or getattr(config, "vtrans_layout", None):
            return super().shape_from_config(config)
        from ..flops import ModelShape
        L = config.num_hidden_layers
        return ModelShape(
            family=config.model_type, vocab=config.vocab_size, positions=0, token_types=0,
            hidden=config.hidden_size, head_dim=self._config_head_dim(config),
            heads=[config.num_attention_heads] * L, ffn=[config.intermediate_size] * L,
            num_labels=config.vocab_size, head_dense=False, kv_heads=[config.num_key_value_heads] * L,
            attn_width_tied=False, **self.facts(config))

    def _set_kv_heads(self, config, kv_heads, head_dim):
        config.num_key_value_heads = kv_heads
        config.head_dim = head_dim

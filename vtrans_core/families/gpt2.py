"""GPT-2 causal LM (GPT2LMHeadModel).

transformers 5 names: transformer.{wte, wpe}; transformer.h[i].{ln_1, attn.{c_attn, c_proj}, ln_2,
mlp.{c_fc, c_proj}}; transformer.ln_f; lm_head (tied to wte). Pre-LN with LayerNorm, learned
position embeddings, multi-head attention. Projections are transformers' Conv1D (weight stored
[in, out], the transpose of nn.Linear) and q/k/v are ONE fused projection c_attn whose output
columns are q | k | v (each n_head * head_dim wide); materialize.py slices both forms.

Head size and the uniform layout. GPT2Attention derives head_dim = n_embd / n_head and refuses
any other combination, like BERT: a stock GPT-2 config can only describe an attention width equal
to the hidden width. So, as for BERT, the uniform layout ties the two (attn_width_tied): the
planner's uniform "head rank" unit removes one head of every layer together with head_dim hidden
channels, keeping hidden == heads * head_dim, and the result loads with plain
AutoModelForCausalLM / GPT2LMHeadModel. Pruning hidden and heads independently (or per layer) is
the per_layer layout, saved with `vtrans_layout` for load_pruned.

Refused: cross-attention (add_cross_attention) and scale_attn_by_inverse_layer_idx (its scale
depends on the layer index, which removing whole layers would change on reload).
"""
from __future__ import annotations

from typing import Any

from ..errors import CompressionError
from .base import AttnParts, FfnParts
from .decoder import DecoderAdapter


class Gpt2Adapter(DecoderAdapter):
    model_types = ("gpt2",)
    architectures = ("GPT2LMHeadModel",)
    config_keys = ("n_embd", "n_head", "n_inner", "n_layer")
    layer_attrs = ("attn", "ln_1", "mlp", "ln_2")

    def check_model(self, model):
        super().check_model(model)
        cfg = model.config
        if getattr(cfg, "add_cross_attention", False) or getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            raise CompressionError("model", "GPT-2 models with cross-attention or scale_attn_by_inverse_layer_idx "
                                   "are not supported")

    def base(self, model):
        return model.transformer

    def embedding_tables(self, model):
        return [model.transformer.wte, model.transformer.wpe]

    def final_norm(self, model):
        return model.transformer.ln_f

    def layers(self, model):
        return model.transformer.h

    def _set_layer_list(self, model, layers):
        model.transformer.h = layers

    def attention(self, model, i):
        layer = self.layers(model)[i]
        if self._attn_removed(layer):
            return None
        a = layer.attn
        return AttnParts(q=None, k=None, v=None, o=a.c_proj, norm=layer.ln_1, self_attn=a, qkv=a.c_attn)

    def ffn(self, model, i):
        layer = self.layers(model)[i]
        if self._ffn_removed(layer):
            return None
        return FfnParts(inp=layer.mlp.c_fc, out=layer.mlp.c_proj, norm=layer.ln_2)

    def head_dim(self, self_attn):
        return int(self_attn.head_dim)

    def set_heads(self, self_attn, n_heads, head_dim, kv_heads=None):
        # forward: c_attn(x).split(split_size) then view(..., -1, head_dim). Scaling is set at
        # init from n_embd / n_head, which a per_layer placeholder config gets wrong: recompute.
        self_attn.num_heads = n_heads
        self_attn.head_dim = head_dim
        self_attn.split_size = self_attn.embed_dim = n_heads * head_dim
        self_attn.scaling = head_dim ** -0.5 if self_attn.scale_attn_weights else 1.0

    def facts(self, config: Any) -> dict[str, Any]:
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        return {"lm_head": True, "head_tied": bool(get("tie_word_embeddings", True)), "head_bias": False}

    def _config_head_dim(self, config):
        layout = getattr(config, "vtrans_layout", None)
        return int(layout["head_dim"]) if layout else config.n_embd // config.n_head

    def shape_from_config(self, config):
        if isinstance(config, dict) and not config.get("vtrans_layout"):
            from transformers import GPT2Config
            config = GPT2Config.from_dict({k: v for k, v in config.items() if k != "transformers_version"})
        if isinstance(config, dict) or getattr(config, "vtrans_layout", None):
            return super().shape_from_config(config)
        from ..flops import ModelShape
        H, L = config.n_embd, config.n_layer
        return ModelShape(
            family="gpt2", vocab=config.vocab_size, positions=config.n_positions, token_types=0, hidden=H,
            head_dim=H // config.n_head, heads=[config.n_head] * L, ffn=[config.n_inner or 4 * H] * L,
            num_labels=config.vocab_size, head_dense=False, **self.facts(config))

    def _set_kv_heads(self, config, kv_heads, head_dim):
        pass   # multi-head attention; head size follows n_embd / n_head (uniform) or vtrans_layout

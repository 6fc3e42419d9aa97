"""What the decoder adapters (llama.py, gpt2.py) share: pre-LN layers, removed-block modules,
and writing a config for a sliced causal LM.

A removed block of a pre-LN layer (x -> x + sub(norm(x))) contributes nothing: the layer keeps
its class (so output_hidden_states and the cache logic of transformers still see it) and the
removed sub-block and its norm are swapped for parameter-free modules:
- attention -> `SkipDecoderAttention`: returns zeros (x + 0 = x) and no attention weights. When a
  KV cache is passed it appends ZERO-HEAD keys/values ([B, 0, T, head_dim]) for its layer, so the
  cache still knows how many tokens it has seen (transformers reads the sequence length from the
  cache's first layer: without this, a model whose first attention block is removed would
  generate with wrong positions);
- FFN -> `SkipDecoderFfn`: returns zeros; the norm before it -> nn.Identity.
A removed block thus costs one tensor of zeros and one addition, and has no weights.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import FamilyAdapter


class SkipDecoderAttention(nn.Module):
    def __init__(self, layer_idx: int, head_dim: int):
        super().__init__()
        self.layer_idx = layer_idx      # renumbered by set_layers like the real attention's
        self.head_dim = head_dim

    def forward(self, hidden_states, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cache = getattr(cache, "self_attention_cache", cache)   # GPT-2's EncoderDecoderCache
        if cache is not None and hasattr(cache, "update"):
            b, t = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(b, 0, t, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class SkipDecoderFfn(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


class DecoderAdapter(FamilyAdapter):
    """Pre-LN causal LM. Subclasses name the modules; this class holds the shared logic."""

    norm_placement = "pre"
    auto_class = "AutoModelForCausalLM"
    has_token_types = False
    # (attention attr, its norm attr, FFN attr, its norm attr) on a decoder layer
    layer_attrs: tuple[str, str, str, str] = ("self_attn", "input_layernorm", "mlp", "post_attention_layernorm")

    def embedding_norm(self, model):
        return None

    def head_dense(self, model):
        return None

    def classifier(self, model):
        return model.lm_head

    def set_layers(self, model, layers):
        # Qwen2/Qwen3-style configs list an attention type per layer (full / sliding) and the
        # model indexes it by position: the list follows a removal of whole layers.
        old = list(self.layers(model))
        origin = [next(i for i, o in enumerate(old) if o is layer) for layer in layers]
        types = getattr(model.config, "layer_types", None)
        if types is not None and len(types) == len(old):
            model.config.layer_types = [types[i] for i in origin]
        for i, layer in enumerate(layers):  # the KV cache is indexed by layer_idx
            for m in layer.modules():
                if hasattr(m, "layer_idx"):
                    m.layer_idx = i
        self._set_layer_list(model, layers)

    def _set_layer_list(self, model, layers) -> None:
        raise NotImplementedError

    def block_sums(self, model, i):
        # Pre-LN (x -> x + sub(norm(x))): the stream after attention is what the FFN's norm reads
        # (an nn.Identity when the FFN was removed, still called by the layer), and the stream
        # after the FFN is the layer's output. No norm closes a block, so these are the sums.
        layer = self.layers(model)[i]
        out = {}
        if self.attention(model, i) is not None:
            out["attn"] = (getattr(layer, self.layer_attrs[3]), "input")
        if self.ffn(model, i) is not None:
            out["ffn"] = (layer, "output")
        return out

    def _attn_removed(self, layer) -> bool:
        return isinstance(getattr(layer, self.layer_attrs[0]), SkipDecoderAttention)

    def _ffn_removed(self, layer) -> bool:
        return isinstance(getattr(layer, self.layer_attrs[2]), SkipDecoderFfn)

    def skip_attention(self, model, i):
        layer = self.layers(model)[i]
        attn_attr, norm_attr, _, _ = self.layer_attrs
        setattr(layer, attn_attr, SkipDecoderAttention(i, self.head_dim(getattr(layer, attn_attr))))
        setattr(layer, norm_attr, nn.Identity())

    def skip_ffn(self, model, i):
        layer = self.layers(model)[i]
        _, _, ffn_attr, norm_attr = self.layer_attrs
        setattr(layer, ffn_attr, SkipDecoderFfn())
        setattr(layer, norm_attr, nn.Identity())

    def check_model(self, model: nn.Module) -> None:
        name = type(model).__name__
        if name not in self.architectures:
            from ..errors import CompressionError
            raise CompressionError("model", f"{name} is not supported (supported: {', '.join(self.architectures)});"
                                   " load the model with AutoModelForCausalLM")

    def write_config(self, config: Any, shape, reference) -> None:
        """The generic keys (base.py), then the decoder's own: key/value heads and head_dim.
        Uniform: the kept layers' values (a stock checkpoint). per_layer: placeholders that build
        a model of the right hidden width (load_pruned resizes every layer from vtrans_layout)."""
        super().write_config(config, shape, reference)
        kept = [i for i in range(shape.n_layers) if shape.attn_blocks[i]]
        if shape.is_uniform() and kept:
            self._set_kv_heads(config, shape.kv[kept[0]], shape.head_dim)
        else:
            self._set_kv_heads(config, getattr(config, self.config_keys[1]), shape.head_dim)

    def _set_kv_heads(self, config: Any, kv_heads: int, head_dim: int) -> None:
        """Write key/value heads and head size (families with GQA / a free head_dim)."""

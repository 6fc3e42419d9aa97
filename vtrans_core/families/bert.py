"""BERT (and MiniLM, which is a BERT) adapter.

transformers 5 module names: bert.embeddings.{word,position,token_type}_embeddings + LayerNorm;
bert.encoder.layer[i].attention.self.{query,key,value}, attention.output.{dense,LayerNorm},
intermediate.dense, output.{dense,LayerNorm}; bert.pooler.dense; classifier. Post-LN.

A removed block is replaced by parameter-free modules that return their input unchanged, so a
skipped block costs nothing at inference and has no entries in the state dict:
- attention -> `SkipAttention` (returns the hidden states, no attention weights);
- FFN -> `SkipIntermediate` + `SkipOutput` (BertLayer calls output(intermediate(x), x); the
  pair returns x).
"""
from __future__ import annotations

from torch import nn

from .base import AttnParts, FamilyAdapter, FfnParts


class SkipAttention(nn.Module):
    """Identity attention block: BertLayer expects (output, attention_weights)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


class SkipIntermediate(nn.Module):
    def forward(self, hidden_states):
        return hidden_states


class SkipOutput(nn.Module):
    def forward(self, hidden_states, input_tensor):
        return input_tensor


class BertAdapter(FamilyAdapter):
    model_types = ("bert",)
    architectures = ("BertForSequenceClassification",)
    base_attr = "bert"

    def base(self, model):
        return getattr(model, self.base_attr)

    def embedding_tables(self, model):
        e = self.base(model).embeddings
        return [e.word_embeddings, e.position_embeddings, e.token_type_embeddings]

    def embedding_norm(self, model):
        return self.base(model).embeddings.LayerNorm

    def layers(self, model):
        return self.base(model).encoder.layer

    def set_layers(self, model, layers):
        for i, layer in enumerate(layers):  # keep cache indices consistent with the new order
            for m in layer.modules():
                if hasattr(m, "layer_idx"):
                    m.layer_idx = i
        self.base(model).encoder.layer = layers

    def attention(self, model, i):
        layer = self.layers(model)[i]
        if isinstance(layer.attention, SkipAttention):
            return None
        s, o = layer.attention.self, layer.attention.output
        return AttnParts(q=s.query, k=s.key, v=s.value, o=o.dense, norm=o.LayerNorm, self_attn=s)

    def ffn(self, model, i):
        layer = self.layers(model)[i]
        if isinstance(layer.output, SkipOutput):
            return None
        return FfnParts(inp=layer.intermediate.dense, out=layer.output.dense, norm=layer.output.LayerNorm)

    def head_dense(self, model):
        pooler = self.base(model).pooler
        return pooler.dense if pooler is not None else None

    def classifier(self, model):
        return model.classifier

    def set_heads(self, self_attn, n_heads, head_dim, kv_heads=None):
        # The HF forward reshapes with view(..., -1, attention_head_size), so only these
        # attributes must follow; scaling stays head_dim ** -0.5 (head size is unchanged).
        self_attn.num_attention_heads = n_heads
        self_attn.attention_head_size = head_dim
        self_attn.all_head_size = n_heads * head_dim
        self_attn.scaling = head_dim ** -0.5

    def skip_attention(self, model, i):
        self.layers(model)[i].attention = SkipAttention()

    def skip_ffn(self, model, i):
        layer = self.layers(model)[i]
        layer.intermediate = SkipIntermediate()
        layer.output = SkipOutput()

"""DistilBERT adapter.

transformers 5 names: distilbert.embeddings.{word,position}_embeddings + LayerNorm (no token
types); distilbert.transformer.layer[i] (TransformerBlock): attention.{q_lin,k_lin,v_lin,
out_lin}, sa_layer_norm, ffn.{lin1,lin2}, output_layer_norm; pre_classifier (dim -> dim on
the first token) and classifier. Config keys dim / n_heads / hidden_dim / n_layers. Post-LN.

TransformerBlock applies its LayerNorms inline (LN(attn(x) + x)), so a removed block cannot be
skipped by swapping one submodule: the layer is replaced by `PrunedTransformerBlock`, which keeps
the same child names (same state-dict keys) and simply does not run a removed block. It
subclasses TransformerBlock so output_hidden_states still records it.
"""
from __future__ import annotations

from torch import nn
from transformers.models.distilbert.modeling_distilbert import TransformerBlock

from .base import AttnParts, FamilyAdapter, FfnParts


class PrunedTransformerBlock(TransformerBlock):
    def __init__(self, block: TransformerBlock, keep_attention: bool, keep_ffn: bool):
        nn.Module.__init__(self)  # not TransformerBlock.__init__: reuse the existing children
        self.gradient_checkpointing = False
        if keep_attention:
            self.attention = block.attention
            self.sa_layer_norm = block.sa_layer_norm
        if keep_ffn:
            self.ffn = block.ffn
            self.output_layer_norm = block.output_layer_norm

    @property
    def has_attention(self) -> bool:
        return "attention" in self._modules

    @property
    def has_ffn(self) -> bool:
        return "ffn" in self._modules

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        if self.has_attention:
            attn, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
            hidden_states = self.sa_layer_norm(attn + hidden_states)
        if self.has_ffn:
            hidden_states = self.output_layer_norm(self.ffn(hidden_states) + hidden_states)
        return hidden_states


class DistilBertAdapter(FamilyAdapter):
    model_types = ("distilbert",)
    architectures = ("DistilBertForSequenceClassification",)
    config_keys = ("dim", "n_heads", "hidden_dim", "n_layers")
    has_token_types = False

    def base(self, model):
        return model.distilbert

    def embedding_tables(self, model):
        e = model.distilbert.embeddings
        return [e.word_embeddings, e.position_embeddings]

    def embedding_norm(self, model):
        return model.distilbert.embeddings.LayerNorm

    def layers(self, model):
        return model.distilbert.transformer.layer

    def set_layers(self, model, layers):
        model.distilbert.transformer.layer = layers
        model.distilbert.transformer.n_layers = len(layers)

    def attention(self, model, i):
        layer = self.layers(model)[i]
        if isinstance(layer, PrunedTransformerBlock) and not layer.has_attention:
            return None
        a = layer.attention
        return AttnParts(q=a.q_lin, k=a.k_lin, v=a.v_lin, o=a.out_lin, norm=layer.sa_layer_norm, self_attn=a)

    def ffn(self, model, i):
        layer = self.layers(model)[i]
        if isinstance(layer, PrunedTransformerBlock) and not layer.has_ffn:
            return None
        return FfnParts(inp=layer.ffn.lin1, out=layer.ffn.lin2, norm=layer.output_layer_norm)

    def head_dense(self, model):
        return model.pre_classifier

    def classifier(self, model):
        return model.classifier

    def set_heads(self, self_attn, n_heads, head_dim, kv_heads=None):
        self_attn.n_heads = n_heads
        self_attn.attention_head_size = head_dim
        self_attn.dim = n_heads * head_dim  # not used by the forward; kept truthful
        self_attn.scaling = head_dim ** -0.5

    def _pruned_block(self, model, i, keep_attention, keep_ffn):
        layer = self.layers(model)[i]
        if isinstance(layer, PrunedTransformerBlock):
            keep_attention = keep_attention and layer.has_attention
            keep_ffn = keep_ffn and layer.has_ffn
        self.layers(model)[i] = PrunedTransformerBlock(layer, keep_attention, keep_ffn)

    def skip_attention(self, model, i):
        self._pruned_block(model, i, keep_attention=False, keep_ffn=True)

    def skip_ffn(self, model, i):
        self._pruned_block(model, i, keep_attention=True, keep_ffn=False)

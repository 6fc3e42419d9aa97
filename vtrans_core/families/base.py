"""What a model family must tell the surgery code: where its prunable modules are.

An adapter maps one family's HF modules onto the structures vtrans prunes:
- embeddings: the tables that produce the residual stream (word / position / token type) and,
  for post-LN families, the LayerNorm right after them;
- per layer: attention q, k, v, o (+ the self-attention module whose head-count attributes must
  follow the sliced weights) and its residual LayerNorm; FFN in, out and its LayerNorm;
- the head: a hidden -> hidden dense (pooler / pre_classifier / classifier.dense) and the
  classifier;
- how to write a config for a sliced model and how to skip a removed block at inference.

Norm placement: the encoders here are post-LN (x -> LN(x + sub(x))); the decoder adapters
(llama.py, gpt2.py) say "pre" (x -> x + sub(LN(x))), give q/k/v/o with a separate kv-head count
(GQA: `kv_heads` per layer in the shape), gate/up/down as FFN parts (`gate` beside `inp`),
RMSNorm as the norm, a final norm (`final_norm`) instead of an embedding norm, and the LM head
(tied or not) as the "classifier". The gating and folding code in prunable.py / materialize.py
branches on `norm_placement` only where the formula differs (where the hidden gate acts); the
least-squares refit asks `block_sums` where each block's residual sum can be read.

Projections may be nn.Linear ([out, in] weight) or transformers' Conv1D ([in, out], GPT-2);
`materialize.py` slices both. GPT-2 fuses q/k/v into one projection: its AttnParts gives `qkv`
(the fused module, rows q | k | v) and leaves q/k/v None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import CompressionError
from ..flops import ModelShape


@dataclass
class AttnParts:
    q: nn.Module | None
    k: nn.Module | None
    v: nn.Module | None
    o: nn.Module
    norm: nn.Module             # post-LN: the LayerNorm closing the block; pre-LN: the one opening it
    self_attn: nn.Module        # carries head-count attributes to update after slicing
    qkv: nn.Module | None = None    # fused q|k|v projection (GPT-2's c_attn); q/k/v are then None

    @property
    def entry(self) -> nn.Module:
        """The first projection the block's input goes through."""
        return self.qkv if self.qkv is not None else self.q


@dataclass
class FfnParts:
    inp: nn.Module              # up / intermediate / c_fc
    out: nn.Module              # down / output
    norm: nn.Module
    gate: nn.Module | None = None   # gated FFN (LLaMA): act(gate(x)) * inp(x)

    @property
    def inputs(self) -> list[nn.Module]:
        return [self.inp] if self.gate is None else [self.gate, self.inp]


class FamilyAdapter:
    model_types: tuple[str, ...] = ()
    # Architectures (class names) we know how to slice; anything else is refused.
    architectures: tuple[str, ...] = ()
    norm_placement = "post"
    # config attribute names: hidden, heads, ffn, layers
    config_keys: tuple[str, str, str, str] = ("hidden_size", "num_attention_heads", "intermediate_size",
                                              "num_hidden_layers")

    # ---- module access (to implement per family) ----
    def base(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def embedding_tables(self, model: nn.Module) -> list[nn.Embedding]:
        """[word, position, (token type)] in this order."""
        raise NotImplementedError

    def embedding_norm(self, model: nn.Module) -> nn.Module | None:
        raise NotImplementedError

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """The norm between the last layer and the head (pre-LN decoders); None for encoders."""
        return None

    # the transformers Auto class that loads a checkpoint of this family's architectures
    auto_class = "AutoModelForSequenceClassification"
    # True when a stock config derives head size from hidden / heads (see ModelShape)
    attn_width_tied = True

    def facts(self, config: Any) -> dict[str, Any]:
        """Architecture facts of ModelShape beyond the widths (bias layout, gated FFN, ...)."""
        return {}

    def kv_heads(self, parts: AttnParts) -> int | None:
        """Key/value heads of a layer; None for multi-head attention (one per query head)."""
        return None

    def layers(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def set_layers(self, model: nn.Module, layers: nn.ModuleList) -> None:
        raise NotImplementedError

    def attention(self, model: nn.Module, i: int) -> AttnParts | None:
        """None when layer i's attention block was removed (skipped)."""
        raise NotImplementedError

    def ffn(self, model: nn.Module, i: int) -> FfnParts | None:
        raise NotImplementedError

    def head_dense(self, model: nn.Module) -> nn.Linear | None:
        raise NotImplementedError

    def block_sums(self, model: nn.Module, i: int) -> dict[str, tuple[nn.Module, str]]:
        """Where layer i's residual sums (a block's output + its residual input) can be read, for
        the least-squares refit (reconstruct.py): {"attn" | "ffn": (module, "input" | "output")},
        the sum being that module's first input or its output; a removed block has no entry.
        Post-LN (here): each sum enters the LayerNorm that closes its block."""
        out: dict[str, tuple[nn.Module, str]] = {}
        a, f = self.attention(model, i), self.ffn(model, i)
        if a is not None:
            out["attn"] = (a.norm, "input")
        if f is not None:
            out["ffn"] = (f.norm, "input")
        return out

    def classifier(self, model: nn.Module) -> nn.Linear | None:
        raise NotImplementedError

    def head_dim(self, self_attn: nn.Module) -> int:
        return int(self_attn.attention_head_size)

    def set_heads(self, self_attn: nn.Module, n_heads: int, head_dim: int, kv_heads: int | None = None) -> None:
        raise NotImplementedError

    def skip_attention(self, model: nn.Module, i: int) -> None:
        """Replace layer i's attention block by the identity (no compute at inference)."""
        raise NotImplementedError

    def skip_ffn(self, model: nn.Module, i: int) -> None:
        raise NotImplementedError

    # ---- shapes and configs (generic) ----
    def check_model(self, model: nn.Module) -> None:
        name = type(model).__name__
        if name not in self.architectures:
            raise CompressionError("model", f"{name} is not supported (supported: {', '.join(self.architectures)});"
                                   " load the model with AutoModelForSequenceClassification")

    def shape_of(self, model: nn.Module) -> ModelShape:
        """Read the current shape from the modules themselves (works for sliced models)."""
        tables = self.embedding_tables(model)
        hidden = tables[0].embedding_dim
        heads, kv, ffn, head_dim = [], [], [], None
        for i in range(len(self.layers(model))):
            a = self.attention(model, i)
            if a is not None:
                head_dim = self.head_dim(a.self_attn)
                heads.append(self.n_heads(a))
                kv.append(self.kv_heads(a))
            else:
                heads.append(0)
                kv.append(None)
            f = self.ffn(model, i)
            ffn.append(_in_width(f.out) if f is not None else 0)
        if head_dim is None:  # every attention block removed: take it from the saved layout / config
            head_dim = self._config_head_dim(model.config)
        cls = self.classifier(model)
        gqa = any(k is not None for k in kv)
        return ModelShape(
            family=getattr(model.config, "model_type", self.model_types[0]), vocab=tables[0].num_embeddings,
            positions=tables[1].num_embeddings if len(tables) > 1 else 0,
            token_types=tables[2].num_embeddings if len(tables) > 2 else 0, hidden=hidden, head_dim=head_dim,
            heads=heads, ffn=ffn, attn_blocks=[h > 0 for h in heads], ffn_blocks=[f > 0 for f in ffn],
            num_labels=_out_width(cls) if cls is not None else 0, head_dense=self.head_dense(model) is not None,
            kv_heads=[k or 0 for k in kv] if gqa else None, attn_width_tied=self.attn_width_tied,
            **self.facts(model.config))

    def n_heads(self, parts: AttnParts) -> int:
        """Query heads of a layer, read from the projection widths."""
        width = _out_width(parts.q) if parts.q is not None else _out_width(parts.qkv) // 3
        return width // self.head_dim(parts.self_attn)

    def _config_head_dim(self, config: Any) -> int:
        layout = getattr(config, "vtrans_layout", None)
        if layout:
            return int(layout["head_dim"])
        hk, nk, _, _ = self.config_keys
        return getattr(config, hk) // getattr(config, nk)

    def shape_from_config(self, config: Any) -> ModelShape:
        """Shape of a config: a per_layer layout when it carries `vtrans_layout`, else dense."""
        if isinstance(config, dict):  # a raw config.json (validate_request works without weights)
            if config.get("vtrans_layout"):
                return ModelShape.from_dict(dict(config["vtrans_layout"]))
            from transformers import CONFIG_MAPPING
            config = CONFIG_MAPPING[config["model_type"]].from_dict(
                {k: v for k, v in config.items() if k != "transformers_version"})
        layout = getattr(config, "vtrans_layout", None)
        if layout:
            return ModelShape.from_dict(dict(layout))
        hidden, n_heads, ffn, n_layers = (getattr(config, k) for k in self.config_keys)
        return ModelShape(
            family=self.model_types[0], vocab=config.vocab_size, positions=config.max_position_embeddings,
            token_types=getattr(config, "type_vocab_size", 0) if self.has_token_types else 0,
            hidden=hidden, head_dim=hidden // n_heads, heads=[n_heads] * n_layers, ffn=[ffn] * n_layers,
            num_labels=getattr(config, "num_labels", 2), head_dense=True)

    has_token_types = True

    def write_config(self, config: Any, shape: ModelShape, reference: ModelShape) -> None:
        """Update `config` in place for a sliced model of `shape`.

        Uniform shapes get plain stock values (hidden = heads * head_dim) so plain
        from_pretrained loads them. Per-layer shapes keep stock keys as PLACEHOLDERS that
        construct a model of the right hidden width (heads set to the largest layer's, or 1
        head when that does not divide the width; FFN width one more than the largest layer's)
        and carry the truth in `vtrans_layout`, which `load_pruned` reads. The FFN placeholder
        makes plain from_pretrained fail on a shape mismatch (whenever some FFN block is kept)
        instead of loading with silently re-initialised weights.
        """
        hk, nk, fk, lk = self.config_keys
        kept = [i for i in range(shape.n_layers) if shape.attn_blocks[i] or shape.ffn_blocks[i]]
        if shape.is_uniform():
            setattr(config, hk, shape.hidden)
            setattr(config, nk, shape.heads[kept[0]] if kept else reference.heads[0])
            setattr(config, fk, shape.ffn[kept[0]] if kept else 1)
            setattr(config, lk, len(kept))
            if hasattr(config, "vtrans_layout"):
                delattr(config, "vtrans_layout")
        else:
            max_h = max(shape.heads) if max(shape.heads) > 0 else 1
            setattr(config, hk, shape.hidden)
            setattr(config, nk, max_h if shape.hidden % max_h == 0 else 1)
            # a width no layer has: every kept FFN block then mismatches in plain from_pretrained,
            # which raises instead of silently random-initialising skipped blocks' weights
            setattr(config, fk, max(shape.ffn) + 1)
            setattr(config, lk, shape.n_layers)
            config.vtrans_layout = shape.to_dict()
        config.vtrans_reference = reference.to_dict()


def _out_width(mod: nn.Module) -> int:
    """Output features of an nn.Linear or a transformers Conv1D (weight [in, out])."""
    return mod.out_features if isinstance(mod, nn.Linear) else mod.weight.shape[1]


def _in_width(mod: nn.Module) -> int:
    return mod.in_features if isinstance(mod, nn.Linear) else mod.weight.shape[0]

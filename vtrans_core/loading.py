"""load_pruned: load a vtrans output directory (either layout) without pickle or remote code.

- The config is read as JSON first: `auto_map` (remote code) and unknown model types or
  architectures are refused with CompressionError("model") before anything is constructed.
- Only safetensors weights are read (model.safetensors or a sharded index); a directory with
  only .bin / .pt weights is refused.
- uniform outputs are stock checkpoints: plain from_pretrained (use_safetensors=True) with the
  family's Auto class (AutoModelForSequenceClassification for the encoders,
  AutoModelForCausalLM for the decoders).
- per_layer outputs carry `vtrans_layout` in config.json: the stock model class is built from
  the config (whose stock head/FFN keys are placeholders), every layer's q/k/v/o and FFN
  projections (nn.Linear or Conv1D, fused q|k|v included) are resized to the saved shapes, the
  self-attention head attributes are set, removed blocks are swapped for the family's identity
  modules, and the safetensors state dict is loaded strictly: every key must match and none may
  be missing, except a tied LM head's (save_pretrained stores a tied weight once; the tie
  restores it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CompressionError
from .families import adapter_for
from .flops import ModelShape
from .materialize import save_pruned  # noqa: F401  (re-exported: vtrans_core.save_pruned)


def _resize_linear(lin: nn.Module, out_features: int, in_features: int) -> None:
    """Fresh (uninitialised) weights of the given size for an nn.Linear or a Conv1D ([in, out])."""
    dev, dt = lin.weight.device, lin.weight.dtype
    conv = not isinstance(lin, nn.Linear)
    size = (in_features, out_features) if conv else (out_features, in_features)
    lin.weight = nn.Parameter(torch.empty(*size, device=dev, dtype=dt))
    if lin.bias is not None:
        lin.bias = nn.Parameter(torch.empty(out_features, device=dev, dtype=dt))
    if conv:
        lin.nx, lin.nf = in_features, out_features
    else:
        lin.in_features, lin.out_features = in_features, out_features


def auto_class(adapter):
    import transformers

    return getattr(transformers, adapter.auto_class)


def _safetensors_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise CompressionError("model", f"{path} has no safetensors weights (pickle formats are not loaded)")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(path / f)))
    return sd


def read_config(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "config.json"
    if not p.exists():
        raise CompressionError("model", f"{path} has no config.json")
    cfg = json.loads(p.read_text())
    adapter = adapter_for(cfg)  # refuses auto_map and unknown families
    archs = cfg.get("architectures") or []
    if archs and archs[0] not in adapter.architectures:
        raise CompressionError("model", f"architecture {archs[0]} is not supported "
                               f"(supported: {', '.join(adapter.architectures)})")
    return cfg


def load_pruned(path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    from transformers import AutoConfig

    path = Path(path)
    cfg = read_config(path)
    auto = auto_class(adapter_for(cfg))
    if "vtrans_layout" not in cfg:
        model = auto.from_pretrained(str(path), use_safetensors=True)
    else:
        config = AutoConfig.from_pretrained(str(path))
        model = auto.from_config(config)
        adapter = adapter_for(model)
        shape = ModelShape.from_dict(cfg["vtrans_layout"])
        _resize(model, adapter, shape)
        _load_strict(model, _safetensors_state_dict(path), path)
        got = adapter.shape_of(model)
        if got != shape:
            raise CompressionError("model", f"{path}: weights do not match vtrans_layout ({got} vs {shape})")
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict demanding every key, except the second name of a tied parameter."""
    missing, unexpected = model.load_state_dict(sd, strict=False)
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    tied = {n for group in names.values() if len(group) > 1 and any(g in sd for g in group) for n in group}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CompressionError("model", f"{path}: weights do not match vtrans_layout (missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]})")


def _resize(model: nn.Module, adapter, shape: ModelShape) -> None:
    H, d = shape.hidden, shape.head_dim
    if len(adapter.layers(model)) != shape.n_layers:
        raise CompressionError("model", "config layer count does not match vtrans_layout")
    for l in range(shape.n_layers):
        attn = adapter.attention(model, l)
        if not shape.attn_blocks[l]:
            adapter.skip_attention(model, l)
        elif attn is not None:
            A, K = shape.heads[l] * d, shape.kv[l] * d
            if attn.qkv is not None:
                _resize_linear(attn.qkv, A + 2 * K, H)
            else:
                _resize_linear(attn.q, A, H)
                for lin in (attn.k, attn.v):
                    _resize_linear(lin, K, H)
            _resize_linear(attn.o, H, A)
            adapter.set_heads(attn.self_attn, shape.heads[l], d, shape.kv[l])
        ffn = adapter.ffn(model, l)
        if not shape.ffn_blocks[l]:
            adapter.skip_ffn(model, l)
        elif ffn is not None:
            for lin in ffn.inputs:
                _resize_linear(lin, shape.ffn[l], H)
            _resize_linear(ffn.out, H, shape.ffn[l])

"""Family adapters: one small file per model family (see base.py for what an adapter maps).

`adapter_for(model_or_config)` picks the adapter by config.model_type and refuses anything else
(including configs that ask for remote code via `auto_map`) with CompressionError("model").
"""
from __future__ import annotations

from typing import Any

from ..errors import CompressionError
from .base import AttnParts, FamilyAdapter, FfnParts
from .bert import BertAdapter
from .distilbert import DistilBertAdapter
from .gpt2 import Gpt2Adapter
from .llama import LlamaAdapter
from .roberta import RobertaAdapter

ADAPTERS: dict[str, FamilyAdapter] = {}
for _adapter in (BertAdapter(), RobertaAdapter(), DistilBertAdapter(), LlamaAdapter(), Gpt2Adapter()):
    for _t in _adapter.model_types:
        ADAPTERS[_t] = _adapter

SUPPORTED_FAMILIES = tuple(sorted(ADAPTERS))


def adapter_for(model_or_config: Any) -> FamilyAdapter:
    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, dict):
        model_type, auto_map = config.get("model_type"), config.get("auto_map")
    else:
        model_type, auto_map = getattr(config, "model_type", None), getattr(config, "auto_map", None)
    if auto_map:
        raise CompressionError("model", "the model config asks for remote code (auto_map); only stock "
                               f"architectures of these families are accepted: {', '.join(SUPPORTED_FAMILIES)}")
    adapter = ADAPTERS.get(model_type or "")
    if adapter is None:
        raise CompressionError("model", f"model_type {model_type!r} is not supported "
                               f"(supported families: {', '.join(SUPPORTED_FAMILIES)})")
    if hasattr(model_or_config, "named_modules"):
        adapter.check_model(model_or_config)
    return adapter


__all__ = ["ADAPTERS", "AttnParts", "FamilyAdapter", "FfnParts", "SUPPORTED_FAMILIES", "adapter_for"]

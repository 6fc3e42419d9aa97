"""vtrans_core: VTrans structured pruning of encoder transformers (no HTTP, Celery or SQL here).

`import vtrans_core` stays cheap (no torch/transformers import): the torch-heavy names are
loaded on first use through module-level __getattr__.
"""
from __future__ import annotations

import importlib
from typing import Any

from .budget import Budget
from .errors import CompressionCancelled, CompressionError
from .options import CompressionOptions

# name -> module that defines it (imported lazily)
_LAZY = {
    "compress": "entry",
    "validate_request": "entry",
    "CompressionResult": "entry",
    "load_task": "data",
    "inspect_dataset_file": "data",
    "TaskData": "data",
    "load_pruned": "loading",
    "save_pruned": "loading",
    "PrunableModel": "prunable",
    "PruningPlan": "plan",
    "count_params": "flops",
    "count_flops": "flops",
}

__all__ = ["Budget", "CompressionCancelled", "CompressionError", "CompressionOptions", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vtrans_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

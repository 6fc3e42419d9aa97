"""Which Celery queue a job goes to (issue #16): the rule lives here and only here.

Off by default: with neither VTRANS_GPU_QUEUE nor VTRANS_CPU_QUEUE set, every job goes to
VTRANS_QUEUE, as before. With them set:
  1. an operator override wins: VTRANS_QUEUE_OVERRIDES maps a tenant ("tenant:<id>") or a model
     (uploaded id, stable name, hub ID; shell-style wildcards allowed) to a queue, first match in
     the mapping's order;
  2. decoders (causal LMs) and models of at least VTRANS_GPU_MIN_PARAMS parameters go to the gpu queue;
  3. everything else (small encoders) goes to the cpu queue.
A queue left empty falls back to VTRANS_QUEUE, so a one-queue set-up can route only the big jobs.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from .settings import Settings

# model_type values of the decoder families vtrans_core prunes (vtrans_core/families/).
DECODER_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3", "opt", "gpt_neox", "falcon", "phi",
                           "phi3", "gemma", "gemma2"})


def estimated_params(config: dict[str, Any] | None) -> int | None:
    """Rough parameter count from config.json (12 L H^2 for the blocks + the embeddings); None when
    the config does not say. Enough to tell a 100M encoder from a 7B decoder, which is all routing needs."""
    if not config:
        return None
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    layers = config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers")
    if not isinstance(hidden, int) or not isinstance(layers, int):
        return None
    vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else 0
    ffn = config.get("intermediate_size") or config.get("n_inner") or 4 * hidden
    ffn = ffn if isinstance(ffn, int) else 4 * hidden
    return layers * (4 * hidden * hidden + 2 * hidden * ffn) + vocab * hidden


def is_decoder(config: dict[str, Any] | None) -> bool:
    if not config:
        return False
    archs = config.get("architectures") or []
    return (config.get("model_type") in DECODER_TYPES
            or any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs))


def needs_gpu(settings: Settings, config: dict[str, Any] | None) -> bool:
    params = estimated_params(config)
    return is_decoder(config) or (params is not None and params >= settings.gpu_min_params)


def choose_queue(settings: Settings, tenant: str, model_keys: list[str], config: dict[str, Any] | None) -> str:
    """The queue for a job of `tenant` on the model known by `model_keys` (id, name, hub ID)."""
    for pattern, queue in settings.queue_overrides.items():
        if pattern.startswith("tenant:"):
            if fnmatchcase(tenant, pattern[len("tenant:"):]):
                return queue
        elif any(fnmatchcase(key, pattern) for key in model_keys if key):
            return queue
    if not (settings.gpu_queue or settings.cpu_queue):
        return settings.queue
    if needs_gpu(settings, config):
        return settings.gpu_queue or settings.queue
    return settings.cpu_queue or settings.queue


def queue_for(settings: Settings, tenant: str, prepared: Any) -> str:
    """choose_queue for a job_requests.PreparedJob."""
    m = prepared.model
    return choose_queue(settings, tenant, [m.target, m.ref, m.name or ""], m.config)


def all_queues(settings: Settings) -> list[str]:
    """Every queue a job can be routed to with these settings (a worker consuming them all runs anything)."""
    queues = [settings.queue, settings.gpu_queue, settings.cpu_queue, *settings.queue_overrides.values()]
    return list(dict.fromkeys(q for q in queues if q))

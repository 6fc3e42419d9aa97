"""Activation checkpointing of a model's transformer layers, for any family adapter.

Without it, backward keeps every layer's intermediate tensors (q, k, v, scores, the FFN's
gate/up/activation, ...: B*T*(16*H + 4*F) values a layer, lm_runtime's estimate); with it only
each layer's input is kept and one layer at a time is recomputed during backward, at the cost
of one more forward (~1/3 more compute a training step).

Why our own wrapper rather than transformers' `gradient_checkpointing_enable()`: that one acts
only in training mode, and `faster` trains its masks with the model in eval mode (dropout off,
the gates' noise the only noise); it is also absent from some families' classes. Here each
layer's forward goes through `torch.utils.checkpoint` (non-reentrant: gradients reach the
masks even when no input or weight of the layer requires grad) whenever grad is enabled.

Gates: PrunableModel samples each gate once per forward and must hand the recomputation the
same sample, so while checkpointing is on it keeps its gate cache until the next forward
(`pm.keep_gates`); dropout draws are replayed by torch's saved RNG state.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

MODES = ("auto", "on", "off")


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model   # a peft (LoRA) wrapper


@contextmanager
def checkpointed_layers(model: nn.Module, enabled: bool = True, pm=None) -> Iterator[None]:
    """Within the block, every transformer layer of `model` recomputes its activations in
    backward. `pm`: the PrunableModel whose hooks gate the model, if any (keeps its gate samples
    for the recomputation). Restores the layers' own forward on exit."""
    if not enabled:
        yield
        return
    from .families import adapter_for

    base = _base(model)
    layers = list(adapter_for(base).layers(base))
    own = [vars(layer).get("forward") for layer in layers]   # a forward patched on the instance before us
    for layer in layers:
        layer.forward = recomputed_in_backward(layer.forward)   # an instance attribute shadows the class's forward
    previous = pm.keep_gates if pm is not None else None
    if pm is not None:
        pm.keep_gates = True
    # No KV cache while recomputing: a layer run twice would append its keys and values twice.
    use_cache = getattr(base.config, "use_cache", None)
    if use_cache is not None:
        base.config.use_cache = False
    try:
        yield
    finally:
        for layer, before in zip(layers, own):
            if before is None:
                del layer.forward
            else:
                layer.forward = before
        if pm is not None:
            pm.keep_gates = previous
        if use_cache is not None:
            base.config.use_cache = use_cache


def recomputed_in_backward(fn):
    """`fn` under non-reentrant checkpointing whenever grad is enabled (keeps only its inputs for
    backward), called as it is otherwise."""
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():   # evaluation: nothing is kept for backward anyway
            return fn(*args, **kwargs)
        return checkpoint(fn, *args, use_reentrant=False, **kwargs)
    return run

"""How the pruned model's weights recover (the distillation fine-tuning after the cut).

- "full": every weight trains (AdamW: a gradient and two fp32 moments per parameter).
- "lora": the weights stay frozen and low-rank adapters (the `peft` library, rank `lora_rank`
  on every linear projection of the blocks, not the LM head) train instead; they are merged
  into the weights before the model is saved, so the output is a plain dense model that never
  needs peft. Optimiser state shrinks from 12 bytes x every parameter to the adapters' (~1-2%
  of the weights at rank 16), which is what lets a 7B decoder's recovery fit one 80 GB GPU
  (full: 7B x (2 + 2 + 8) bytes = 84 GB for the weights, gradients and moments alone).
- "auto" (default): "full" when its training fits in the memory available, else "lora" (on a
  GPU; lm_runtime.check_memory says why not on CPU). Measured on SmolLM2-135M (docs/DECODERS.md):
  at the same recovery steps full recovers more perplexity than LoRA (15.35 vs 15.55 at the
  default lora_lr, 16.36 at 2e-4; dense 14.73); LoRA's gain is memory, not quality, so it is
  taken only when full would not fit. Classification models (encoders of a few hundred MB)
  always fit.
"""
from __future__ import annotations

from typing import Any

from .errors import CompressionError

RECOVERY_MODES = ("auto", "full", "lora")


def lora_param_count(shape: Any, rank: int) -> int:
    """Parameters of rank-r adapters on every projection of every block: r x (in + out) each.
    An upper bound from the shape (attention projections counted at the hidden width)."""
    h, layers = shape.hidden, shape.n_layers
    ffn = max(shape.ffn, default=0)
    per_layer = 4 * 2 * h + 3 * (h + ffn)   # q, k, v, o + gate, up, down (encoders: 2 of the 3)
    return rank * layers * per_layer


def wrap(model: Any, rank: int) -> Any:
    """The model with LoRA adapters on its block projections (peft); only they train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:   # an optional dependency: a clear message, not a traceback
        raise CompressionError("options.recovery", "'lora' needs the peft package (pip install peft), "
                                                   "or use recovery 'full'") from exc
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none",
                        target_modules="all-linear")   # every Linear/Conv1D except the output head
    return get_peft_model(model, config)


def unwrap(peft_model: Any) -> Any:
    """The adapters merged into the weights and removed: the plain model again (its own class,
    its own config, saved and loaded without peft)."""
    model = peft_model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_fraction(model: Any) -> float:
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trained / max(total, 1)

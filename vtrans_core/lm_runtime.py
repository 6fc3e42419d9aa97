"""Decoder runtime figures: dtype choice, the peak-memory estimate checked before a job starts,
prefill latency and decode tokens/s (docs/DECODERS.md states the formula and how it compares
with measured peaks).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from .errors import CompressionError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ACT_PER_TOKEN_LAYER = 16   # hidden-sized tensors kept for backward per token and layer (q,k,v,o, norms,
ACT_FFN_PER_TOKEN = 4      # residuals, ...) and FFN-sized ones (gate, up, activation, product)
OVERHEAD = 1.2             # allocator slack, tokenizer, Python objects: CUDA's peak follows the live tensors
# On CPU the measured peak is the process's RSS. glibc keeps what earlier stages freed (a stage
# starts on a heap the previous one grew and fragments it): SmolLM2 faster@0.8 with activation
# checkpointing, the refit stage's RSS was 1.47x its live tensors' count (6.32 vs 4.02 GB); full
# recovery 1.29x.
CPU_OVERHEAD = 1.5
# The RSS also holds the loaded libraries (torch, transformers, the service: 0.32 GB measured after
# import); CUDA's allocator peak does not. Without this the SmolLM2 estimate was 2.4% under the
# measured RSS (8.24 vs 8.44 GB).
CPU_RUNTIME_BYTES = 400 * 1024 ** 2


def pick_dtype(requested: str | None, device: Any) -> str:
    """float32 on CPU (bf16 matmuls are slow on most CPUs), bfloat16 on CUDA, unless asked."""
    if requested:
        return requested
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def estimate_peak_bytes(config: Any, dtype: str, batch: int, seq_len: int, trains_weights: bool,
                        refit_tokens: int = 0, device: Any = "cpu", lora_rank: int | None = None,
                        checkpointing: bool = False) -> dict:
    """Peak memory of a compression job, from the config alone (docs/DECODERS.md, "Memory").

    weights:     2 * P * b          the student (with masks) and the frozen dense teacher
    then the larger of two stages (they never overlap: the refit runs after the masks are gone):
    training     + P * (b + 8)      only when weights train (vtrans/fast): gradients + Adam's two fp32 moments
                                    (recovery "lora": A * (b + 8), A = r * L * (8 * H + 3 * (H + F)) adapter
                                    parameters, an upper bound; the frozen weights get no gradient)
                 + activations: B * T * L * (16 * H + 4 * F) * b   kept for the backward pass
                                    (activation checkpointing: B * T * (L * H + 16 * H + 4 * F) * b, each
                                    layer's input plus the one layer being recomputed)
                 + logits:    (3 * B * T + 8 * T) * V * 4   the student's logits, their gradient, the teacher's
                                    (fp32), and one window's loss intermediates (the LM loss runs window by
                                    window under checkpointing: tasks/language_modeling.lm_loss)
    refit        (refit_tokens N > 0: the least-squares refit of reconstruct.py on N calibration tokens)
                 + P * b                       the pruned weights kept to revert to (at most the dense size)
                 + 2 * N * H * b               every calibration row's input to the current layer, pruned and dense
                 + N * (F + 8 * H) * 4         one layer's recorded fp32 taps: projection inputs, sums, outputs
                 + (F + 1)^2 * 12 + (F + 1) * H * 8   the normal matrix (fp64 sum + fp32 batch product), its right side
                 + (2 * B * T + 6 * T) * V * 4  the held-out logit comparison: both models' logits, one window's statistics
    all times 1.2 (allocator slack and the rest of the process; 1.5 on CPU, see CPU_OVERHEAD),
    plus on CPU      + 400 MiB          the loaded libraries, which the measured RSS includes.
    """
    from .families import adapter_for
    from .flops import shape_size
    from .recovery import lora_param_count

    shape = adapter_for(config).shape_from_config(config)
    P = shape_size(shape, "params")
    b = DTYPE_BYTES[dtype]
    H, F, L, V, N = shape.hidden, max(shape.ffn, default=0), shape.n_layers, shape.vocab, refit_tokens
    logits = (3 * batch * seq_len + 8 * seq_len) * V * 4
    parts = {
        "weights": 2 * P * b,
        "training_state": (0 if not trains_weights else
                           P * (b + 8) if lora_rank is None else lora_param_count(shape, lora_rank) * (b + 8)),
        "activations": batch * seq_len * b * (L * H + ACT_PER_TOKEN_LAYER * H + ACT_FFN_PER_TOKEN * F if checkpointing
                                              else L * (ACT_PER_TOKEN_LAYER * H + ACT_FFN_PER_TOKEN * F)),
        "logits": logits,
    }
    if N:
        parts.update({"refit_revert_copy": P * b, "refit_hidden_states": 2 * N * H * b,
                      "refit_records": N * (F + 8 * H) * 4,
                      "refit_normal_matrix": (F + 1) ** 2 * 12 + (F + 1) * H * 8,
                      "refit_logits": (2 * batch * seq_len + 6 * seq_len) * V * 4})
    training = parts["training_state"] + parts["activations"] + logits
    refit = sum(v for k, v in parts.items() if k.startswith("refit_")) if N else 0
    runtime = CPU_RUNTIME_BYTES if torch.device(device).type == "cpu" else 0
    overhead = CPU_OVERHEAD if torch.device(device).type == "cpu" else OVERHEAD
    total = int((parts["weights"] + max(training, refit)) * overhead) + runtime
    parts["runtime"] = runtime
    return {"total_bytes": total, "parts": parts, "params": P, "dtype": dtype, "batch": batch, "seq_len": seq_len,
            "refit_tokens": N, "peak_stage": "refit" if refit > training else "training",
            "recovery": None if not trains_weights else ("full" if lora_rank is None else "lora"),
            "activation_checkpointing": "on" if checkpointing else "off"}


def available_bytes(device: Any, max_memory_gb: float | None) -> int:
    if max_memory_gb is not None:
        return int(max_memory_gb * 1e9)
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:   # Linux without psutil
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_memory(config: Any, dtype: str, batch: int, seq_len: int, trains_weights: bool, device: Any,
                 max_memory_gb: float | None, refit_tokens: int = 0, recovery: str = "full",
                 lora_rank: int = 16, activation_checkpointing: str = "off") -> dict:
    """The estimate, or CompressionError naming needed and available memory (never an OOM mid-run).

    "auto" settings resolve to the first setting that fits, best quality and speed first: full
    recovery without checkpointing, then with activation checkpointing (the same result, ~1/3
    more compute a step), then LoRA (recovery.py), then LoRA with checkpointing. The estimate
    returned says which ("recovery", "activation_checkpointing"). On CPU LoRA is counted like
    full training and "auto" never picks it: measured (SmolLM2-135M, docs/DECODERS.md) the
    process RSS with LoRA was no lower than with full recovery (11.9-12.8 vs 11.4 GB) although
    autograd keeps no more tensors: the CPU allocator keeps what many small adapter tensors leave
    behind, so the saving the formula counts is not there to rely on. The CUDA allocator's peak
    follows the live tensors."""
    have = available_bytes(device, max_memory_gb)
    cuda = torch.device(device).type == "cuda"
    modes = ["full", "lora"] if recovery == "auto" and cuda else ["full" if recovery == "auto" else recovery]
    recompute = [False, True] if activation_checkpointing == "auto" else [activation_checkpointing == "on"]
    for mode, ckpt in [(mode, ckpt) for mode in modes for ckpt in recompute]:   # best first
        est = estimate_peak_bytes(config, dtype, batch, seq_len, trains_weights, refit_tokens, device,
                                  lora_rank if mode == "lora" and cuda else None, ckpt)
        if trains_weights:
            est["recovery"] = mode
        if est["total_bytes"] <= have:
            break
    est["available_bytes"] = have
    if est["total_bytes"] > have:
        need = f"this job needs about {est['total_bytes'] / 1e9:.1f} GB ({est['params'] / 1e6:.0f}M params in {dtype}, "
        have_text = f"only {have / 1e9:.1f} GB is available on {device}"
        if est["peak_stage"] == "refit":   # the least-squares refit, not training, sets the peak
            raise CompressionError("options.calibration_tokens", f"{need}least-squares refit on {refit_tokens} "
                                   f"calibration tokens) but {have_text}; lower calibration_tokens or "
                                   "calibration_rows, use dtype bfloat16, or set reconstruct 'off'")
        lora = " (with LoRA recovery)" if est["recovery"] == "lora" else ""
        ckpt = " with activation checkpointing" if est["activation_checkpointing"] == "on" else ""
        hint = ("activation_checkpointing 'on', " if est["activation_checkpointing"] == "off" else "")
        hint += "" if est["recovery"] != "full" or not cuda else "recovery 'lora', "
        raise CompressionError("options.batch_size", f"{need}batch {batch} x {seq_len} tokens{lora}{ckpt}) but "
                               f"{have_text}; lower batch_size or seq_len, use dtype bfloat16, {hint}or method "
                               "'faster' (no weight gradients)")
    return est


def peak_memory_bytes(device: Any) -> int | None:
    """Measured peak so far: CUDA allocator peak, or the process's max RSS on CPU (Linux: KiB)."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None


class StagePeaks:
    """Peak memory of each stage (masks, prune, refine, finetune, evaluate, ...), so a measured
    peak can be set against the estimate's stage (training or refit) and recovery modes compared
    where they differ. Reads the CUDA allocator's peak, or on Linux the process's VmHWM, and
    resets it at each stage change (torch.cuda.reset_peak_memory_stats; writing 5 to
    /proc/self/clear_refs). Where the reset is refused, each figure is the peak so far and
    `resettable` says so."""

    def __init__(self, device: Any):
        self.cuda = torch.device(device).type == "cuda"
        self.device = torch.device(device)
        self.peaks: dict[str, int] = {}
        self.stage: str | None = None
        self.resettable = True
        self._reset()

    def wrap(self, callback):
        """A progress callback that notes each stage change, then calls `callback`."""
        def noting(stage, fraction, metrics):
            if stage != self.stage:
                self._close()
                self.stage = stage
            if callback is not None:
                callback(stage, fraction, metrics)
        return noting

    def summary(self) -> dict:
        self._close()
        self.stage = None
        return {"bytes": dict(self.peaks), "resettable": self.resettable,
                "kind": "cuda max allocated" if self.cuda else "process VmHWM"}

    def _read(self) -> int | None:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
        except OSError:
            self.resettable = False

    def _close(self) -> None:
        if self.stage is not None:
            peak = self._read()
            if peak is not None:
                self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), peak)
        self._reset()


def _sync(device: Any):
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


@torch.no_grad()
def prefill_ms(models: list, device: Any, runs: int, batch: int, seq: int) -> list[float]:
    """Median ms of one forward over batch x seq random tokens per model, timed in alternation."""
    from .evaluate import measure_latency_ms

    return measure_latency_ms(models, device, runs, batch=batch, seq=seq)


@torch.no_grad()
def decode_tokens_per_s(models: list, device: Any, runs: int, new_tokens: int, prompt: int = 16) -> list[float]:
    """Greedy decode speed at batch 1 (new tokens / s after a `prompt`-token prefill, KV cache on):
    median over `runs` generations per model, in alternation after one warm-up each."""
    sync = _sync(device)
    gen = torch.Generator().manual_seed(0)
    times: list[list[float]] = [[] for _ in models]
    inputs = []
    for m in models:
        m.eval()
        limit = int(getattr(m.config, "max_position_embeddings", prompt + new_tokens))
        n_new = max(1, min(new_tokens, limit - prompt))
        x = torch.randint(3, int(m.config.vocab_size), (1, prompt), generator=gen).to(device)
        kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                  pad_token_id=0)
        m.generate(x, **kw)    # warm-up
        inputs.append((x, kw, n_new))
    for _ in range(runs):
        for k, (m, (x, kw, n_new)) in enumerate(zip(models, inputs)):
            sync()
            start = time.perf_counter()
            m.generate(x, **kw)
            sync()
            times[k].append(n_new / (time.perf_counter() - start))
    return [round(statistics.median(t), 2) for t in times]

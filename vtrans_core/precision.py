"""Mixed precision while compressing: matmuls in bfloat16 where the device runs them faster.

Weights, optimiser state and the least-squares solves stay float32, and torch.autocast keeps its
float32 ops (norms, losses) in float32; the matmuls of the forward and backward run in bfloat16.
What is measured and delivered is unaffected: evaluation, latency tables and the saved model are
float32 (`float32_section`).

Why it is worth it: a CPU with AMX (Intel Sapphire Rapids and later) runs a bfloat16 matmul far
faster than a float32 one (this project's 2-core machine: a 4096 x 384 x 1536 linear 50 ms in
float32, 2.7 ms in bfloat16, one thread; a MiniLM-L6 forward at 32 x 64 ~3.5x faster, forward +
backward ~1.8x), while a CPU without bfloat16 units emulates it, slower than float32. So "auto" measures it once per
process instead of guessing from the CPU's name; on CUDA it follows the device's bf16 support.

Classification only under "auto": decoders' perplexities (benchmarks/, docs/DECODERS.md) were
measured in float32, and a vocabulary-wide logit in bfloat16 keeps ~3 significant digits; an
LM job opts in with "bfloat16".
"""
from __future__ import annotations

import functools
import time
from contextlib import contextmanager, nullcontext

import torch

MODES = ("auto", "bfloat16", "off")
# bfloat16 is chosen on a CPU only when it runs the probe matmul at least this much faster: a
# CPU that merely emulates it (no AMX / AVX512-BF16) runs it several times slower than float32.
CPU_MIN_GAIN = 1.5
_PROBE = (1024, 384, 1536)   # tokens x in x out: one FFN projection of a MiniLM-size batch


@functools.lru_cache(maxsize=None)
def cpu_bf16_gain() -> float:
    """float32 time / bfloat16 time of one linear on this CPU (best of 3, after a warm-up)."""
    n, k, m = _PROBE
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(n, k, generator=gen), torch.randn(m, k, generator=gen)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        xd, wd = x.to(dtype), w.to(dtype)
        torch.nn.functional.linear(xd, wd)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            torch.nn.functional.linear(xd, wd)
            times.append(time.perf_counter() - t)
        best[dtype] = min(times)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def resolve(mode: str, device, weights_dtype: torch.dtype = torch.float32, task: str | None = None
            ) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for float32, why) for a job's `mixed_precision` option."""
    if mode == "off":
        return None, "off (asked)"
    if weights_dtype != torch.float32:
        return None, f"weights are already {str(weights_dtype).replace('torch.', '')}"
    if mode == "bfloat16":
        return torch.bfloat16, "bfloat16 (asked)"
    if task == "language-modeling":
        return None, "auto: float32 for language models (their perplexities were measured in float32)"
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: the GPU supports bfloat16"
        return None, "auto: the GPU has no bfloat16"
    if dev.type == "cpu":
        gain = cpu_bf16_gain()
        if gain >= CPU_MIN_GAIN:
            return torch.bfloat16, f"auto: bfloat16 matmuls {gain:.1f}x faster than float32 on this CPU (measured)"
        return None, f"auto: bfloat16 matmuls not faster on this CPU ({gain:.2f}x float32's speed, measured)"
    return None, f"auto: float32 on {dev.type}"


def autocast(dtype: torch.dtype | None, device):
    """The context every training / ranking / refit forward runs in (nothing when dtype is None)."""
    if dtype is None:
        return nullcontext()
    # No weight-cast cache: it keeps each parameter's bf16 copy until the outermost autocast
    # exits, and this one spans a whole job, so every optimiser step and every refit would run
    # on the weights as they were first cast (measured: a refit that changed nothing).
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, cache_enabled=False)


@contextmanager
def float32_section(device):
    """Exact float32 inside, whatever the caller's autocast: evaluation, latency and the solves."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield

"""Deployable exports of a compressed model (issue #15): ONNX, checked with onnxruntime.

`export_onnx` writes `<out>/onnx/model.onnx` with torch's standard exporter (torch.onnx.export,
the dynamo-based one: it needs the `onnx` and `onnxscript` packages, extra `onnx`), with batch
and sequence length left dynamic, then loads the file in onnxruntime and compares its logits
with the PyTorch model's on held-out rows, fed in batches of varying width (so a shape that was
baked in at trace time shows up as a failure, not a surprise in production). An export whose
outputs differ by more than |onnx - torch| <= ONNX_ATOL + ONNX_RTOL * |torch| anywhere, or whose
predicted labels differ on any row, is refused with CompressionError("export"): an artifact
named onnx/model.onnx is a promise that it computes the same function.

Both runtimes are then timed on the same held-out batch (alternating, median), so the metrics
say what serving the pruned model through onnxruntime gains or costs on the worker's CPU.

Causal LMs (`causal_lm=True`, the llama and gpt2 families) export the same way: inputs
input_ids / attention_mask, output `logits` [batch, sequence, vocab], computed without a KV cache
(use_cache=False: a prefill / scoring graph, not an incremental decoder). They are checked on
held-out LM windows of real text (`lm_held_out_batches`: full windows, shorter prefixes and a
right-padded batch of mixed lengths) at every real token position; the tolerance alone decides
there, since a top-1 flip between two next tokens whose logits agree within it is a tie, not a
different function (the agreement is still reported).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from .errors import CompressionError

EXPORT_FORMATS = ("onnx",)
ONNX_OPSET = 18
# fp32 kernels differ in summation order; 1e-4 absolute on logits of O(1..10) is far below any
# change of a prediction, and far above the ~1e-6 a correct graph shows (tests/core/test_export.py).
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-3
CHECK_ROWS = 64        # held-out rows compared
CHECK_BATCH = 16       # ... in batches of this many rows (each padded to its own longest row)
LATENCY_BATCH = 32
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
# external data (weights in a side file) only when one protobuf file could not hold them
MAX_INLINE_BYTES = 1_800_000_000


def check_export(value: Any) -> list[str]:
    """The request's `export` list, checked: [] for none; CompressionError("export") otherwise."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CompressionError("export", f"must be a list of formats (one of: {', '.join(EXPORT_FORMATS)})")
    unknown = [v for v in value if v not in EXPORT_FORMATS]
    if unknown:
        raise CompressionError("export", f"unknown format {unknown[0]!r} (supported: {', '.join(EXPORT_FORMATS)})")
    return sorted(set(value))


def onnx_available() -> str | None:
    """None when the ONNX tool chain is installed, else what is missing (for a clear error).
    find_spec only: the API process checks requests with it and must not import onnxruntime."""
    from importlib.util import find_spec

    missing = [mod for mod in ("onnx", "onnxscript", "onnxruntime") if find_spec(mod) is None]
    return ", ".join(missing) or None


def _logits_only(model, causal_lm: bool = False):
    """The model with named tensor inputs and one output, `logits` (the graph's interface).
    A causal LM runs without its KV cache: a cache would add past_key_values outputs whose
    shapes depend on the layer sizes pruning left, and scoring/prefill does not need them."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            if causal_lm:
                extra["use_cache"] = False
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    return LogitsOnly().eval()   # a fresh Module is in training mode; the exporter traces what it is given


def _inputs_of(batch: dict) -> dict:
    return {k: batch[k] for k in INPUT_ORDER if k in batch}


def export_onnx(model, out_dir: str | Path, batches: list[dict], *, latency_runs: int = 10,
                opset: int = ONNX_OPSET, tick=None, causal_lm: bool = False) -> dict[str, Any]:
    """Export `model` (a classifier, or a causal LM with `causal_lm`, in eval mode) to
    out_dir/onnx/model.onnx and check it.

    `batches`: held-out batches as `data.collate` (classifiers) or `lm_held_out_batches` (LMs)
    build them (input_ids, attention_mask and, for families that have them, token_type_ids;
    other keys are ignored); the first is the trace example, all are compared, the largest is
    timed. Returns the `export.onnx` metrics."""
    missing = onnx_available()
    if missing:
        raise CompressionError("export", f"ONNX export needs the packages {missing} (pip install 'vtrans[onnx]')")
    if not batches:
        raise CompressionError("export", "no held-out rows to check the exported model on")
    import onnxruntime as ort
    import torch

    tick = tick or (lambda done, total: None)
    # onnxruntime's CPU kernels are float32; a model trained in bfloat16/float16 (an LM job on a
    # GPU) is exported in float32 and checked as such. In place: callers export after saving.
    trained_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    model = model.to("cpu", torch.float32).eval()
    batches = [{k: v.to("cpu") for k, v in _inputs_of(b).items()} for b in batches]
    names = list(batches[0])
    target = Path(out_dir) / "onnx" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    wrapper = _logits_only(model, causal_lm)
    dims = {name: {0: "batch", 1: "sequence"} for name in names}   # named dynamic dimensions
    started = time.perf_counter()
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, tuple(batches[0][n] for n in names), str(target), input_names=names,
                              output_names=["logits"], dynamic_shapes=dims,
                              opset_version=opset, dynamo=True, external_data=n_bytes > MAX_INLINE_BYTES,
                              verbose=False)
    except Exception as err:  # the exporter's errors are long; the first line says what failed
        raise CompressionError("export", f"torch.onnx.export failed: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}") from None
    export_seconds = time.perf_counter() - started
    tick(1, 3)

    threads = torch.get_num_threads()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads   # the same cores PyTorch uses: a fair latency comparison
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(target), so, providers=["CPUExecutionProvider"])

    check = _compare(wrapper, session, batches, names, causal_lm)
    tick(2, 3)
    if not check["passed"]:
        worst, rows, agree = check["max_abs_diff"], check["rows"], check["prediction_agreement"]
        changed = (f" or change {rows - round(agree * rows)} of {rows} predictions" if not causal_lm else "")
        raise CompressionError("export", f"the ONNX model's logits differ from PyTorch's by up to {worst:.3g} "
                               f"(tolerance {ONNX_ATOL:g} + {ONNX_RTOL:g} x |logit|){changed} on held-out "
                               f"{'windows' if causal_lm else 'rows'}; not delivered")

    timed = max(batches, key=lambda b: b[names[0]].numel())
    torch_ms, onnx_ms = _time_both(wrapper, session, timed, names, latency_runs)
    tick(3, 3)
    files = sorted(p.relative_to(out_dir).as_posix() for p in target.parent.iterdir() if p.is_file())
    return {"file": "onnx/model.onnx", "files": files, "opset": opset, "inputs": names, "outputs": ["logits"],
            "dynamic_axes": {"batch": 0, "sequence": 1}, "exporter": f"torch.onnx (dynamo) {torch.__version__}",
            **({"task": "language-modeling", "logits_shape": ["batch", "sequence", "vocab"], "kv_cache": False}
               if causal_lm else {}),
            "dtype": "float32", **({"exported_from_dtype": trained_dtype} if trained_dtype != "float32" else {}),
            "onnxruntime": ort.__version__, "export_seconds": round(export_seconds, 2), "check": check,
            "latency_ms": {"pytorch": torch_ms, "onnxruntime": onnx_ms,
                           "speedup": round(torch_ms / onnx_ms, 3) if onnx_ms > 0 else None,
                           "batch": int(timed[names[0]].shape[0]), "seq": int(timed[names[0]].shape[1]),
                           "threads": threads, "device": "cpu", "runs": latency_runs}}


def _compare(wrapper, session, batches: list[dict], names: list[str], causal_lm: bool) -> dict[str, Any]:
    """Both runtimes on every batch: the largest excess over the tolerance decides. An LM is
    compared at the positions that hold a real token (attention_mask 1), padding is not output."""
    import numpy as np
    import torch

    worst, worst_excess, rows, agree, positions = 0.0, -1.0, 0, 0, 0
    for b in batches:
        with torch.no_grad():
            ref = wrapper(*(b[n] for n in names)).numpy()
        got = session.run(["logits"], {n: b[n].numpy() for n in names})[0]
        if got.shape != ref.shape:
            raise CompressionError("export", f"the ONNX graph answered shape {got.shape} where PyTorch gives "
                                   f"{ref.shape} ({'batch x sequence x vocab' if causal_lm else 'batch x labels'})")
        if causal_lm:
            real = b["attention_mask"].numpy().astype(bool)
            got, ref = got[real], ref[real]          # [real tokens, vocab]
        diff = np.abs(got - ref)
        worst = max(worst, float(diff.max()))
        worst_excess = max(worst_excess, float((diff - (ONNX_ATOL + ONNX_RTOL * np.abs(ref))).max()))
        agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
        positions += ref.shape[0]
        rows += int(b[names[0]].shape[0])
    passed = worst_excess <= 0 and (causal_lm or agree == positions)
    out = {"rows": rows, "batches": len(batches), "max_abs_diff": worst, "atol": ONNX_ATOL, "rtol": ONNX_RTOL,
           "prediction_agreement": agree / positions, "passed": passed}
    if causal_lm:
        out["tokens"] = positions     # token positions compared (each a full vocabulary of logits)
    return out


def _time_both(wrapper, session, batch: dict, names: list[str], runs: int) -> tuple[float, float]:
    """Median ms of `runs` forwards each, alternating (a load change hits both alike)."""
    import torch

    args = tuple(batch[n] for n in names)
    feeds = {n: batch[n].numpy() for n in names}
    with torch.no_grad():
        for _ in range(2):
            wrapper(*args)
            session.run(["logits"], feeds)
        t_torch, t_onnx = [], []
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            wrapper(*args)
            t_torch.append((time.perf_counter() - start) * 1000.0)
            start = time.perf_counter()
            session.run(["logits"], feeds)
            t_onnx.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(t_torch), 3), round(statistics.median(t_onnx), 3)


def held_out_batches(enc, device="cpu", rows: int = CHECK_ROWS, batch: int = CHECK_BATCH) -> list[dict]:
    """Batches of the first `rows` held-out rows (already shuffled), padded per batch, the
    longest rows first so the trace example is a full-width batch and the rest vary in width."""
    from .data import collate

    n = min(rows, len(enc.input_ids))
    order = sorted(range(n), key=lambda i: -len(enc.input_ids[i]))
    chunks = [order[i:i + batch] for i in range(0, n, batch)]
    # the timed batch: LATENCY_BATCH rows when there are that many
    out = [collate(enc, c, device) for c in chunks]
    if n >= LATENCY_BATCH:
        out.append(collate(enc, order[:LATENCY_BATCH], device))
    return out


LM_CHECK_WINDOWS = 8   # an LM's logits are [tokens x vocab]: a few windows already compare millions


def lm_held_out_batches(windows, rows: int = LM_CHECK_WINDOWS, pad_id: int = 0) -> list[dict]:
    """Batches of held-out LM windows (tasks.language_modeling.Windows, real tokens) that vary
    batch size and sequence length: 2 full windows (the trace example), 2 cut to 3/4, one
    alone at half length, and the rest right-padded to mixed lengths in one batch (the mask
    path). A window shorter than 8 tokens is used whole."""
    import torch

    ids = windows.ids[: max(1, rows)].to("cpu")
    if ids.shape[0] < 2:   # a trace example of batch 1 would fix the batch size in the graph
        ids = ids.repeat(2, 1)
    n, length = ids.shape

    def batch(x, mask=None):
        return {"input_ids": x.contiguous(), "attention_mask": torch.ones_like(x) if mask is None else mask}

    out = [batch(ids[:2])]
    if length >= 8 and n >= 4:
        out.append(batch(ids[2:4, : length * 3 // 4]))
        out.append(batch(ids[4:5, : length // 2]))
        rest = ids[5:]
        if len(rest):
            mask = torch.ones_like(rest)
            for i in range(len(rest)):       # lengths L, L/2, L/3, ...: padding on the right
                mask[i, max(2, length // (i + 1)):] = 0
            out.append(batch(rest.masked_fill(mask == 0, pad_id), mask))
    elif n > 2:
        out.append(batch(ids[2:]))
    return out

"""`vtrans compress ...`: compress a model locally, without the service.

    vtrans compress --model DIR_OR_ID --data tweet-sentiment|FILE --budget flops:0.5 \\
        --method vtrans|fast|faster --output DIR [--option key=value ...] [--json]

Bad input prints one line on stderr and exits with 2 (no traceback); a failure while running
exits with 1; Ctrl-C exits with 130 and leaves no partial output.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .errors import CompressionError

USAGE_ERROR, RUNTIME_ERROR = 2, 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints usage + exits 2; keep it to one line
        raise CompressionError("arguments", message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vtrans compress", description="Compress a transformer with VTrans structured pruning.")
    p.add_argument("--model", required=True, help="local Hugging Face model directory (safetensors) or hub ID")
    p.add_argument("--data", required=True, help="tweet-sentiment, a .csv/.tsv/.jsonl file (text[,text_pair],label) or hf:<name>[:<config>]")
    p.add_argument("--eval-data", default=None, help="optional separate evaluation set (same forms and labels as "
                   "--data): trains on every row of --data and reports quality on rows it never trained on")
    p.add_argument("--export", action="append", default=None, metavar="FORMAT",
                   help="also export the pruned model (onnx: OUTPUT/onnx/model.onnx, checked with onnxruntime)")
    p.add_argument("--budget", required=True, help="KIND:TARGET, e.g. flops:0.5 or params:0.4 (fraction that remains) or speedup:2 (faster)")
    p.add_argument("--method", default="vtrans", help="vtrans (default), fast or faster")
    p.add_argument("--output", required=True, help="directory for the compressed model")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of vtrans_core.options.CompressionOptions (repeatable), e.g. layout=per_layer")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length the FLOPs budget is counted at (default 128)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="save checkpoints in DIR and resume from the one there (an interrupted run goes on)")
    p.add_argument("--json", action="store_true", help="print the full metrics as JSON at the end")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


def parse_budget(text: str, seq_len: int | None) -> dict:
    kind, sep, target = text.partition(":")
    if not sep:
        raise CompressionError("budget", f"expected KIND:TARGET like flops:0.5, got {text!r}")
    try:
        value = float(target)
    except ValueError:
        raise CompressionError("budget.target", f"must be a number, got {target!r}") from None
    budget: dict[str, Any] = {"kind": kind, "target": value}
    if seq_len is not None:
        budget["seq_len"] = seq_len
    return budget


def parse_options(pairs: list[str]) -> dict:
    """key=value pairs; values are read as JSON (numbers, true/false, null) or else as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CompressionError("options", f"expected key=value, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = value
    return options


class _Printer:
    """Progress lines: on every stage change and at most every 2 seconds otherwise."""

    def __init__(self, quiet: bool):
        self.quiet, self.stage, self.last = quiet, None, 0.0

    def __call__(self, stage: str, fraction: float, metrics: dict) -> None:
        now = time.monotonic()
        if self.quiet or (stage == self.stage and now - self.last < 2.0 and fraction < 1.0):
            return
        self.stage, self.last = stage, now
        parts = [f"[{100 * fraction:5.1f}%] {stage:<9}"]
        if "step" in metrics and "total_steps" in metrics:
            parts.append(f"step {metrics['step']}")
        for key in ("loss", "kept_flops", "kept_params"):
            if isinstance(metrics.get(key), (int, float)):
                parts.append(f"{key} {metrics[key]:.4f}")
        if isinstance(metrics.get("eta_seconds"), (int, float)):
            parts.append(f"eta {metrics['eta_seconds']:.0f}s")
        print("  ".join(parts), flush=True)


def summary(metrics: dict, output_dir) -> str:
    d, p = metrics["dense"], metrics["pruned"]
    kept = metrics["kept"]
    lines = [
        f"saved to {output_dir} ({metrics['method']}, layout {metrics['layout']}, device {metrics['device']})",
        f"  accuracy  {d['accuracy']:.2f} -> {p['accuracy']:.2f}  ({metrics['eval_split']}, {metrics['eval_examples']} examples)",
        f"  params    {d['params']:,} -> {p['params']:,}  ({metrics['params_fraction']:.3f})",
        f"  flops     {d['flops']:,} -> {p['flops']:,}  ({metrics['flops_fraction']:.3f} at seq {metrics['budget']['seq_len']})",
        f"  latency   {d['latency_ms']:.1f} ms -> {p['latency_ms']:.1f} ms  (x{metrics['speedup']}, batch 32)",
        f"  kept      hidden {kept['hidden']}, heads {kept['heads_per_layer']}, ffn {kept['ffn_per_layer']}",
        f"  teacher   {'fine-tuned first' if metrics['teacher']['fine_tuned'] else 'model already had a head'};"
        f" total {metrics['total_seconds']:.0f}s",
    ]
    onnx = (metrics.get("export") or {}).get("onnx")
    if onnx:
        lat = onnx["latency_ms"]
        lines.append(f"  onnx      {onnx['file']}: max |diff| {onnx['check']['max_abs_diff']:.2g} on {onnx['check']['rows']} "
                     f"held-out rows; {lat['pytorch']:.1f} ms (PyTorch) -> {lat['onnxruntime']:.1f} ms (onnxruntime)")
    lines += [f"  WARNING   {w}" for w in metrics.get("warnings", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compress":
        argv = argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        _parser().print_help()
        return 0
    args = None
    try:
        args = _parser().parse_args(argv)
        budget = parse_budget(args.budget, args.seq_len)
        options = parse_options(args.option)
        from .entry import compress
        from .process_memory import keep_freed_memory

        keep_freed_memory()   # this process only compresses: see process_memory.py
        result = compress(args.model, args.data, budget, args.method, options, args.output, _Printer(args.quiet),
                          eval_data=args.eval_data, export=args.export, checkpoint=args.checkpoint)
    except CompressionError as err:
        print(f"vtrans compress: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("vtrans compress: interrupted, nothing written"
              + (f" (run it again to resume from {args.checkpoint})" if args and args.checkpoint else ""),
              file=sys.stderr)
        return 130
    except Exception as err:  # a failure while working: still one clear line, no traceback
        print(f"vtrans compress: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return RUNTIME_ERROR
    print(summary(result.metrics, result.output_dir))
    if args.json:
        print(json.dumps(result.metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

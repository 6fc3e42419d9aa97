"""The README.md shipped with every compressed model: what it is and what it costs/gains."""
from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "n/a"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _count(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= div:
            return f"{value / div:.2f}{unit}"
    return f"{value:.0f}"


def _evaluation_sentence(metrics: dict[str, Any]) -> str:
    evaluation = metrics.get("evaluation") or {}
    n = metrics.get("eval_examples", "the")
    if evaluation.get("source") == "eval_data":
        return (f"Quality is measured on {n} examples of the separate evaluation dataset (`eval_dataset`), rows the "
                "job never trained on; the job trained on every row of the training dataset.")
    return (f"Quality is measured on {n} examples of the `{metrics.get('eval_split', 'test')}` split carved from the "
            "training dataset (no `eval_dataset` was given): if the base model was fine-tuned on that dataset, it has "
            "seen these rows and the figures overstate quality on new data.")


def model_card(base_model: str, dataset: str, request: dict[str, Any], metrics: dict[str, Any], job_id: str) -> str:
    budget = request.get("budget") or {}
    dense, pruned = metrics.get("dense") or {}, metrics.get("pruned") or {}
    layout = metrics.get("layout") or (request.get("options") or {}).get("layout", "uniform")
    rows = [
        # vtrans_core reports accuracy and F1 in percent.
        ("accuracy (%)", _fmt(dense.get("accuracy"), ".2f"), _fmt(pruned.get("accuracy"), ".2f")),
        ("F1 (%, binary tasks)", _fmt(dense.get("f1"), ".2f"), _fmt(pruned.get("f1"), ".2f")),
        ("parameters", _count(dense.get("params")), _count(pruned.get("params"))),
        (f"FLOPs per {budget.get('seq_len', 128)}-token sequence", _count(dense.get("flops")), _count(pruned.get("flops"))),
        ("latency (ms, median batch forward)", _fmt(dense.get("latency_ms"), ".1f"), _fmt(pruned.get("latency_ms"), ".1f")),
    ]
    table = "\n".join(f"| {name} | {d} | {p} |" for name, d, p in rows)
    load = ("AutoModelForSequenceClassification.from_pretrained(\"model\")" if layout == "uniform"
            else "vtrans_core.load_pruned(\"model\")  # per-layer sizes need the vtrans loader")
    return f"""# Compressed {base_model}

Produced by vtrans job `{job_id}` with VTrans structured pruning (arXiv 2406.05276).

- **Base model:** {base_model} ({metrics.get('family', 'n/a')} family)
- **Dataset:** {dataset}
- **Method:** {request.get('method')} ; layout `{layout}`
- **Budget:** keep at most {_fmt(budget.get('target'), '.0%')} of the dense model's {budget.get('kind')}
- **Achieved:** params {_fmt(metrics.get('params_fraction'), '.1%')}, FLOPs {_fmt(metrics.get('flops_fraction'), '.1%')} of dense; speed-up {_fmt(metrics.get('speedup'), '.2f')}x (measured on `{metrics.get('device', 'n/a')}`)

| | dense | pruned |
|---|---|---|
{table}

{_evaluation_sentence(metrics)} Latency was measured on the worker that produced this model and
will differ on other hardware.

## Load

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = {load}
tokenizer = AutoTokenizer.from_pretrained("model")
```

`plan.json` lists the kept hidden channels, heads and FFN neurons per layer; `metrics.json`
holds every figure above and the training history.
"""

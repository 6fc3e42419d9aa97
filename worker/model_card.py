"""The README.md shipped with every compressed model: a Hugging Face model card.

The YAML metadata is written by huggingface_hub's ModelCardData (base_model, library_name,
pipeline_tag, tags, datasets, and a model-index with the evaluation split named), so a hub or a
model registry shows it properly; the body says what the model is and what it costs/gains, and
its load snippet runs as written from the folder model.tar.gz unpacks into.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")


@dataclass
class Source:
    """What the card says about the inputs. `hub_id` only when the base model is a hub repo."""

    model_name: str            # the model's own name (title): hub ID, config name, or upload folder name
    model_label: str           # longer description for the body (upload id, architecture)
    hub_id: str | None
    dataset_name: str
    dataset_label: str
    # The job's separate evaluation dataset (`eval_dataset`), when it had one: the figures are its.
    eval_dataset_name: str | None = None
    eval_dataset_label: str | None = None


# What the model-index calls the split when the figures come from a separate evaluation dataset:
# every row of that file was scored (metrics.eval_split says "eval_data", which names no split).
WHOLE_FILE_SPLIT = "full"


def evaluated_on(source: Source, metrics: dict[str, Any], default_split: str) -> tuple[str, str]:
    """(dataset, split) the quality figures were measured on, for the model-index."""
    # Both pipelines (classification and language modelling) record eval_split "eval_data" then.
    if source.eval_dataset_name and metrics.get("eval_split") == "eval_data":
        return source.eval_dataset_name, WHOLE_FILE_SPLIT
    return source.dataset_name, metrics.get("eval_split") or default_split


def budget_line(budget: dict[str, Any]) -> str:
    """The budget in its own terms: a speedup is a multiple, the other kinds a fraction kept."""
    if budget.get("kind") == "speedup":
        return (f"run at least {_fmt(budget.get('target'), '.2f')}x faster than the dense model "
                "(measured on the worker's device)")
    return f"keep at most {_fmt(budget.get('target'), '.0%')} of the dense model's {budget.get('kind')}"


def model_name_for_upload(config: dict[str, Any], filename: str, name: str | None = None) -> tuple[str, str | None]:
    """(name, hub id or None) of an uploaded model: the name it was uploaded under (a named,
    versioned upload), else the name it was saved under when config.json records it, else the
    archive's name without its suffix (`my-bert.tar.gz` -> `my-bert`). The upload name comes
    first because transformers 5 no longer writes _name_or_path, and a named upload's archive is
    often just `model.tar.gz`; the hub id (base_model) still comes from config.json."""
    saved = str(config.get("_name_or_path") or "").strip().rstrip("/")
    hub_id = saved if saved and HUB_ID.match(saved) and not saved.startswith((".", "/")) else None
    if name:
        return name, hub_id
    if saved:
        return (saved, hub_id) if hub_id else (saved.rsplit("/", 1)[-1], None)
    stem = filename
    for suffix in ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem or (config.get("architectures") or ["model"])[0], None


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


def _evaluation_sentence(source: Source, metrics: dict[str, Any]) -> str:
    evaluation = metrics.get("evaluation") or {}
    n = metrics.get("eval_examples", "the")
    if evaluation.get("source") == "eval_data":
        named = f" {source.eval_dataset_label}" if source.eval_dataset_label else ""
        return (f"Quality is measured on {n} examples of the separate evaluation dataset (`eval_dataset`){named}, "
                "rows the job never trained on; the job trained on every row of the training dataset.")
    return (f"Quality is measured on {n} examples of the `{metrics.get('eval_split', 'test')}` split carved from the "
            "training dataset (no `eval_dataset` was given): if the base model was fine-tuned on that dataset, it has "
            "seen these rows and the figures overstate quality on new data.")


def load_snippet(layout: str) -> str:
    """Runs as written in the folder that holds `model/` (what model.tar.gz unpacks to)."""
    if layout == "uniform":
        return ("from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                "model = AutoModelForSequenceClassification.from_pretrained(\"model\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"model\")")
    return ("from transformers import AutoTokenizer\n"
            "from vtrans_core import load_pruned  # per-layer sizes need the vtrans loader (pip install vtrans)\n\n"
            "model = load_pruned(\"model\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"model\")")


def onnx_section(metrics: dict[str, Any]) -> str:
    """The ONNX export's check and timing, when the job asked for it (empty otherwise)."""
    onnx = (metrics.get("export") or {}).get("onnx")
    if not onnx:
        return ""
    if onnx.get("task") == "language-modeling":
        return _lm_onnx_section(onnx)
    check, lat = onnx["check"], onnx["latency_ms"]
    return f"""
## ONNX

`onnx/model.onnx` (a separate artifact of the job: download it next to `model/`; opset {onnx['opset']}, inputs {', '.join(f'`{n}`' for n in onnx['inputs'])},
output `logits`, batch and sequence length dynamic) was exported with {onnx['exporter']} and checked
with onnxruntime {onnx['onnxruntime']} on {check['rows']} held-out rows: largest difference from the
PyTorch model's logits {check['max_abs_diff']:.2g} (tolerance {check['atol']:g} + {check['rtol']:g} x |logit|),
same prediction on {check['prediction_agreement']:.0%} of the rows.

{_onnx_latency(lat)}

```python
import numpy as np, onnxruntime as ort
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("model")
session = ort.InferenceSession("onnx/model.onnx")
enc = tokenizer(["an example"], return_tensors="np")
logits = session.run(["logits"], {{n: enc[n].astype(np.int64) for n in {onnx['inputs']!r}}})[0]
```
"""


def _onnx_latency(lat: dict[str, Any]) -> str:
    return (f"| latency, batch {lat['batch']} x {lat['seq']} tokens, {lat['threads']} CPU threads | ms |\n"
            f"|---|---|\n| pruned model, PyTorch | {_fmt(lat['pytorch'], '.1f')} |\n"
            f"| pruned model, onnxruntime | {_fmt(lat['onnxruntime'], '.1f')} |")


def _lm_onnx_section(onnx: dict[str, Any]) -> str:
    """A causal LM's graph: logits for every position, no KV cache; the snippet decodes greedily
    by re-running the whole sequence (what a graph without a cache means for generation)."""
    check, lat = onnx["check"], onnx["latency_ms"]
    return f"""
## ONNX

`onnx/model.onnx` (a separate artifact of the job: download it next to `model/`; opset {onnx['opset']}, inputs
{', '.join(f'`{n}`' for n in onnx['inputs'])}, output `logits` [batch, sequence, vocab], batch and sequence length
dynamic) was exported with {onnx['exporter']} without a KV cache: it scores or pre-fills whole sequences,
and generating with it re-runs the sequence for every new token. It was checked with onnxruntime
{onnx['onnxruntime']} on {check['rows']} held-out text windows ({check.get('tokens', 'n/a')} token positions): largest
difference from the PyTorch model's logits {check['max_abs_diff']:.2g} (tolerance {check['atol']:g} + {check['rtol']:g} x
|logit|), same next token at {check['prediction_agreement']:.0%} of the positions.

{_onnx_latency(lat)}

```python
import numpy as np, onnxruntime as ort
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("model")
session = ort.InferenceSession("onnx/model.onnx")
ids = tokenizer(["the first words of a text"], return_tensors="np")["input_ids"].astype(np.int64)
for _ in range(8):  # greedy decoding; no KV cache, so each step runs the whole sequence
    logits = session.run(["logits"], {{"input_ids": ids, "attention_mask": np.ones_like(ids)}})[0]
    ids = np.concatenate([ids, logits[:, -1:].argmax(-1)], axis=1)
print(tokenizer.decode(ids[0]))
```
"""


def card_data(source: Source, metrics: dict[str, Any]):
    from huggingface_hub import EvalResult, ModelCardData

    pruned = metrics.get("pruned") or {}
    dataset, split = evaluated_on(source, metrics, "test")
    results = []
    for metric, key in (("accuracy", "accuracy"), ("f1", "f1")):
        if isinstance(pruned.get(key), (int, float)):
            results.append(EvalResult(task_type="text-classification", dataset_type=dataset,
                                      dataset_name=dataset, dataset_split=split,
                                      metric_type=metric, metric_value=round(float(pruned[key]), 4),
                                      metric_name=f"{metric} (%)"))
    return ModelCardData(
        model_name=f"{source.model_name}-vtrans-pruned", base_model=source.hub_id, library_name="transformers",
        pipeline_tag="text-classification", tags=["vtrans", "pruned"], datasets=[source.dataset_name],
        eval_results=results or None)


def _lm_card(source: Source, request: dict[str, Any], metrics: dict[str, Any], job_id: str) -> str:
    """A language model's card: perplexity (window stated), prefill / decode speed, samples."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    budget = request.get("budget") or {}
    dense, pruned = metrics.get("dense") or {}, metrics.get("pruned") or {}
    ev = metrics.get("evaluation") or {}
    lat = metrics.get("latency") or {}
    pre, dec = lat.get("prefill") or {}, lat.get("decode") or {}
    layout = metrics.get("layout") or "uniform"
    rows = [
        (f"perplexity (held-out, {ev.get('window')}-token windows, stride {ev.get('stride')})",
         _fmt(dense.get("perplexity"), ".2f"), _fmt(pruned.get("perplexity"), ".2f")),
        ("parameters", _count(dense.get("params")), _count(pruned.get("params"))),
        (f"FLOPs per {metrics.get('flops_seq_len', budget.get('seq_len', 128))}-token sequence",
         _count(dense.get("flops")), _count(pruned.get("flops"))),
        (f"prefill latency (ms, batch {pre.get('batch')} x {pre.get('seq_len')})",
         _fmt(dense.get("prefill_ms"), ".1f"), _fmt(pruned.get("prefill_ms"), ".1f")),
        (f"decode (tokens/s, batch 1, {dec.get('new_tokens')} greedy tokens)", _fmt(dense.get("decode_tokens_per_s"), ".1f"),
         _fmt(pruned.get("decode_tokens_per_s"), ".1f")),
    ]
    table = "\n".join(f"| {name} | {d} | {p} |" for name, d, p in rows)
    samples = metrics.get("generation_samples") or {}
    sample_md = []
    for i, (d, p) in enumerate(zip(samples.get("dense") or [], samples.get("pruned") or []), 1):
        sample_md.append(f"{i}. prompt: `{d['prompt'].strip()}`\n   - dense: `{d['continuation'].strip()}`\n"
                         f"   - pruned: `{p['continuation'].strip()}`")
    snippet = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
               "model = AutoModelForCausalLM.from_pretrained(\"model\")\n"
               "tokenizer = AutoTokenizer.from_pretrained(\"model\")") if layout == "uniform" else load_snippet(layout)
    evaluated = ""
    if source.eval_dataset_label and metrics.get("eval_split") == "eval_data":
        evaluated = f"; perplexity measured on the separate evaluation text {source.eval_dataset_label}"
    body = f"""
# {source.model_name}, pruned with VTrans (task-agnostic, language modelling)

Produced by vtrans job `{job_id}` with VTrans structured pruning (arXiv 2406.05276): next-token loss plus
distillation from the dense model's own logits, on plain text.

- **Base model:** {source.model_label} ({metrics.get('family', 'n/a')} family)
- **Text:** {source.dataset_label}{evaluated}
- **Method:** {request.get('method')} ; layout `{layout}` ; dtype `{metrics.get('dtype', 'n/a')}`
- **Budget:** {budget_line(budget)}
- **Achieved:** params {_fmt(metrics.get('params_fraction'), '.1%')}, FLOPs {_fmt(metrics.get('flops_fraction'), '.1%')} of dense; prefill speed-up {_fmt(metrics.get('speedup'), '.2f')}x (measured on `{metrics.get('device', 'n/a')}`)

| | dense | pruned |
|---|---|---|
{table}

Perplexity = exp(mean next-token loss) on {_fmt(ev.get('tokens_scored'))} held-out tokens in non-overlapping
{ev.get('window')}-token windows; figures at other window lengths are not comparable.

## Greedy samples (held-out prompts)

{chr(10).join(sample_md) or 'none recorded'}

## Load

```python
{snippet}
```
{onnx_section(metrics)}"""
    result = []
    if isinstance(pruned.get("perplexity"), (int, float)):
        dataset, split = evaluated_on(source, metrics, "held-out")
        result = [EvalResult(task_type="text-generation", dataset_type=dataset,
                             dataset_name=dataset, dataset_split=split,
                             metric_type="perplexity", metric_value=round(float(pruned["perplexity"]), 4),
                             metric_name=f"perplexity ({ev.get('window')}-token windows)")]
    data = ModelCardData(model_name=f"{source.model_name}-vtrans-pruned", base_model=source.hub_id,
                         library_name="transformers", pipeline_tag="text-generation", tags=["vtrans", "pruned"],
                         datasets=[source.dataset_name], eval_results=result or None)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def model_card(source: Source, request: dict[str, Any], metrics: dict[str, Any], job_id: str) -> str:
    from huggingface_hub import ModelCard

    if metrics.get("task") == "language-modeling":
        return _lm_card(source, request, metrics, job_id)
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
    body = f"""
# {source.model_name}, pruned with VTrans

Produced by vtrans job `{job_id}` with VTrans structured pruning (arXiv 2406.05276).

- **Base model:** {source.model_label} ({metrics.get('family', 'n/a')} family)
- **Dataset:** {source.dataset_label}
- **Method:** {request.get('method')} ; layout `{layout}`
- **Budget:** {budget_line(budget)}
- **Achieved:** params {_fmt(metrics.get('params_fraction'), '.1%')}, FLOPs {_fmt(metrics.get('flops_fraction'), '.1%')} of dense; speed-up {_fmt(metrics.get('speedup'), '.2f')}x (measured on `{metrics.get('device', 'n/a')}`)

| | dense | pruned |
|---|---|---|
{table}

{_evaluation_sentence(source, metrics)} Latency was measured on the worker that produced this model and
will differ on other hardware.

## Load

In the folder `model.tar.gz` unpacks into (it holds `model/`):

```python
{load_snippet(layout)}
```

{onnx_section(metrics)}
`plan.json` lists the kept hidden channels, heads and FFN neurons per layer; `metrics.json`
holds every figure above and the training history.
"""
    data = card_data(source, metrics)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))

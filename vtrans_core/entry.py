"""The body of `vtrans_core.compress()` (docs/CONTRACTS.md §1) and `validate_request()`.

The module is not named `compress`: a submodule of that name would replace the package
attribute `vtrans_core.compress` (the function) with itself once anything imported it.

Order of work: every cheap check (options, budget, method, data, model files, family, reachable
minimum) runs before any training. Output goes to a temporary sibling of `output_dir` that is
renamed into place only at the very end, so a failure or a cancellation (the progress callback
raising) never leaves a half-written model behind.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .budget import Budget
from .errors import CompressionError
from .options import METHODS, CompressionOptions

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class CompressionResult:
    output_dir: Path
    metrics: dict
    plan: Any


# ----------------------------------------------------------------------------- cheap checks

def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise CompressionError("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def _config_dict(config: Any) -> dict | None:
    if config is None or isinstance(config, dict):
        return config
    return config.to_dict()


def _check_config(config: dict, budget: Budget, opts: CompressionOptions, data: Any = None):
    """Family support, the task (model x data x options.task) and the smallest size the
    architecture can reach, from a config alone. Returns the task; the task's option defaults
    are applied to `opts` (for whatever the user left unset)."""
    if config.get("auto_map"):
        raise CompressionError("model", "models with custom code (auto_map in config.json) are not supported")
    from .families import adapter_for
    from .tasks import choose_task

    adapter_for(config)  # raises CompressionError("model", ...) for an unknown family
    task = choose_task(config, data, opts.task)
    key = json.dumps(config, sort_keys=True, default=str)
    shape = copy.deepcopy(_shape_of_config(key))
    opts.apply_task_defaults(task.name, lambda o: _prunable_widths(shape, o))
    opts.task = task.name
    floor = _min_fraction_of_config(key, budget.size_kind, budget.seq_len, tuple(sorted(structures_of(opts))),
                                    opts.layout, opts.round_to)
    if budget.kind == "speedup":   # FLOPs bound the speedup from above (the exact check is the latency planner's)
        if budget.size_target < floor:
            raise CompressionError("budget.target", f"a {budget.target:g}x speedup needs fewer FLOPs than the smallest "
                                   f"model these options can reach ({floor:.3f} of the dense FLOPs, at most "
                                   f"~{1 / floor:.1f}x) in layout {opts.layout!r}")
        return task
    if budget.target < floor:
        raise CompressionError("budget.target", f"{budget.target:g} is below the smallest {budget.kind} fraction this "
                               f"architecture can reach with these options ({floor:.3f}) in layout {opts.layout!r}")
    return task


# The API validates every submit, and turning a config.json into a transformers config costs about
# a millisecond (twice: for the shape and for the floor): the answers are kept per distinct config
# (issue #16's load benchmark). Both are pure functions of the config's JSON.
@lru_cache(maxsize=64)
def _shape_of_config(config_json: str):
    from .families import adapter_for

    config = json.loads(config_json)
    return adapter_for(config).shape_from_config(config)


@lru_cache(maxsize=256)
def _min_fraction_of_config(config_json: str, kind: str, seq_len: int, structures: tuple[str, ...], layout: str,
                            round_to: int) -> float:
    from .plan import min_fraction

    return min_fraction(json.loads(config_json), kind, seq_len, structures=structures, layout=layout,
                        round_to=round_to)


def _prunable_widths(shape, opts: CompressionOptions) -> list[int]:
    """The widths round_to groups: the hidden dimension when it is pruned, every FFN when it is."""
    return ([shape.hidden] if opts.prune_hidden else []) + (list(shape.ffn) if opts.prune_ffn else [])


def _check_budget_method(budget: Budget, method: str) -> None:
    if budget.kind == "speedup" and method != "faster":
        raise CompressionError("budget.kind", "a speedup budget is supported by method 'faster' (it plans on a "
                               "measured latency table); use a flops budget with vtrans/fast")


def structures_of(opts: CompressionOptions) -> set[str]:
    s = set()
    if opts.prune_hidden:
        s.add("hidden")
    if opts.prune_heads:
        s.add("heads")
    if opts.prune_ffn:
        s.add("ffn")
    if opts.prune_blocks:
        s |= {"attn_block", "ffn_block"}
    return s


def _check_export(export: Any) -> list[str]:
    from .export import check_export, onnx_available

    formats = check_export(export)
    if "onnx" in formats:
        missing = onnx_available()
        if missing:   # refuse before any training, not after hours of it
            raise CompressionError("export", f"ONNX export needs the packages {missing} on the worker "
                                   "(pip install 'vtrans[onnx]')")
    return formats


def validate_request(model_config: dict | Any | None, budget: Any, method: Any, options: Any,
                     export: Any = None, data: Any = None) -> dict:
    """Cheap checks without loading weights; returns the normalized request (with `export`
    only when formats were asked for, so requests without it read as before).

    The API calls this to answer 422 before queuing a job. `data` (optional): a data file path,
    a built-in name, or a `tasks.DataKind` the service knows from an upload; a model/data
    combination no task accepts (a labelled CSV for a causal LM, plain text for a classifier) is
    refused naming `data`."""
    method = _check_method(method)
    opts = CompressionOptions.parse(options, method)
    parsed = Budget.parse(budget)
    _check_budget_method(parsed, method)
    formats = _check_export(export)
    config = _config_dict(model_config)
    if config is not None:
        _check_config(config, parsed, opts, data)
    return {"method": method, "budget": parsed.to_dict(), "options": opts.to_dict(),
            **({"export": formats} if formats else {})}


# ----------------------------------------------------------------------------- model loading

def _read_local_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CompressionError("model", f"{path} has no config.json (not a Hugging Face model directory)")
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CompressionError("model", f"{path}/config.json is not valid JSON ({err})") from None


def _check_local_weights(path: Path) -> None:
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        return
    pickles = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles:
        raise CompressionError("model", f"{path} has only pickle weights ({', '.join(sorted(pickles))}); vtrans loads "
                               "safetensors only — convert with save_pretrained(..., safe_serialization=True)")
    raise CompressionError("model", f"{path} has no model weights (*.safetensors)")


def resolve_model_source(model: Any) -> tuple[str, Any, dict | None]:
    """(kind, source, config dict or None). kind: "dir" | "hub" | "object"."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.is_dir():
            config = _read_local_config(path)
            _check_local_weights(path)
            return "dir", path, config
        if isinstance(model, str) and HUB_ID.match(model) and not path.exists():
            return "hub", model, None
        raise CompressionError("model", f"{model} is neither a local model directory nor a hub ID like 'org/name'")
    if hasattr(model, "config") and hasattr(model, "state_dict"):
        return "object", model, _config_dict(model.config)
    raise CompressionError("model", f"must be a model directory, a hub ID or a PreTrainedModel, got {type(model).__name__}")


def _hub_error(source: str, err: Exception) -> CompressionError:
    return CompressionError("model", f"could not load {source!r} from the Hugging Face hub ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); is it reachable, and does it have safetensors weights?")


def load_tokenizer(kind: str, source: Any):
    from transformers import AutoTokenizer

    where = source if kind != "object" else getattr(source, "name_or_path", "")
    if not where:
        raise CompressionError("model", "a model object needs `name_or_path` pointing at its tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(where))
    except Exception as err:
        if kind == "hub":
            raise _hub_error(str(where), err) from None
        raise CompressionError("model", f"could not load the tokenizer of {where} ({type(err).__name__}: {err})") from None


def head_matches(config: dict, labels: list[str]) -> list[str] | None:
    """The model's label order when it already has a classification head for these labels."""
    archs = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return None
    id2label = config.get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(len(id2label))]
    if len(names) != len(labels):
        return None
    if sorted(names) == sorted(labels):
        return names
    # An untouched default head (LABEL_0, LABEL_1, ...) trained on integer labels 0..n-1.
    if names == [f"LABEL_{i}" for i in range(len(names))] and sorted(labels, key=int if all(l.isdigit() for l in labels) else str) == [str(i) for i in range(len(labels))]:
        return [str(i) for i in range(len(labels))]
    return None


def load_classifier(kind: str, source: Any, labels: list[str], keep_head: bool):
    """An AutoModelForSequenceClassification; a fresh head for `labels` unless keep_head."""
    from transformers import AutoModelForSequenceClassification

    if kind == "object":
        if keep_head:
            return source
        raise CompressionError("model", "a model object must already have a classification head for the data's labels")
    kwargs: dict = {"use_safetensors": True}
    if not keep_head:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True)
    try:
        return AutoModelForSequenceClassification.from_pretrained(str(source), **kwargs)
    except CompressionError:
        raise
    except Exception as err:
        if kind == "hub":
            raise _hub_error(str(source), err) from None
        raise CompressionError("model", f"could not load {source}: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------- output dir

def _temp_sibling(output_dir: Path) -> Path:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))


def _publish(tmp: Path, output_dir: Path) -> None:
    """Move the finished model into place (replacing an earlier result in one rename step)."""
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}-{int(time.time())}")
        output_dir.rename(old)
        tmp.rename(output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(output_dir)


# ----------------------------------------------------------------------------- entry point

def compress(model: Any, data: Any, budget: Any, method: str, options: Any = None,
             output_dir: str | Path = "vtrans-out", progress=None, eval_data: Any = None,
             export: Any = None, checkpoint: Any = None, checkpoint_seconds: float = 300.0) -> CompressionResult:
    """Compress `model` on `data` to `budget` with `method`; see docs/CONTRACTS.md §1.

    `eval_data` (same forms as `data`, same labels): a separate evaluation set; the job then
    trains on every row of `data` and reports quality on rows it never trained on.
    `export` (e.g. ["onnx"]): also write `onnx/model.onnx` into output_dir, checked against the
    PyTorch model on held-out rows (vtrans_core/export.py); metrics["export"] says how it did.
    `checkpoint` (a folder, or a resume.CheckpointTarget): save checkpoints there at the stage
    boundaries and every `checkpoint_seconds` of fine-tuning, and continue from the one found
    there (resume.py); an unusable one is discarded with a warning. Removed on success."""
    from .data import check_data_spec

    method = _check_method(method)
    opts = CompressionOptions.parse(options, method)
    parsed_budget = Budget.parse(budget)
    _check_budget_method(parsed_budget, method)
    formats = _check_export(export)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise CompressionError("output_dir", f"{output_dir} exists and is not a directory")
    check_data_spec(data)
    if eval_data is not None:
        check_data_spec(eval_data, "eval_data")
    kind, source, config = resolve_model_source(model)
    if config is not None:
        _check_config(config, parsed_budget, opts, data)

    from .pipeline import run_pipeline  # torch-heavy: imported only once the request is sane

    from .checkpoint import CheckpointInvalid, clear_checkpoint
    from .resume import Session, as_target, request_fingerprint

    target = as_target(checkpoint)
    session = None
    if target is not None:
        session = Session(target, request_fingerprint(kind, source, config, data, eval_data, parsed_budget, method,
                                                      opts, formats), checkpoint_seconds).open()
    tmp = _temp_sibling(output_dir)
    try:
        try:
            plan, metrics = run_pipeline(kind, source, config, data, parsed_budget, method, opts, tmp, progress,
                                         eval_data=eval_data, export=formats, session=session)
        except CheckpointInvalid as err:
            # found unusable only while restoring (shapes, rows): start over once, without it
            session.discard(str(err))
            session = Session(target, session.fingerprint, checkpoint_seconds)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp = _temp_sibling(output_dir)
            plan, metrics = run_pipeline(kind, source, config, data, parsed_budget, method, opts, tmp, progress,
                                         eval_data=eval_data, export=formats, session=session)
        _publish(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target is not None:
        clear_checkpoint(target.directory)   # the result is out: nothing left to resume
    return CompressionResult(output_dir=output_dir, metrics=metrics, plan=plan)


def dense_copy(model):
    """A frozen copy of the dense model to distil from (and to evaluate as 'dense')."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher

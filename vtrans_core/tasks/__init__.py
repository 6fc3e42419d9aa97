"""Tasks: what a compression job optimises and reports (see base.py for the interface).

`choose_task(model_config, data, explicit)` picks the task for a request, before any work:
- explicit `options.task` ("sequence-classification" | "language-modeling") is honoured when the
  model can do it, else CompressionError("options.task");
- otherwise the model decides: a causal LM (LLaMA family, GPT-2) -> language modelling
  (task-agnostic), an encoder -> sequence classification;
- then the data must suit the task, checked cheaply from the file's name / header:
  CompressionError("data") for a labelled file with a causal LM or a .txt with an encoder.
A new task is one more file here and one more entry in TASKS.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CompressionError
from .base import Task, TaskSplits
from .language_modeling import BUILTIN_CORPORA, LanguageModeling
from .sequence_classification import SequenceClassification

TASKS: dict[str, Task] = {t.name: t for t in (SequenceClassification(), LanguageModeling())}


def choose_task(model_config: dict | None, data: Any = None, explicit: str | None = None) -> Task:
    if explicit is not None:
        if explicit not in TASKS:
            raise CompressionError("options.task", f"must be one of {', '.join(TASKS)}, got {explicit!r}")
        task = TASKS[explicit]
        if model_config is not None and not task.accepts(model_config):
            raise CompressionError("options.task", f"a {model_config.get('model_type')} model cannot be compressed "
                                   f"for {explicit}")
    elif model_config is None:
        task = TASKS["sequence-classification"]
    else:
        task = next(t for t in TASKS.values() if t.accepts(model_config))
    _check_data_fits(task, data)
    return task


@dataclass(frozen=True)
class DataKind:
    """What a caller that holds no file (the API, from an upload's record) knows of the data:
    `kind` "text" (plain documents) or "labelled" (text + label rows), and a name for messages."""
    kind: str
    name: str = "the dataset"


def _check_data_fits(task: Task, data: Any) -> None:
    """The cheap header-level check (the full read happens in task.load_data)."""
    if isinstance(data, str) and data in BUILTIN_CORPORA:
        data = DataKind("text", data)
    if isinstance(data, DataKind):
        if task.name == "sequence-classification" and data.kind == "text":
            raise CompressionError("data", f"{data.name} is plain text without labels, but this model is a classifier "
                                   "(sequence classification needs 'text' and 'label' columns)")
        if task.name == "language-modeling" and data.kind == "labelled":
            raise CompressionError("data", f"{data.name} is labelled classification data, but this model is a causal "
                                   "language model, compressed on plain text (.txt, or a text column only)")
        return
    if not isinstance(data, (str, Path)) or not Path(data).is_file():
        return
    path = Path(data)
    suffix = path.suffix.lower()
    if task.name == "sequence-classification" and suffix == ".txt":
        raise CompressionError("data", f"{path.name} is plain text without labels, but this model is a classifier "
                               "(sequence classification needs 'text' and 'label' columns)")
    if task.name == "language-modeling" and suffix in (".csv", ".tsv", ".jsonl"):
        with path.open(encoding="utf-8", errors="replace") as f:
            head = f.readline()
        if '"label"' in head or "label" in [c.strip().strip('"') for c in head.replace("\t", ",").split(",")]:
            raise CompressionError("data", f"{path.name} has a 'label' column: that is classification data, but this "
                                   "model is a causal language model, compressed on plain text")


__all__ = ["TASKS", "DataKind", "Task", "TaskSplits", "choose_task"]

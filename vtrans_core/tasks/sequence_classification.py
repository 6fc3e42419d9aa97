"""Sequence classification (the encoder setting): labelled rows, cross-entropy on the labels plus
distillation from a fine-tuned dense teacher's class logits, accuracy / F1.

This file only ADAPTS the existing, tested pieces to the Task interface (data.py reads and
splits 80/10/10 with a fixed seed; evaluate.py scores; training.py's distillation_loss), so
moving the pipeline onto tasks changes no result:
- data: CSV/TSV/JSONL with `text` (+ `text_pair`) and `label`, `tweet-sentiment`, `hf:<name>`;
  a plain .txt has no labels and is refused here (the API's 422 for "text file with a BERT");
- teacher: needed when the model has no classification head for the data's labels (it is then
  fine-tuned first, stage "teacher"); the teacher's class logits are cached per row;
- evaluation: accuracy (and F1) on the test split, or validation when there is no test split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CompressionError
from .base import Task, TaskSplits


class SequenceClassification(Task):
    name = "sequence-classification"
    primary_metric = "accuracy"
    higher_is_better = True
    teacher_cacheable = True
    auto_class = "AutoModelForSequenceClassification"

    def load_data(self, data: Any, seed: int) -> TaskSplits:
        from ..data import load_task

        if isinstance(data, (str, Path)) and Path(data).suffix.lower() == ".txt":
            raise CompressionError("data", f"{Path(data).name} is plain text without labels: sequence classification "
                                   "needs a .csv/.tsv/.jsonl file with 'text' and 'label' columns")
        task = load_task(data, seed)
        return TaskSplits(name=task.name, train=task.train, eval=task.eval_split, eval_split_name=task.eval_split_name,
                          meta={"labels": task.label_names, "task_data": task})

    def load_model(self, kind: str, source: Any, splits: TaskSplits) -> Any:
        from ..entry import head_matches, load_classifier

        task = splits.meta["task_data"]
        config = source.config.to_dict() if kind == "object" else _config_of(kind, source)
        order = head_matches(config, task.label_names) if config else None
        return load_classifier(kind, source, task.label_names, keep_head=order is not None)

    def needs_teacher(self, config: dict, splits: TaskSplits) -> bool:
        from ..entry import head_matches

        return head_matches(config, splits.meta["labels"]) is None

    def encode(self, tokenizer: Any, rows: Any, seq_len: int) -> Any:
        from ..data import encode

        return encode(tokenizer, rows, seq_len)

    def batches(self, encoded: Any, batch_size: int, device: Any, *, shuffle: bool, rng=None):
        from ..data import iterate_batches

        return iterate_batches(encoded, batch_size, device, shuffle=shuffle, rng=rng)

    def loss(self, student_logits, teacher_logits, batch, temperature, weight):
        from ..training import distillation_loss

        return distillation_loss(student_logits, teacher_logits, batch["labels"], temperature, weight)

    def evaluate(self, model, encoded, batch_size, device, tick=None) -> dict:
        from ..evaluate import evaluate

        return evaluate(model, encoded, model.config.num_labels, batch_size, device, tick)

    def quality_warnings(self, dense: dict, pruned: dict, encoded: Any = None) -> list[str]:
        from ..evaluate import quality_warnings

        if encoded is None:
            return []
        return quality_warnings(dense, pruned, encoded.labels, max(encoded.labels) + 1)


def _config_of(kind: str, source: Any) -> dict | None:
    if kind != "dir":
        return None
    import json

    return json.loads((Path(source) / "config.json").read_text())

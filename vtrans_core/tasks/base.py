"""What a task tells the pipeline, so that the pipeline, the methods and the planner never ask
"is this a classifier or a language model?" themselves.

A task is one file (sequence_classification.py, language_modeling.py; a token-classification
task would be a third) implementing `Task`:
- which models it takes (`accepts`: by the architecture in config.json) and how to load one;
- how its data is read and split (`load_data` -> TaskSplits: rows to train the masks / weights
  on, and the held-out rows every metric is computed on) and tokenized into batches (`encode`);
- whether a teacher must be trained first (`needs_teacher`: a classifier without a head for the
  labels does; a causal LM is its own teacher);
- the training loss and its distillation target (`loss`, `teacher_cacheable`);
- what is evaluated and how it is compared (`evaluate`, `primary_metric`, `higher_is_better`,
  `quality_warnings`), with everything a reader needs to compare figures (e.g. the perplexity
  window and stride) inside the returned dict.

The pipeline calls only these; see docs/TASKS.md for the call sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import CompressionError


@dataclass
class TaskSplits:
    """Rows a compression job works on, in the task's own row type (labelled texts, documents)."""
    name: str
    train: Any                   # what masks / weights are trained on (calibration text for LMs)
    eval: Any                    # held out: every reported metric is computed here
    eval_split_name: str = "test"
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What the upload response / metrics say about the data (rows, and tokens for text)."""
        return {"name": self.name, "train_rows": len(self.train), "eval_rows": len(self.eval), **self.meta}


class Task:
    name: str = ""
    primary_metric: str = ""     # "accuracy" | "perplexity"
    higher_is_better: bool = True
    # Teacher outputs small enough to cache per training row (class logits: yes; a vocabulary's
    # logits for every token of every window: no, they are recomputed per batch).
    teacher_cacheable: bool = True
    auto_class: str = ""         # the transformers Auto class of the models this task takes

    # ---- models ----
    def accepts(self, config: dict) -> bool:
        from ..families import adapter_for

        return adapter_for(config).auto_class == self.auto_class

    def load_model(self, kind: str, source: Any, splits: TaskSplits) -> Any:
        raise NotImplementedError

    def needs_teacher(self, config: dict, splits: TaskSplits) -> bool:
        raise NotImplementedError

    # ---- data ----
    def load_data(self, data: Any, seed: int) -> TaskSplits:
        raise NotImplementedError

    def encode(self, tokenizer: Any, rows: Any, seq_len: int) -> Any:
        raise NotImplementedError

    # ---- training ----
    def loss(self, student_logits, teacher_logits, batch: dict, temperature: float, weight: float):
        """(total, task_loss, distill_loss); distill is 0 when teacher_logits is None."""
        raise NotImplementedError

    # ---- evaluation ----
    def evaluate(self, model: Any, encoded: Any, batch_size: int, device: Any,
                 tick: Callable[[int, int], None] | None = None) -> dict:
        raise NotImplementedError

    def quality_warnings(self, dense: dict, pruned: dict, encoded: Any = None) -> list[str]:
        """Plain-language warnings about a delivered model (the evaluated rows in `encoded`)."""
        return []


def architecture_of(config: dict) -> str:
    archs = config.get("architectures") or []
    return archs[0] if archs else ""


def refuse(field_name: str, message: str) -> CompressionError:
    return CompressionError(field_name, message)

"""Evaluation: accuracy / F1 on a labelled split, and measured inference latency."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .data import Encoded, iterate_batches
from .precision import float32_section

LATENCY_BATCH, LATENCY_SEQ = 32, 128


def forward_logits(model, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
    return model(**inputs).logits


@torch.no_grad()
def predict_logits(model, enc: Encoded, batch_size: int, device, tick: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Logits for every row of `enc`, in row order (batches are length-sorted internally)."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(enc), model.config.num_labels)
    n_batches = (len(enc) + batch_size - 1) // batch_size
    for b, batch in enumerate(iterate_batches(enc, batch_size, device, shuffle=False)):
        out[batch["index"]] = forward_logits(model, batch).float().cpu()
        if tick is not None:
            tick(b + 1, n_batches)
    model.train(was_training)
    return out


def classification_metrics(logits: torch.Tensor, labels: list[int], num_labels: int) -> dict:
    """Accuracy in percent; for binary tasks also F1 (percent) of label 1."""
    pred = logits.argmax(-1)
    gold = torch.tensor(labels, dtype=torch.long)
    metrics = {"accuracy": round(100.0 * (pred == gold).float().mean().item(), 3) if len(labels) else None,
               "examples": len(labels)}
    if num_labels == 2:
        tp = ((pred == 1) & (gold == 1)).sum().item()
        fp = ((pred == 1) & (gold == 0)).sum().item()
        fn = ((pred == 0) & (gold == 1)).sum().item()
        metrics["f1"] = round(100.0 * 2 * tp / (2 * tp + fp + fn), 3) if tp + fp + fn else 0.0
    else:
        f1s = []
        for c in range(num_labels):
            tp = ((pred == c) & (gold == c)).sum().item()
            fp = ((pred == c) & (gold != c)).sum().item()
            fn = ((pred != c) & (gold == c)).sum().item()
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        metrics["macro_f1"] = round(100.0 * sum(f1s) / num_labels, 3)
    return metrics


# A pruned model within this many points of always answering the most common label has lost the
# task (e.g. masks collapsed under too strong a KL weight); the dense one must be clearly above it.
COLLAPSE_MARGIN, DENSE_MARGIN = 1.0, 5.0


def quality_warnings(dense: dict, pruned: dict, labels: list[int], num_labels: int) -> list[str]:
    """Plain-language warnings about a delivered model that scores like a constant answer.

    The budget is met and the checkpoint is valid, so this is not an error; but a pipeline that
    ships the result should know, and the metrics say it next to the accuracy."""
    if not labels or dense.get("accuracy") is None or pruned.get("accuracy") is None:
        return []
    majority = 100.0 * max(labels.count(c) for c in range(num_labels)) / len(labels)
    if pruned["accuracy"] <= majority + COLLAPSE_MARGIN and dense["accuracy"] >= majority + DENSE_MARGIN:
        return [f"the pruned model scores {pruned['accuracy']:.1f}% against {majority:.1f}% for always answering "
                f"the most common label (dense: {dense['accuracy']:.1f}%): it has lost the task. With vtrans/fast "
                "this usually means the KL weight (options.beta) was too strong for the schedule; use the "
                "method's default beta, or a looser budget"]
    return []


MEMORISED_RATIO = 0.99    # split accuracy >= 99% of training-row accuracy: scores like rows it learned
OVERLAP_WARN = 0.01       # share of eval texts that also occur in the training rows


def evaluation_warnings(from_training_file: bool, dense_eval: float | None, dense_train: float | None,
                        overlap: float) -> list[str]:
    """Warnings that the evaluation may not measure quality on unseen data (issue #11).

    A team usually compresses its own fine-tuned model with the very file it was fine-tuned on;
    the job's evaluation split is then carved from rows the teacher learned, and its dense and
    pruned accuracies measure memorisation (an independent check: 93.9% on such a split vs 84.2%
    on truly held-out rows). The tell is that the split scores as well as the training rows."""
    out = []
    if from_training_file and dense_eval is not None and dense_train is not None and dense_train > 0 \
            and dense_eval >= MEMORISED_RATIO * dense_train:
        out.append(f"the dense model scores {dense_eval:.1f}% on the evaluation split, as high as on the training rows "
                   f"({dense_train:.1f}%): if it was fine-tuned on this file it has seen these rows, and the accuracies "
                   "here measure memorisation rather than quality. Pass eval_dataset with rows it never saw")
    if overlap > OVERLAP_WARN:
        out.append(f"{100 * overlap:.1f}% of the evaluation rows also occur in the training data: the evaluation is "
                   "not on unseen rows")
    return out


def text_overlap(train_texts: list[str], eval_texts: list[str]) -> float:
    seen = {t.strip().lower() for t in train_texts}
    return sum(t.strip().lower() in seen for t in eval_texts) / max(1, len(eval_texts))


def evaluate(model, enc: Encoded, num_labels: int, batch_size: int, device, tick=None) -> dict:
    logits = predict_logits(model, enc, batch_size, device, tick)
    return classification_metrics(logits, enc.labels, num_labels)


def _latency_inputs(model, batch: int, seq: int, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    # Tiny test models have short position tables (RoBERTa also reserves 2 positions).
    seq = min(seq, int(getattr(model.config, "max_position_embeddings", seq + 2)) - 2)
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=gen).to(device),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device)}


@torch.no_grad()
def measure_latency_ms(models: list, device, runs: int, batch: int = LATENCY_BATCH, seq: int = LATENCY_SEQ,
                       tick: Callable[[int, int], None] | None = None) -> list[float]:
    """Median wall time (ms) per model of `runs` forwards on a fixed random batch.

    The models are timed in alternation (A, B, A, B, ...) after two warm-up forwards each, so
    a load change on a shared machine hits all of them alike instead of biasing one."""
    with float32_section(device):   # what a server runs, whatever the caller's autocast
        return _timed(models, device, runs, batch, seq, tick)


def _timed(models: list, device, runs: int, batch: int, seq: int, tick) -> list[float]:
    states = [m.training for m in models]
    for m in models:
        m.eval()
    inputs = [_latency_inputs(m, batch, seq, device) for m in models]
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for m, x in zip(models, inputs):
        for _ in range(2):
            m(**x)
    sync()
    times: list[list[float]] = [[] for _ in models]
    for i in range(runs):
        for k, (m, x) in enumerate(zip(models, inputs)):
            start = time.perf_counter()
            m(**x)
            sync()
            times[k].append((time.perf_counter() - start) * 1000.0)
            if tick is not None:
                tick(i * len(models) + k + 1, runs * len(models))
    for m, t in zip(models, states):
        m.train(t)
    return [round(statistics.median(t), 3) for t in times]

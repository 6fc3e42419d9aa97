"""Shared fixtures: a tiny BERT (with a tiny WordPiece tokenizer) and a tiny labelled CSV.

Everything is built inside the test session, so no network and no big downloads are needed.
The service tests reuse `tiny_model_dir` and `tiny_dataset_csv`.
"""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Two sentiment word lists make the tiny task learnable, so accuracy checks mean something.
POSITIVE_WORDS = ["good", "great", "happy", "love", "nice", "fun", "best", "cool"]
NEGATIVE_WORDS = ["bad", "awful", "sad", "hate", "poor", "boring", "worst", "ugly"]
FILLER_WORDS = ["the", "a", "movie", "day", "food", "car", "was", "is", "this", "it", "very", "so"]
TINY_LABELS = ["negative", "positive"]


def tiny_vocab() -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return special + sorted(set(POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS)) + list(".,!?")


def build_tiny_bert_dir(path: Path, *, with_head: bool = True, labels: list[str] | None = None,
                        layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64,
                        seed: int = 0) -> Path:
    """Save a randomly initialised tiny BERT + tokenizer as safetensors into `path`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    labels = labels or TINY_LABELS
    path.mkdir(parents=True, exist_ok=True)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    # transformers 5 ignores `vocab_file=` here (everything becomes [UNK]); pass the dict.
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(tiny_vocab())}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if with_head:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_dataset(path: Path, rows: int = 96, seed: int = 0, labels_as_int: bool = False) -> Path:
    """A CSV of short sentences whose label follows the sentiment words they contain."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = i % 2
            words = POSITIVE_WORDS if label == 1 else NEGATIVE_WORDS
            sentence = rng.sample(FILLER_WORDS, 3) + [rng.choice(words)] + rng.sample(FILLER_WORDS, 2)
            rng.shuffle(sentence)
            writer.writerow([" ".join(sentence), label if labels_as_int else TINY_LABELS[label]])
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny BertForSequenceClassification (labels negative/positive) saved with its tokenizer."""
    return build_tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    """A tiny BertModel without a classification head (forces the teacher stage)."""
    return build_tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert-base") / "model", with_head=False)


@pytest.fixture(scope="session")
def tiny_dataset_csv(tmp_path_factory) -> Path:
    """96 rows, columns text,label; labels negative/positive, balanced."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny-data") / "tiny.csv")

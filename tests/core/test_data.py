"""Data loading: parsing, deterministic splits, and a clear error for every kind of bad file."""
from __future__ import annotations

import json

import pytest

from vtrans_core.data import inspect_dataset_file, load_task
from vtrans_core.errors import CompressionError


def test_csv_splits_labels_sorted_and_deterministic(tiny_dataset_csv):
    task = load_task(tiny_dataset_csv)
    assert task.label_names == ["negative", "positive"]
    sizes = (len(task.train), len(task.validation), len(task.test))
    assert sum(sizes) == 96 and sizes[0] > sizes[1] > 0 and sizes[2] > 0
    again = load_task(tiny_dataset_csv)
    assert again.test.texts == task.test.texts and again.train.labels == task.train.labels
    # Labels follow the row text: every "positive" row contains a positive word.
    from conftest import POSITIVE_WORDS
    for text, label in zip(task.train.texts, task.train.labels):
        assert (label == 1) == any(w in text.split() for w in POSITIVE_WORDS)


def test_integer_labels_sorted_numerically(tmp_path):
    path = tmp_path / "ints.jsonl"
    rows = [{"text": f"row {i}", "label": [2, 10, 1][i % 3]} for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    task = load_task(path)
    assert task.label_names == ["1", "2", "10"]
    info = inspect_dataset_file(path)
    assert info == {"rows": 30, "labels": ["1", "2", "10"], "columns": ["text", "label"]}


def test_text_pair_is_read(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("text,text_pair,label\n" + "".join(f"q{i},a{i},{'yes' if i % 2 else 'no'}\n" for i in range(20)), encoding="utf-8")
    task = load_task(path)
    assert task.train.pairs is not None and len(task.train.pairs) == len(task.train.texts)
    i = task.train.texts.index(task.train.texts[0])
    assert task.train.pairs[i] == "a" + task.train.texts[i][1:]


def test_tweet_sentiment_builtin():
    task = load_task("tweet-sentiment")
    assert task.label_names == ["negative", "neutral", "positive"]
    total = len(task.train) + len(task.validation) + len(task.test)
    assert total == 38158
    assert abs(len(task.test) - total * 0.1) < 2
    assert load_task("tweet-sentiment").test.texts[:50] == task.test.texts[:50]


@pytest.mark.parametrize("content,needle", [
    ("", "empty"),
    ("text,label\n", "no data rows"),
    ("sentence,label\nhello,pos\n", "missing column 'text'"),
    ("text,sentiment\nhello,pos\n", "missing column 'label'"),
    ("text,label\nhello,pos\nbye\n", "line 3"),
    ("text,label\nhello,pos\nbye,\n", "line 3: missing label"),
])
def test_bad_csv_files(tmp_path, content, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CompressionError) as err:
        load_task(path)
    assert err.value.field == "data" and needle in str(err.value)


def test_invalid_utf8_reports_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\nfine,pos\nalso fine,neg\ncaf\xe9,pos\n")
    with pytest.raises(CompressionError, match="not valid UTF-8 \\(line 4\\)"):
        load_task(path)
    with pytest.raises(CompressionError, match="line 4"):
        inspect_dataset_file(path)


def test_malformed_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0\n', encoding="utf-8")
    with pytest.raises(CompressionError, match="line 2: malformed JSON"):
        load_task(path)
    path.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(CompressionError, match="line 2: missing field 'label'"):
        load_task(path)


def test_unknown_label_in_eval_split(tmp_path):
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    train.write_text("text,label\n" + "".join(f"t{i},{'a' if i % 2 else 'b'}\n" for i in range(20)), encoding="utf-8")
    val.write_text("text,label\nx,a\ny,c\n", encoding="utf-8")
    with pytest.raises(CompressionError, match="val.csv line 3: label 'c' does not occur in the training data"):
        load_task({"train": str(train), "validation": str(val)})
    task = load_task({"train": str(train)})
    assert len(task.validation) == 2 and len(task.train) == 18 and task.test is None


def test_single_label_and_missing_file_and_type(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "x,a\n" * 20, encoding="utf-8")
    with pytest.raises(CompressionError, match="at least 2 distinct labels"):
        load_task(path)
    with pytest.raises(CompressionError, match="does not exist"):
        load_task(tmp_path / "nope.csv")
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    with pytest.raises(CompressionError, match="unsupported file type"):
        load_task(tmp_path / "data.xlsx")


def test_hf_ids_give_clear_error_without_datasets_or_network():
    with pytest.raises(CompressionError) as err:
        load_task("hf:glue:sst2")
    assert err.value.field == "data" and ("datasets" in str(err.value) or "hub" in str(err.value))


def test_method_rows_come_in_random_order_so_a_prefix_is_a_random_sample(tmp_path):
    """A training file sorted by label, given next to a validation file, keeps its order in the
    task; the rows handed to a method must not, because methods read prefixes of them (faster's
    Fisher rows, the refit's calibration rows): the first rows would all be one class."""
    from vtrans_core.methods import get_method, method_rows_for
    from vtrans_core.options import CompressionOptions

    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    train.write_text("text,label\n" + "".join(f"row {i},{'a' if i < 300 else 'b'}\n" for i in range(600)))
    val.write_text("text,label\nx,a\ny,b\n")
    task = load_task({"train": str(train), "validation": str(val)})
    assert task.train.labels[:300] == [0] * 300          # the file's order is kept in the task...
    for method in ("faster", "vtrans"):
        opts = CompressionOptions.parse({"seed": 3}, method)
        rows = method_rows_for(get_method(method), task.train, opts)
        first = rows.labels[:100]                         # ...but not in what the method reads first
        assert 30 < sum(first) < 70, (method, sum(first))
        if method == "vtrans":                            # vtrans keeps every row, faster samples some
            assert sorted(zip(rows.texts, rows.labels)) == sorted(zip(task.train.texts, task.train.labels))
        again = method_rows_for(get_method(method), task.train, opts)
        assert again.texts == rows.texts                  # seeded: a rerun (or a resume) reads the same rows


def test_lm_windows_for_a_method_span_the_whole_text():
    import torch

    from vtrans_core.tasks.language_modeling import Windows

    win = Windows(torch.arange(100 * 8).view(100, 8), 8, documents=5)
    mixed = win.shuffled(seed=0)
    assert sorted(mixed.ids[:, 0].tolist()) == win.ids[:, 0].tolist()   # the same windows
    assert max(mixed.head(20).ids[:, 0].tolist()) > 50 * 8               # the first 20 reach the second half
    assert torch.equal(win.shuffled(seed=0).ids, mixed.ids)

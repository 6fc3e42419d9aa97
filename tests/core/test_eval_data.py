"""A separate evaluation set (issue #11): the job trains on every row of its training file and
reports quality on the other rows; label mismatches are refused before any work; the metrics
say where the figures come from and warn when the evaluation rows look memorised."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import write_tiny_dataset
from vtrans_core import compress
from vtrans_core.data import load_task, with_eval_data
from vtrans_core.errors import CompressionError
from vtrans_core.evaluate import evaluation_warnings, text_overlap

FAST = {"mask_steps": 3, "finetune_steps": 2, "prune_rounds": 1, "latency_runs": 1, "round_to": 4, "seq_len": 16}


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def test_with_eval_data_trains_on_the_whole_file_and_evaluates_on_the_other(tmp_path):
    train = write_tiny_dataset(tmp_path / "train.csv", rows=60, seed=1)
    held = write_tiny_dataset(tmp_path / "held.csv", rows=24, seed=2)
    task = with_eval_data(load_task(str(train)), str(held))
    assert len(task.train) == 60                      # no 80/10/10 carve-out of the training file
    assert len(task.eval_split) == 24 and len(task.validation) == 24
    assert task.label_names == ["negative", "positive"]
    assert sorted(set(task.eval_split.labels)) == [0, 1]


def test_eval_labels_must_belong_to_the_training_labels(tmp_path):
    train = write_tiny_dataset(tmp_path / "train.csv", rows=40)
    held = _csv(tmp_path / "held.csv", [("good day", "positive"), ("so so", "meh"), ("bad day", "negative")] * 4)
    with pytest.raises(CompressionError) as err:
        with_eval_data(load_task(str(train)), str(held))
    assert err.value.field == "eval_data" and "'meh'" in err.value.message


def test_eval_label_subset_is_accepted_and_numbered_like_training(tmp_path):
    train = write_tiny_dataset(tmp_path / "train.csv", rows=40)
    held = _csv(tmp_path / "held.csv", [("what a great day", "positive")] * 12)
    task = with_eval_data(load_task(str(train)), str(held))
    assert set(task.eval_split.labels) == {task.label_names.index("positive")}


def test_compress_refuses_a_missing_eval_file_before_work(tiny_model_dir, tiny_dataset_csv, tmp_path):
    with pytest.raises(CompressionError) as err:
        compress(str(tiny_model_dir), str(tiny_dataset_csv), {"kind": "flops", "target": 0.7}, "vtrans", FAST,
                 tmp_path / "out", eval_data=str(tmp_path / "nope.csv"))
    assert err.value.field == "eval_data"
    assert not (tmp_path / "out").exists()


def test_metrics_come_from_the_eval_set_and_say_so(tiny_model_dir, tmp_path):
    train = write_tiny_dataset(tmp_path / "train.csv", rows=64, seed=3)
    held = write_tiny_dataset(tmp_path / "held.csv", rows=20, seed=4)
    m = compress(str(tiny_model_dir), str(train), {"kind": "flops", "target": 0.7, "seq_len": 16}, "vtrans", FAST,
                 tmp_path / "out", eval_data=str(held)).metrics
    assert m["eval_split"] == "eval_data" and m["evaluation"]["source"] == "eval_data"
    assert m["eval_examples"] == 20 and m["train_examples"] == 64
    assert 0 <= m["dense"]["train_accuracy"] <= 100 and m["dense"]["train_accuracy_rows"] == 64

    m2 = compress(str(tiny_model_dir), str(train), {"kind": "flops", "target": 0.7, "seq_len": 16}, "vtrans", FAST,
                  tmp_path / "out2").metrics
    assert m2["evaluation"]["source"] == "training data split" and m2["eval_examples"] < 64
    assert "carved from the training data" in m2["evaluation"]["note"]


def test_memorisation_and_overlap_warnings():
    # the split scores like the rows the model learned: warn; clearly lower: no warning
    assert evaluation_warnings(True, 93.9, 94.5, 0.0) and "memorisation" in evaluation_warnings(True, 93.9, 94.5, 0.0)[0]
    assert evaluation_warnings(True, 84.2, 96.0, 0.0) == []
    # a separate eval set is not checked against training accuracy, but copied rows are reported
    assert evaluation_warnings(False, 99.0, 99.0, 0.0) == []
    assert "also occur in the training data" in evaluation_warnings(False, 80.0, 90.0, 0.2)[0]
    assert text_overlap(["A b", "c"], ["a b ", "d", "e", "f"]) == 0.25

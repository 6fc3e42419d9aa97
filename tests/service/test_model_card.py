"""The model card is a Hugging Face model card (metadata read back by huggingface_hub), titled
with the model's name, and its load snippet runs as written next to the unpacked model."""
from __future__ import annotations

import os
import re
import shutil

import pytest
from huggingface_hub import ModelCard

from worker.model_card import Source, model_card, model_name_for_upload

METRICS = {"family": "bert", "layout": "uniform", "device": "cpu", "eval_split": "validation", "eval_examples": 16,
           "params_fraction": 0.55, "flops_fraction": 0.49, "speedup": 1.7,
           "dense": {"accuracy": 91.2, "f1": 90.8, "params": 4_400_000, "flops": 1.2e9, "latency_ms": 3.1},
           "pruned": {"accuracy": 90.1, "f1": 89.9, "params": 2_400_000, "flops": 5.9e8, "latency_ms": 1.8}}
REQUEST = {"model": "mdl_x", "dataset": "ds_y", "method": "fast", "budget": {"kind": "flops", "target": 0.5, "seq_len": 128},
           "options": {"layout": "uniform"}}


def _card(layout: str = "uniform", hub_id: str | None = "google-bert/bert-base-uncased") -> ModelCard:
    source = Source(model_name=hub_id or "my-bert", model_label="my-bert (uploaded as my-bert.tar.gz)", hub_id=hub_id,
                    dataset_name="reviews.csv", dataset_label="reviews.csv (uploaded dataset `ds_y`, 96 rows)")
    return ModelCard(model_card(source, REQUEST, dict(METRICS, layout=layout), "job_123"))


def test_metadata_is_hub_model_card_metadata():
    card = _card()
    data = card.data.to_dict()
    assert data["base_model"] == "google-bert/bert-base-uncased"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    assert data["tags"] == ["vtrans", "pruned"] and data["datasets"] == ["reviews.csv"]
    results = data["model-index"][0]["results"]
    assert {m["type"]: m["value"] for r in results for m in r["metrics"]} == {"accuracy": 90.1, "f1": 89.9}
    assert all(r["dataset"]["split"] == "validation" for r in results)
    assert card.text.lstrip().startswith("# google-bert/bert-base-uncased, pruned with VTrans")


def test_uploaded_model_has_no_base_model_and_is_titled_with_its_name():
    data = _card(hub_id=None).data.to_dict()
    assert "base_model" not in data
    assert model_name_for_upload({}, "my-bert.tar.gz") == ("my-bert", None)
    assert model_name_for_upload({"_name_or_path": "org/tiny-bert"}, "m.tar.gz") == ("org/tiny-bert", "org/tiny-bert")
    assert model_name_for_upload({"_name_or_path": "/home/me/models/sst2-bert"}, "m.zip") == ("sst2-bert", None)
    # a named (versioned) upload is titled with its name; base_model still comes from config.json
    assert model_name_for_upload({}, "model.tar.gz", "support-bert") == ("support-bert", None)
    assert model_name_for_upload({"_name_or_path": "org/tiny-bert"}, "m.tar.gz", "support-bert") == (
        "support-bert", "org/tiny-bert")
    assert _card(hub_id=None).text.lstrip().startswith("# my-bert, pruned with VTrans")


def _run_snippet(snippet: str, folder) -> dict:
    """The card's own code, unchanged, run in `folder` (where model/ and onnx/ lie); its globals."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        scope: dict = {}
        exec(compile(snippet, "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    return scope


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_load_snippet_runs_as_written(layout, tiny_model_dir, tmp_path):
    snippet = re.search(r"```python\n(.*?)```", _card(layout).text, re.S).group(1)
    if layout == "per_layer":
        assert "from vtrans_core import load_pruned" in snippet
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    scope = _run_snippet(snippet, tmp_path)
    assert scope["model"].config.num_labels == 2 and scope["tokenizer"]("great day")["input_ids"]


def test_lm_card_onnx_section_and_its_snippet_run_as_written(tmp_path):
    """An LM job with export: ["onnx"]: the card's ONNX section, and its greedy-decoding snippet
    run unchanged next to model/ and onnx/, giving the PyTorch model's logits."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    from core.decoders import random_doc, save_tiny_lm, tiny_tokenizer   # tests/ is on sys.path
    from vtrans_core import export as ex
    from vtrans_core.tasks.language_modeling import pack

    save_tiny_lm("llama-gqa", tmp_path / "model")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    windows = pack(tiny_tokenizer(), [random_doc(i, 40) for i in range(8)], 16)
    info = ex.export_onnx(model, tmp_path, ex.lm_held_out_batches(windows), latency_runs=1, causal_lm=True)
    metrics = {"task": "language-modeling", "family": "llama", "layout": "uniform", "dtype": "float32",
               "evaluation": {"window": 16, "stride": 16, "tokens_scored": 100},
               "dense": {"perplexity": 90.0}, "pruned": {"perplexity": 95.0}, "export": {"onnx": info}}
    source = Source(model_name="tiny-llama", model_label="tiny-llama", hub_id=None, dataset_name="corpus.txt",
                    dataset_label="corpus.txt")
    card = ModelCard(model_card(source, {"method": "faster", "budget": {"kind": "params", "target": 0.8}},
                                metrics, "job_lm"))
    assert card.data.to_dict()["pipeline_tag"] == "text-generation"
    section = card.text[card.text.index("## ONNX"):]
    assert "without a KV cache" in section and f"{info['check']['tokens']} token positions" in section
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = _run_snippet(snippet, tmp_path)
    ids = scope["ids"]
    assert ids.shape[1] == scope["tokenizer"](["the first words of a text"], return_tensors="np")["input_ids"].shape[1] + 8
    with torch.no_grad():   # the snippet's last step ran the sequence without its final token
        ref = model(input_ids=torch.from_numpy(ids[:, :-1]), use_cache=False).logits.numpy()
    np.testing.assert_allclose(scope["logits"], ref, atol=ex.ONNX_ATOL, rtol=ex.ONNX_RTOL)


def test_model_index_names_the_separate_evaluation_dataset():
    """With eval_dataset the figures come from that file, not from a split of the training data:
    the model-index result names it (and the whole file as its split), and so does the body."""
    source = Source(model_name="my-bert", model_label="my-bert", hub_id=None, dataset_name="train.csv",
                    dataset_label="train.csv (uploaded dataset `ds_t`, 96 rows)", eval_dataset_name="held.csv",
                    eval_dataset_label="held.csv (uploaded dataset `ds_h`, 15 rows)")
    metrics = dict(METRICS, eval_split="eval_data", eval_examples=15,
                   evaluation={"source": "eval_data", "rows": 15})
    card = ModelCard(model_card(source, dict(REQUEST, eval_dataset="ds_h"), metrics, "job_eval"))
    data = card.data.to_dict()
    assert data["datasets"] == ["train.csv"]                      # what it was trained on
    results = data["model-index"][0]["results"]
    assert {(r["dataset"]["name"], r["dataset"]["split"]) for r in results} == {("held.csv", "full")}
    assert "held.csv (uploaded dataset `ds_h`, 15 rows)" in card.text


def test_speedup_budget_is_stated_as_a_speedup():
    card = ModelCard(model_card(Source("my-bert", "my-bert", None, "d.csv", "d.csv"),
                                dict(REQUEST, method="faster", budget={"kind": "speedup", "target": 2.0, "seq_len": 128}),
                                METRICS, "job_fast"))
    budget = next(line for line in card.text.splitlines() if line.startswith("- **Budget:**"))
    assert "2.00x faster than the dense model" in budget and "%" not in budget


def test_classifier_card_onnx_snippet_runs_as_written(tiny_model_dir, tmp_path):
    """A classifier job with export: ["onnx"]: the card's ONNX snippet, run unchanged next to
    model/ and onnx/, gives the PyTorch model's logits for its example text."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from vtrans_core import export as ex
    from vtrans_core.data import Encoded

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    rows = tokenizer(["a great day", "the worst food was so bad", "fun"])
    enc = Encoded(rows["input_ids"], rows["token_type_ids"], [1, 0, 1], 2)
    info = ex.export_onnx(model, tmp_path, ex.held_out_batches(enc, rows=3, batch=2), latency_runs=1)
    card = ModelCard(model_card(Source("my-bert", "my-bert", None, "d.csv", "d.csv"), REQUEST,
                                dict(METRICS, export={"onnx": info}), "job_onnx"))
    section = card.text[card.text.index("## ONNX"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = _run_snippet(snippet, tmp_path)
    with torch.no_grad():
        ref = model(**tokenizer(["an example"], return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(scope["logits"], ref, atol=ex.ONNX_ATOL, rtol=ex.ONNX_RTOL)

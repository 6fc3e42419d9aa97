"""ONNX export (issue #15): the exported graph computes the PyTorch model's logits, with batch
and sequence length dynamic, checked with onnxruntime; a failed check refuses the artifact."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vtrans_core import CompressionError, validate_request
from vtrans_core.data import Encoded
from vtrans_core import export as ex

from .conftest import tiny_config, tiny_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _held_out(n: int = 40, vocab: int = 100, pairs: bool = False, seed: int = 3) -> Encoded:
    """Rows of varying length, as data.encode leaves them (unpadded)."""
    g = np.random.default_rng(seed)
    ids = [[2, *g.integers(3, vocab, size=int(g.integers(3, 14))).tolist(), 3] for _ in range(n)]
    types = [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) for r in ids] if pairs else None
    return Encoded(ids, types, [0] * n, 1)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_onnx_graph_matches_pytorch_on_held_out_rows(family, tmp_path):
    import onnxruntime as ort

    model = tiny_model(family)
    enc = _held_out(pairs=family == "bert")
    batches = ex.held_out_batches(enc, rows=40, batch=16)
    info = ex.export_onnx(model, tmp_path, batches, latency_runs=2)

    path = tmp_path / "onnx" / "model.onnx"
    assert path.is_file() and info["file"] == "onnx/model.onnx" and info["files"] == ["onnx/model.onnx"]
    want = ["input_ids", "attention_mask"] + (["token_type_ids"] if family == "bert" else [])
    assert info["inputs"] == want
    check = info["check"]
    assert check["passed"] and check["rows"] == 40 + 32 and check["max_abs_diff"] <= ex.ONNX_ATOL
    assert info["latency_ms"]["pytorch"] > 0 and info["latency_ms"]["onnxruntime"] > 0

    # Independently of export_onnx's own check: shapes never seen at trace time (batch 5, 21
    # tokens, padding and token types mixed) give the PyTorch logits.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(3, 100, (5, 21), generator=g)
    mask = torch.ones_like(ids)
    mask[2, -7:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        feeds["token_type_ids"] = (torch.arange(21) > 10).long().expand(5, 21).contiguous()
    got = session.run(["logits"], {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        ref = model(**feeds).logits.numpy()
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, ref, atol=ex.ONNX_ATOL, rtol=ex.ONNX_RTOL)
    assert np.abs(ref).max() > 0.1      # logits of O(1): a tolerance of 1e-4 means something


def test_a_check_that_fails_refuses_the_export(tmp_path, monkeypatch):
    # A tolerance no graph can meet stands in for a wrong graph: the export must be refused,
    # naming the field, rather than delivered.
    monkeypatch.setattr(ex, "ONNX_ATOL", -1.0)
    with pytest.raises(CompressionError) as err:
        ex.export_onnx(tiny_model("roberta"), tmp_path, ex.held_out_batches(_held_out(n=8)), latency_runs=1)
    assert err.value.field == "export" and "not delivered" in err.value.message


@pytest.mark.parametrize("value, message", [("onnx", "must be a list"), (["tflite"], "unknown format 'tflite'"),
                                            ([1], "must be a list")])
def test_bad_export_values_name_the_field(value, message):
    with pytest.raises(CompressionError) as err:
        validate_request(tiny_config("bert").to_dict(), {"kind": "flops", "target": 0.5}, "fast", None, value)
    assert err.value.field == "export" and message in err.value.message


def test_export_is_in_the_normalized_request_only_when_asked():
    cfg = tiny_config("bert").to_dict()
    budget = {"kind": "flops", "target": 0.5}
    assert "export" not in validate_request(cfg, budget, "fast", None)
    assert validate_request(cfg, budget, "fast", None, ["onnx", "onnx"])["export"] == ["onnx"]


def test_missing_onnx_packages_are_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(ex, "onnx_available", lambda: "onnxscript")
    with pytest.raises(CompressionError) as err:
        validate_request(None, {"kind": "flops", "target": 0.5}, "fast", None, ["onnx"])
    assert err.value.field == "export" and "onnxscript" in err.value.message


def test_per_layer_layout_export_matches_the_saved_model(tiny_model_dir, tiny_dataset_csv, tmp_path):
    """A per_layer job (layers of different widths, saved for load_pruned) exports a graph that
    computes what the delivered model computes."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from vtrans_core import compress, load_pruned

    opts = {"layout": "per_layer", "max_train_examples": 64, "max_eval_examples": 32, "mask_steps": 3,
            "prune_rounds": 1, "finetune_steps": 2, "batch_size": 16, "seq_len": 16, "latency_runs": 1,
            "round_to": 1}
    out = tmp_path / "out"
    result = compress(str(tiny_model_dir), str(tiny_dataset_csv), {"kind": "flops", "target": 0.5, "seq_len": 16},
                      "fast", opts, output_dir=out, export=["onnx"])
    onnx = result.metrics["export"]["onnx"]
    assert result.metrics["layout"] == "per_layer" and onnx["check"]["passed"]
    # every held-out row is compared (the tiny CSV's split holds fewer than CHECK_ROWS)
    assert onnx["check"]["rows"] == result.metrics["eval_examples"] > 0
    assert "export" in result.metrics["stage_seconds"]
    kept = result.plan.kept_summary()
    # per_layer: the layers really differ (else this is the uniform test again)
    assert len(set(kept["heads_per_layer"])) > 1 or len(set(kept["ffn_per_layer"])) > 1, kept

    model = load_pruned(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["good film overall today", "a rather bad day", "nothing"], padding=True, return_tensors="pt")
    session = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {n: enc[n].numpy() for n in onnx["inputs"]})[0]
    with torch.no_grad():
        ref = model(**{n: enc[n] for n in onnx["inputs"]}).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=ex.ONNX_ATOL, rtol=ex.ONNX_RTOL)


# ---------------------------------------------------------------------------- causal LMs (decoders)

def _lm_windows(seq: int = 16, docs: int = 12):
    """Held-out windows of real text (a word-level tokenizer over English words), as the LM task
    packs them; not random ids."""
    from vtrans_core.tasks.language_modeling import pack

    from .decoders import random_doc, tiny_tokenizer

    tok = tiny_tokenizer()
    return tok, pack(tok, [random_doc(100 + i, 40) for i in range(docs)], seq)


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2"])
def test_causal_lm_graph_matches_pytorch_on_held_out_windows(name, tmp_path):
    import onnxruntime as ort

    from .decoders import random_doc, tiny_decoder

    model = tiny_decoder(name)
    tok, windows = _lm_windows()
    assert len(windows) >= ex.LM_CHECK_WINDOWS and not (windows.ids == 3).all()   # real words, not <unk>
    batches = ex.lm_held_out_batches(windows, pad_id=tok.pad_token_id)
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    assert shapes == [(2, 16), (2, 12), (1, 8), (3, 16)]           # batch and sequence both vary
    assert batches[-1]["attention_mask"].sum(1).tolist() == [16, 8, 5]  # right-padded, mixed lengths
    info = ex.export_onnx(model, tmp_path, batches, latency_runs=2, causal_lm=True)

    assert info["inputs"] == ["input_ids", "attention_mask"] and info["kv_cache"] is False
    check = info["check"]
    assert check["passed"] and check["rows"] == 8 and check["tokens"] == 2 * 16 + 2 * 12 + 8 + 29
    assert check["max_abs_diff"] <= ex.ONNX_ATOL and check["prediction_agreement"] > 0.95
    assert info["latency_ms"]["pytorch"] > 0 and info["latency_ms"]["onnxruntime"] > 0
    assert (info["latency_ms"]["batch"], info["latency_ms"]["seq"]) == (3, 16)

    # Independently: a shape never seen (batch 3, 23 tokens of new text, one row padded) gives
    # PyTorch's logits at every real position, and no KV-cache output exists.
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    enc = tok([random_doc(500 + i, 23) for i in range(3)], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"].clone()
    mask[1, 15:] = 0
    got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()
    assert got.shape == (3, 23, 100)
    real = mask.bool().numpy()
    np.testing.assert_allclose(got[real], ref[real], atol=ex.ONNX_ATOL, rtol=ex.ONNX_RTOL)
    assert np.abs(ref).max() > 0.1


def test_a_causal_lm_check_that_fails_refuses_the_export(tmp_path, monkeypatch):
    from .decoders import tiny_decoder

    monkeypatch.setattr(ex, "ONNX_ATOL", -1.0)
    _tok, windows = _lm_windows()
    with pytest.raises(CompressionError) as err:
        ex.export_onnx(tiny_decoder("gpt2"), tmp_path, ex.lm_held_out_batches(windows), latency_runs=1,
                       causal_lm=True)
    assert err.value.field == "export" and "not delivered" in err.value.message and "windows" in err.value.message


def test_causal_lm_requests_with_export_are_accepted():
    from .decoders import decoder_config

    for name in ("llama-gqa", "gpt2"):
        req = validate_request(decoder_config(name).to_dict(), {"kind": "params", "target": 0.8}, "faster", None,
                               ["onnx"])
        assert req["export"] == ["onnx"] and req["options"]["task"] == "language-modeling"

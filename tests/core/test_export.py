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


@pytest.mark.parametrize("family", ["bert", "distilbert"])
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

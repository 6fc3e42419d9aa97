"""compress()/validate_request(): every input error is caught before any work, and a cancelled
or failed run leaves nothing behind."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vtrans_core import CompressionCancelled, CompressionError, compress, validate_request

FAST = {"mask_steps": 3, "finetune_steps": 2, "prune_rounds": 1, "latency_runs": 1, "round_to": 4}


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")], "temporary output left behind"


def _run_expect(field_prefix: str, tmp_path, **kw):
    args = {"model": kw.pop("model"), "data": kw.pop("data"), "budget": kw.pop("budget", {"kind": "flops", "target": 0.5}),
            "method": kw.pop("method", "faster"), "options": kw.pop("options", FAST), "output_dir": tmp_path / "out"}
    calls = []
    with pytest.raises(CompressionError) as err:
        compress(**args, progress=lambda s, f, m: calls.append(s))
    assert err.value.field.startswith(field_prefix), str(err.value)
    assert not [s for s in calls if s in ("teacher", "masks")], "training started before the error"
    _no_leftovers(tmp_path, "out")
    return err.value


def test_impossible_budget(tiny_model_dir, tiny_dataset_csv, tmp_path):
    err = _run_expect("budget.target", tmp_path, model=tiny_model_dir, data=tiny_dataset_csv,
                      budget={"kind": "flops", "target": 0.01})
    assert "smallest" in str(err)
    # params cannot drop below the embeddings' share when hidden pruning is off
    err = _run_expect("budget.target", tmp_path, model=tiny_model_dir, data=tiny_dataset_csv,
                      budget={"kind": "params", "target": 0.2}, options={**FAST, "prune_hidden": False, "prune_heads": False})
    assert "params" in str(err)


@pytest.mark.parametrize("kw,field", [
    ({"method": "magic"}, "method"),
    ({"options": {"no_such_option": 1}}, "options.no_such_option"),
    ({"options": {"layout": "diagonal"}}, "options.layout"),
    ({"options": {"mask_weights": "thawed"}}, "options.mask_weights"),
    ({"budget": {"kind": "flops", "target": 1.5}}, "budget.target"),
    ({"budget": {"kind": "latency", "target": 0.5}}, "budget.kind"),
])
def test_bad_request_fields(tiny_model_dir, tiny_dataset_csv, tmp_path, kw, field):
    _run_expect(field, tmp_path, model=tiny_model_dir, data=tiny_dataset_csv, **kw)


def test_bad_data_before_training(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nhi,pos\n", encoding="utf-8")
    err = _run_expect("data", tmp_path, model=tiny_model_dir, data=bad)
    assert "missing column 'text'" in str(err)
    _run_expect("data", tmp_path, model=tiny_model_dir, data=tmp_path / "missing.csv")


def test_pickle_only_and_remote_code_models_refused(tiny_model_dir, tiny_dataset_csv, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model_dir / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded, never unpickled")
    err = _run_expect("model", tmp_path, model=pickled, data=tiny_dataset_csv)
    assert "pytorch_model.bin" in str(err) and "safetensors" in str(err)

    remote = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "evil.Model"}
    (remote / "config.json").write_text(json.dumps(cfg))
    assert "auto_map" in str(_run_expect("model", tmp_path, model=remote, data=tiny_dataset_csv))

    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (t5 / "model.safetensors").write_bytes(b"")
    assert "t5" in str(_run_expect("model", tmp_path, model=t5, data=tiny_dataset_csv))

    # a decoder is compressed on plain text: labelled classification data is refused naming `data`
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    (gpt / "model.safetensors").write_bytes(b"")
    assert "causal language model" in str(_run_expect("data", tmp_path, model=gpt, data=tiny_dataset_csv))


def test_validate_request(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    out = validate_request(cfg, {"kind": "flops", "target": 0.5}, "fast", {"layout": "per_layer"})
    assert out["budget"] == {"kind": "flops", "target": 0.5, "seq_len": 128}
    assert out["options"]["layout"] == "per_layer" and out["method"] == "fast"
    with pytest.raises(CompressionError) as err:
        validate_request(cfg, {"kind": "flops", "target": 0.02}, "vtrans", None)
    assert err.value.field == "budget.target"
    # without a config only the request itself is checked
    assert validate_request(None, {"kind": "flops", "target": 0.02}, "vtrans", None)["method"] == "vtrans"
    with pytest.raises(CompressionError):
        validate_request(None, {"kind": "flops", "target": 0.5}, "vtrans", {"beta": "high"})


def test_method_dependent_defaults_are_resolved_and_explicit_values_win(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    budget = {"kind": "flops", "target": 0.5}
    keys = ("prune_hidden", "prune_heads", "hidden_distill_weight", "mask_lr", "beta")
    picked = lambda o: tuple(o[k] for k in keys)  # noqa: E731
    assert picked(validate_request(cfg, budget, "vtrans", None)["options"]) == (True, True, 0.0, 0.05, 1e-5)
    assert picked(validate_request(cfg, budget, "fast", {})["options"]) == (True, True, 0.0, 0.05, 1e-5)
    # faster prunes every structure too, skips the hidden-state pass and ranks its masks in a short
    # schedule (higher mask rate and KL weight)
    assert picked(validate_request(cfg, budget, "faster", None)["options"]) == (True, True, 0.0, 0.1, 1e-4)
    assert picked(validate_request(cfg, budget, "faster", {"layout": "per_layer"})["options"])[:2] == (True, True)
    explicit = {"prune_hidden": False, "prune_heads": False, "hidden_distill_weight": 0.5, "mask_lr": 0.01, "beta": 0}
    assert picked(validate_request(cfg, budget, "faster", explicit)["options"]) == (False, False, 0.5, 0.01, 0)
    assert picked(validate_request(cfg, budget, "vtrans", {"prune_hidden": None})["options"])[0] is True
    for bad, field in (({"prune_hidden": "yes"}, "options.prune_hidden"),
                       ({"hidden_distill_weight": -1}, "options.hidden_distill_weight"),
                       ({"beta": "high"}, "options.beta"),
                       ({"prune_ffn": None}, "options.prune_ffn")):
        with pytest.raises(CompressionError) as err:
            validate_request(cfg, budget, "faster", bad)
        assert err.value.field == field


def test_cancel_from_progress_leaves_nothing(tiny_model_dir, tiny_dataset_csv, tmp_path):
    seen: list[tuple[str, float]] = []

    def progress(stage, fraction, metrics):
        seen.append((stage, fraction))
        # Stage changes are always reported (steps are throttled in time): cancel at the first
        # pruning step, after mask training has run and before anything is saved.
        if stage == "prune":
            raise CompressionCancelled("user asked")

    with pytest.raises(CompressionCancelled):
        compress(tiny_model_dir, tiny_dataset_csv, {"kind": "flops", "target": 0.5}, "vtrans",
                 {**FAST, "mask_steps": 20}, tmp_path / "out", progress)
    assert any(s == "masks" for s, _ in seen)
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions)
    _no_leftovers(tmp_path, "out")


def test_failed_rerun_keeps_previous_result(tiny_model_dir, tiny_dataset_csv, tmp_path):
    out = tmp_path / "out"
    compress(tiny_model_dir, tiny_dataset_csv, {"kind": "flops", "target": 0.6}, "faster", FAST, out)
    before = (out / "model.safetensors").read_bytes()

    def cancel(stage, fraction, metrics):
        if stage == "evaluate":
            raise CompressionCancelled()

    with pytest.raises(CompressionCancelled):
        compress(tiny_model_dir, tiny_dataset_csv, {"kind": "flops", "target": 0.4}, "faster", FAST, out, cancel)
    assert (out / "model.safetensors").read_bytes() == before
    assert json.loads((out / "metrics.json").read_text())["budget"]["target"] == 0.6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]

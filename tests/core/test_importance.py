"""Ranking with frozen weights (importance.py) and the faster options that select it."""
from __future__ import annotations

import copy

import pytest
import torch

from vtrans_core.data import encode, load_task
from vtrans_core.errors import CompressionError
from vtrans_core.methods.faster import GATE_HIST_EDGES
from vtrans_core.importance import fisher_information, fisher_scores, init_gates_from_fisher, set_gate_init
from vtrans_core.options import CompressionOptions
from vtrans_core.plan import make_plan
from vtrans_core.prunable import PrunableModel
from vtrans_core.training import BudgetLagrangian, MaskRound, Teacher, train_masks


def _setup(tiny_model_dir, tiny_dataset_csv):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = load_task(tiny_dataset_csv)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    return model, encode(tok, task.train, 32)


def test_fisher_ranks_dead_units_last_and_leaves_weights_alone(tiny_model_dir, tiny_dataset_csv):
    model, enc = _setup(tiny_model_dir, tiny_dataset_csv)
    out = model.bert.encoder.layer[0].output.dense
    with torch.no_grad():
        out.weight[:, :8] = 0.0                    # 8 neurons of layer 0 contribute nothing
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pm = PrunableModel(model, structures=("heads", "ffn", "attn_block", "ffn_block"), layout="per_layer")
    info = fisher_information(pm, enc, "cpu")
    assert set(info) == {"heads", "ffn", "attn_block", "ffn_block"}
    assert torch.all(info["ffn"][0, :8] == 0) and torch.all(info["ffn"][0, 8:] > 0)
    assert torch.all(info["heads"] > 0)
    scores = fisher_scores(pm, info, "flops", 128)
    plan = make_plan(pm.shape, pm.reference, scores, "flops", 0.95, 128, "per_layer", 8)
    assert not set(range(8)) & set(plan.ffn[0])         # the dead group goes first
    pm.remove_hooks()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())   # restored


def test_fisher_scores_divide_by_cost():
    from .conftest import tiny_model

    pm = PrunableModel(tiny_model("bert"), structures=("hidden", "heads", "ffn"), layout="per_layer")
    ones = {k: torch.ones_like(m.mu) for k, m in pm.masks.items()}
    s = fisher_scores(pm, ones, "flops", 16)
    # same information everywhere: the bigger unit (a head) scores lower than one FFN neuron
    assert s["heads"][0][0] < s["ffn"][0][0]
    pm.masks["ffn"].pruned[1, 3] = True
    assert fisher_scores(pm, ones, "flops", 16)["ffn"][1][3] is None


def test_fisher_informed_init_orders_gates():
    from .conftest import tiny_model

    pm = PrunableModel(tiny_model("bert"), structures=("heads", "ffn"), layout="per_layer")
    scores = {"heads": [[float(j) for j in range(4)] for _ in range(2)],
              "ffn": [[float(j) / 10 - 5 for j in range(64)] for _ in range(2)]}
    init_gates_from_fisher(pm, scores, 1.0, 6.0)
    la = {k: m.log_alpha().detach() for k, m in pm.masks.items()}
    assert la["ffn"][0, 0] == pytest.approx(1.0, abs=1e-4) and float(la["heads"].max()) == pytest.approx(6.0, abs=1e-4)
    assert torch.all(la["ffn"][0, 1:] >= la["ffn"][0, :-1])
    assert torch.all(pm.masks["ffn"].mu == 1)


def test_gates_move_toward_the_budget_under_mask_only_training(tiny_model_dir, tiny_dataset_csv):
    model, enc = _setup(tiny_model_dir, tiny_dataset_csv)
    dense = copy.deepcopy(model)
    pm = PrunableModel(model, structures=("heads", "ffn"), layout="per_layer")
    set_gate_init(pm, 2.0)                         # gates start near the decision region
    start = float(pm.expected_fraction("flops", 32))
    opts = CompressionOptions.parse({"batch_size": 16, "mask_lr": 0.1, "beta": 1e-4}, "faster")
    rnd = MaskRound(40, start, 0.5, "flops", 32, train_weights=False)
    train_masks(pm, enc, rnd, opts, torch.device("cpu"), lambda *a, **k: None, Teacher(dense, len(enc)),
                BudgetLagrangian(1.0))
    end = float(pm.expected_fraction("flops", 32))
    assert end < start - 0.2                       # the Lagrangian pulls the expected size toward 0.5
    assert any(bool((m.log_alpha() < 0).any()) for m in pm.masks.values())   # some gates crossed alpha = 1


def test_faster_options_are_checked():
    opts = CompressionOptions.parse(None, "faster")
    assert (opts.importance, opts.reconstruct) == ("fisher", "weights")
    assert CompressionOptions.parse(None, "vtrans").importance == "vib"
    with pytest.raises(CompressionError) as err:
        CompressionOptions.parse({"importance": "magnitude"}, "faster")
    assert err.value.field == "options.importance"
    with pytest.raises(CompressionError) as err:
        CompressionOptions.parse({"importance": "fisher"}, "vtrans")
    assert err.value.field == "options.importance"
    assert CompressionOptions.parse({"importance": "vib+fisher"}, "fast").importance == "vib+fisher"
    with pytest.raises(CompressionError):
        CompressionOptions.parse({"calibration_rows": 0}, "faster")


@pytest.mark.parametrize("importance,mode", [("vib+fisher", "weights"), ("vib", "off")])
def test_faster_end_to_end_with_each_ranking(tiny_model_dir, tiny_dataset_csv, tmp_path, importance, mode):
    from vtrans_core import compress

    opts = {"importance": importance, "reconstruct": mode, "mask_steps": 6, "latency_runs": 1, "round_to": 4,
            "fast_min_examples": 32, "calibration_rows": 64, "fisher_rows": 32, "layout": "per_layer"}
    m = compress(tiny_model_dir, tiny_dataset_csv, {"kind": "flops", "target": 0.6}, "faster", opts,
                 tmp_path / "out").metrics
    info = m["method_info"]
    assert m["flops_fraction"] <= 0.61 and info["importance"] == importance
    assert ("fisher_rows" in info) is (importance != "vib")
    trace = info["gate_trace"]
    assert trace[0]["step"] == 0 and trace[-1]["step"] == 6 and "heads" in trace[-1]
    # the gate distribution over the steps (what the benchmark's gate-trace plot draws)
    for point in trace:
        for key in ("heads", "ffn"):
            assert sum(point[key]["hist"]) == pytest.approx(1.0, abs=1e-3)
            assert len(point[key]["hist"]) == len(GATE_HIST_EDGES) + 1
    if importance == "vib":    # every gate starts at log alpha 9: all in the top bin, none below 0
        assert trace[0]["ffn"]["hist"][-1] == 1.0 and trace[0]["ffn"]["below_zero"] == 0.0
    else:                      # Fisher-informed start spreads the gates over log alpha 1..6
        assert trace[0]["ffn"]["hist"][-1] == 0.0 and max(trace[0]["ffn"]["hist"][3:7]) > 0
    assert info["reconstruct"]["mode"] == mode
    if mode == "off":
        assert info["reconstruct"]["applied"] is False
    else:   # applied, or skipped with the reason
        assert info["reconstruct"]["applied"] or info["reconstruct"]["reason"]


def test_vtrans_rounds_start_gates_by_fisher_rank(tiny_model_dir, tiny_dataset_csv):
    """importance "vib+fisher" for vtrans/fast: a round's gates start at log alpha 1..6 by Fisher
    rank, so dead units start lowest (closest to the cut) instead of every gate at 9."""
    from types import SimpleNamespace

    from vtrans_core.budget import Budget
    from vtrans_core.methods.vtrans import fisher_start

    model, enc = _setup(tiny_model_dir, tiny_dataset_csv)
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[:, :8] = 0.0     # 8 dead neurons in layer 0
    pm = PrunableModel(model, structures=("heads", "ffn"), layout="per_layer")
    opts = CompressionOptions.parse({"importance": "vib+fisher", "fisher_rows": 32}, "vtrans")
    ctx = SimpleNamespace(budget=Budget("flops", 0.6, 32), options=opts, enc_train=enc, device="cpu",
                          loss_fn=None, info={})
    fisher_start(ctx, pm, 1)
    la = pm.masks["ffn"].log_alpha()
    assert float(la.min()) == pytest.approx(1.0, abs=1e-4) and float(la.max()) <= 6.0 + 1e-4
    assert torch.all(la[0, :8] < la[0, 8:].min())            # the dead neurons start lowest
    assert torch.allclose(pm.masks["ffn"].mu, torch.ones_like(pm.masks["ffn"].mu))   # dense at the start
    assert ctx.info["fisher_rounds"] == [1] and ctx.info["fisher_rows"] == 32


def test_fast_with_fisher_started_rounds_end_to_end(tiny_model_dir, tiny_dataset_csv, tmp_path):
    from vtrans_core import compress

    opts = {"importance": "vib+fisher", "mask_steps": 4, "prune_rounds": 2, "finetune_steps": 2, "latency_runs": 1,
            "round_to": 4, "fast_min_examples": 32, "fisher_rows": 16, "calibration_rows": 32}
    m = compress(tiny_model_dir, tiny_dataset_csv, {"kind": "flops", "target": 0.6}, "fast", opts,
                 tmp_path / "out").metrics
    assert m["flops_fraction"] <= 0.61
    assert m["method_info"]["fisher_rounds"] == [1, 2] and m["options"]["importance"] == "vib+fisher"


def _row_by_row(pm, enc, **kw):
    """The reference: one backward per row, each row's squared gate gradient summed."""
    return fisher_information(pm, enc, "cpu", batch_rows=1, **kw)


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
def test_fisher_sums_each_rows_own_squared_gradient(tiny_model_dir, tiny_dataset_csv, layout):
    """One backward over a padded batch (per-example probes) gives what one backward per row
    gives: sum over rows of (d loss_row / d z)^2, for every structure, blocks and hidden included
    (not the square of the batch's summed gradient, which cancels rows' opposite pulls)."""
    from vtrans_core.data import Encoded

    model, enc = _setup(tiny_model_dir, tiny_dataset_csv)
    cut = [3 + i % 6 for i in range(24)]                              # rows of several lengths: padding
    enc = Encoded([r[:c] for r, c in zip(enc.input_ids, cut)], [r[:c] for r, c in zip(enc.token_type_ids, cut)],
                  enc.labels[:24], enc.pad_id)
    pm = PrunableModel(model, layout=layout)
    batched = fisher_information(pm, enc, "cpu")
    reference = _row_by_row(pm, enc)
    assert set(batched) == set(reference) and {"hidden", "heads", "ffn"} <= set(batched)
    for k in batched:
        torch.testing.assert_close(batched[k], reference[k], rtol=2e-4, atol=1e-9)
    summed = fisher_information(pm, enc, "cpu", batch_rows=24)     # same with any batch size
    torch.testing.assert_close(summed["ffn"], reference["ffn"], rtol=2e-4, atol=1e-9)
    assert pm.probes is None
    with torch.no_grad():                                            # and the forward is the plain one again
        torch.testing.assert_close(pm.model(input_ids=torch.tensor([enc.input_ids[0]])).logits,
                                   model(input_ids=torch.tensor([enc.input_ids[0]])).logits)


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2"])
def test_fisher_per_window_on_decoders(name):
    """Pre-LN decoders (gates on the residual writes, GQA heads) with the LM loss: batched equals
    window by window, with and without activation checkpointing."""
    import transformers

    from vtrans_core.tasks.language_modeling import Windows, lm_loss
    from .decoders import VOCAB, decoder_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(decoder_config(name)).eval()
    windows = Windows(torch.randint(3, VOCAB, (6, 16)), 16, 1)
    pm = PrunableModel(model, layout="per_layer")
    batched = fisher_information(pm, windows, "cpu", loss_fn=lm_loss, batch_rows=3)
    reference = _row_by_row(pm, windows, loss_fn=lm_loss)
    recomputed = fisher_information(pm, windows, "cpu", loss_fn=lm_loss, batch_rows=3, recompute=True)
    for k in reference:
        assert float(reference[k].sum()) > 0, k
        torch.testing.assert_close(batched[k], reference[k], rtol=2e-4, atol=1e-9)
        torch.testing.assert_close(recomputed[k], reference[k], rtol=2e-4, atol=1e-9)

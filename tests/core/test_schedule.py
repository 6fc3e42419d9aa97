"""Step counts that scale with the data (vtrans_core/schedule.py)."""
from vtrans_core.methods import get_method
from vtrans_core.options import CompressionOptions
from vtrans_core.schedule import (MAX_MASK_STEPS, MIN_MASK_STEPS, epoch_steps, mask_cost_in_finetune_steps,
                                  reconstruct_cost_in_finetune_steps)


def test_mask_rounds_cost_is_taken_from_the_finetune_epochs():
    opts = CompressionOptions.parse({}, "vtrans")
    vtrans = get_method("vtrans")
    rows = 20_000
    per_round = vtrans.mask_steps(rows, opts)
    assert MIN_MASK_STEPS < per_round < MAX_MASK_STEPS
    total = epoch_steps(rows, opts.batch_size, opts.finetune_epochs)
    spent = {f: total - vtrans.finetune_steps(rows, opts, f) for f in (0.3, 0.5, 0.8)}
    # a mask step runs the dense-size model: it costs more fine-tuning steps of a smaller model
    assert spent[0.3] > spent[0.5] > spent[0.8] > 0
    refit = reconstruct_cost_in_finetune_steps(opts.calibration_rows // opts.batch_size, 0.5)
    assert opts.reconstruct == "weights" and refit > 0     # the default least-squares refit is paid for too
    assert spent[0.5] == mask_cost_in_finetune_steps(opts.prune_rounds * per_round, opts.mask_weights, 0.5) + refit
    no_refit = CompressionOptions.parse({"reconstruct": "off"}, "vtrans")
    assert total - vtrans.finetune_steps(rows, no_refit, 0.5) == spent[0.5] - refit
    trained = CompressionOptions.parse({"mask_weights": "trained"}, "vtrans")
    assert total - vtrans.finetune_steps(rows, trained, 0.5) > spent[0.5]    # training weights too: dearer rounds


def test_small_data_keeps_the_floors_and_explicit_steps_win():
    opts = CompressionOptions.parse({}, "vtrans")
    vtrans = get_method("vtrans")
    assert vtrans.mask_steps(100, opts) == MIN_MASK_STEPS
    assert vtrans.finetune_steps(100, opts) == opts.min_finetune_steps
    explicit = CompressionOptions.parse({"mask_steps": 7, "finetune_steps": 9}, "vtrans")
    assert vtrans.mask_steps(20_000, explicit) == 7
    assert vtrans.finetune_steps(20_000, explicit) == 9

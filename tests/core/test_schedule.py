"""Step counts that scale with the data (vtrans_core/schedule.py)."""
from vtrans_core.methods import get_method
from vtrans_core.options import CompressionOptions
from vtrans_core.schedule import MAX_MASK_STEPS, MIN_MASK_STEPS, epoch_steps


def test_mask_rounds_count_toward_the_finetune_epochs():
    opts = CompressionOptions.parse({}, "vtrans")
    vtrans = get_method("vtrans")
    rows = 20_000
    per_round = vtrans.mask_steps(rows, opts)
    assert MIN_MASK_STEPS < per_round < MAX_MASK_STEPS
    total = epoch_steps(rows, opts.batch_size, opts.finetune_epochs)
    # the weights see finetune_epochs passes in all: mask rounds + fine-tuning
    assert vtrans.finetune_steps(rows, opts) + opts.prune_rounds * per_round == total


def test_small_data_keeps_the_floors_and_explicit_steps_win():
    opts = CompressionOptions.parse({}, "vtrans")
    vtrans = get_method("vtrans")
    assert vtrans.mask_steps(100, opts) == MIN_MASK_STEPS
    assert vtrans.finetune_steps(100, opts) == opts.min_finetune_steps
    explicit = CompressionOptions.parse({"mask_steps": 7, "finetune_steps": 9}, "vtrans")
    assert vtrans.mask_steps(20_000, explicit) == 7
    assert vtrans.finetune_steps(20_000, explicit) == 9

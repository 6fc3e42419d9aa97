"""Step counts that scale with the data (vtrans_core/schedule.py)."""
from vtrans_core.methods import get_method
from vtrans_core.options import CompressionOptions
from vtrans_core.schedule import (MAX_MASK_STEPS, MIN_MASK_STEPS, SHORT_CALIBRATION_TOKENS, SHORT_MASK_STEPS,
                                  epoch_steps, finetune_epochs_of, mask_cost_in_finetune_steps,
                                  reconstruct_cost_in_finetune_steps)


def test_mask_rounds_cost_is_taken_from_the_finetune_epochs():
    opts = CompressionOptions.parse({}, "vtrans")
    vtrans = get_method("vtrans")
    rows = 20_000
    per_round = vtrans.mask_steps(rows, opts)
    assert MIN_MASK_STEPS < per_round < MAX_MASK_STEPS
    total = epoch_steps(rows, opts.batch_size, finetune_epochs_of(opts))
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


def test_the_epochs_follow_the_precision_and_buy_whole_epochs_of_steps():
    import torch

    from vtrans_core.schedule import default_finetune_epochs

    assert default_finetune_epochs(None) == 2.0 and default_finetune_epochs(torch.bfloat16) == 3.0
    vtrans, rows = get_method("vtrans"), 20_000
    two, three = (CompressionOptions.parse({"finetune_epochs": e}, "vtrans") for e in (2.0, 3.0))
    assert CompressionOptions.parse({}, "vtrans").finetune_epochs is None      # resolved by the job
    # the ranking costs the same: the third epoch goes to fine-tuning whole
    extra = vtrans.finetune_steps(rows, three, 0.4) - vtrans.finetune_steps(rows, two, 0.4)
    assert extra == epoch_steps(rows, two.batch_size, 3.0) - epoch_steps(rows, two.batch_size, 2.0)
    # spam-sized files: three epochs hold the default ranking (no short ranking, more than the floor)
    assert vtrans.small_file(3000, two) and not vtrans.small_file(3000, three)
    assert vtrans.finetune_steps(3000, three, 0.5) > three.min_finetune_steps


def test_small_data_keeps_the_floors_and_explicit_steps_win():
    opts = CompressionOptions.parse({}, "vtrans")
    vtrans = get_method("vtrans")
    assert vtrans.mask_steps(100, opts) == SHORT_MASK_STEPS
    assert vtrans.finetune_steps(100, opts) == opts.min_finetune_steps
    explicit = CompressionOptions.parse({"mask_steps": 7, "finetune_steps": 9}, "vtrans")
    assert vtrans.mask_steps(20_000, explicit) == 7
    assert vtrans.finetune_steps(20_000, explicit) == 9


def test_a_small_file_gets_the_short_ranking_and_the_floor():
    """Two epochs of 3,000 rows (188 steps) cannot hold the default ranking (2 x 40 mask steps and
    a 2,048-row refit) plus the floor: vtrans ranks on 20-step rounds and a 64k-token refit and
    fine-tunes for its floor (120), so the recipe stays near two epochs of plain distillation.
    6,000 rows hold it: the ranking is the default one and the fine-tuning the epochs' rest."""
    vtrans, opts = get_method("vtrans"), CompressionOptions.parse({}, "vtrans")
    assert opts.min_finetune_steps == 120
    small = (vtrans.mask_steps(3000, opts), vtrans.calibration_tokens(3000, opts), vtrans.finetune_steps(3000, opts, 0.4))
    assert small == (SHORT_MASK_STEPS, SHORT_CALIBRATION_TOKENS, 120)
    assert vtrans.small_file(3000, opts) and not vtrans.small_file(6000, opts)
    big = (vtrans.mask_steps(6000, opts), vtrans.calibration_tokens(6000, opts))
    assert big == (MIN_MASK_STEPS, opts.calibration_tokens) and opts.calibration_tokens > SHORT_CALIBRATION_TOKENS
    assert vtrans.finetune_steps(6000, opts, 0.5) > opts.min_finetune_steps
    # where the default ranking first fits beside the floor, the fine-tuning starts at the floor:
    # the step count does not jump at the boundary (the ranking does)
    boundary = next(n for n in range(3000, 6000, 32) if not vtrans.small_file(n, opts))
    assert opts.min_finetune_steps <= vtrans.finetune_steps(boundary, opts, 0.5) < opts.min_finetune_steps + 5
    # a user's own steps or floor are the schedule
    assert vtrans.mask_steps(3000, CompressionOptions.parse({"finetune_steps": 50}, "vtrans")) == MIN_MASK_STEPS
    assert not vtrans.small_file(3000, CompressionOptions.parse({"mask_steps": 30}, "vtrans"))
    assert vtrans.calibration_tokens(3000, CompressionOptions.parse({"calibration_tokens": 9000}, "vtrans")) == 9000
    floor = CompressionOptions.parse({"min_finetune_steps": 200}, "vtrans")
    assert vtrans.finetune_steps(3000, floor, 0.5) == 200 and vtrans.mask_steps(3000, floor) == SHORT_MASK_STEPS


def test_fast_keeps_its_schedule_on_its_small_subset():
    """fast's 1,024 rows are always a small file; it was measured with 40-step rounds, the
    128k-token refit and 150 fine-tuning steps, and keeps them."""
    fast, opts = get_method("fast"), CompressionOptions.parse({}, "fast")
    assert (opts.min_finetune_steps, CompressionOptions.parse({}, "faster").min_finetune_steps) == (150, 150)
    assert not fast.small_file(1024, opts)
    assert (fast.mask_steps(1024, opts), fast.calibration_tokens(1024, opts), fast.finetune_steps(1024, opts)) == (
        MIN_MASK_STEPS, 128 * 1024, 150)

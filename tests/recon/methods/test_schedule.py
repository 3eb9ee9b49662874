"""The schedule in Adam steps (recon/methods/schedule.py): long epochs shorten every epoch-valued setting."""

import dataclasses

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.methods.lorein.config import LoreinConfig
from qmapinr.recon.methods.schedule import EPOCH_FIELDS, step_schedule, steps_per_epoch


def test_epochs_with_no_more_steps_than_the_reference_keep_the_settings():
    cfg = SummitConfig()
    for nx in (8, 32, 64):  # batch_x 4: 2, 8, 16 steps
        out, note = step_schedule(cfg, nx, 4)
        assert out is cfg and note is None
    assert steps_per_epoch(65, 4) == 17 and steps_per_epoch(3, 4) == 1


def test_twice_the_reference_steps_halves_the_schedule_and_keeps_its_step_count():
    cfg = SummitConfig(coarse_to_fine_epochs=3)
    out, note = step_schedule(cfg, 128, 4)  # the paper's 128 readouts: 32 steps per epoch
    assert (out.epochs, out.lr_step, out.wnnm_start_epoch, out.t2star_hold_epochs, out.coarse_to_fine_epochs) == (
        30, 10, 15, 5, 2)
    assert out.epochs * steps_per_epoch(128, 4) == cfg.epochs * cfg.schedule_steps_per_epoch
    assert "epochs 60->30" in note and "32 Adam steps" in note
    unchanged = {f.name for f in dataclasses.fields(cfg)} - set(EPOCH_FIELDS)
    assert all(getattr(out, n) == getattr(cfg, n) for n in unchanged)
    lor, _ = step_schedule(LoreinConfig(lambda_cons=0.5), 128, 4)  # a subclass keeps its type and own fields
    assert isinstance(lor, LoreinConfig) and lor.lambda_cons == 0.5 and lor.epochs == 30


def test_switched_off_wnnm_stays_off_and_zero_reference_disables():
    cfg = SummitConfig(epochs=3, wnnm_start_epoch=3, lr_step=1, t2star_hold_epochs=0)
    out, _ = step_schedule(cfg, 400, 4)  # 100 steps: factor 0.16
    assert out.epochs == 1 and out.lr_step == 1 and out.wnnm_start_epoch >= out.epochs
    off = dataclasses.replace(SummitConfig(), schedule_steps_per_epoch=0)
    assert step_schedule(off, 1024, 1) == (off, None)

"""Progress reports: text format, bounded rate with stage changes always passing, solver wiring."""

from __future__ import annotations

import dataclasses

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.methods.budget import (
    Dims,
    batch_bytes_per_x,
    batch_chunk_bytes,
    batch_size,
    estimate_resources,
)
from qmapinr.recon.methods.progress import Progress, ThrottledProgress


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_text_names_stage_epoch_loss_eta():
    text = Progress("fit", 20.4, 12, 60, 0.0123, 85.2).text()
    assert text == "qmapinr progress: stage=fit epoch=12/60 loss=0.0123 eta=85s elapsed=20s"
    assert Progress("prepare", 0.0).text() == "qmapinr progress: stage=prepare elapsed=0s"


def test_throttled_progress_bounds_the_rate():
    clock, sent = FakeClock(), []
    p = ThrottledProgress(sent.append, 10.0, clock=clock)
    p(Progress("prepare", 0.0))
    for e in range(1, 31):  # one epoch per second for 30 s
        clock.t = float(e)
        p(Progress("fit", clock.t, e, 40, 1.0 / e, 40.0 - e))
    stages = [s.split()[2] for s in sent]
    assert stages[0] == "stage=prepare" and stages[1] == "stage=fit"  # a stage change passes at once
    fit_times = [float(s.split("elapsed=")[1][:-1]) for s in sent if "stage=fit" in s]
    assert all(b - a >= 10.0 for a, b in zip(fit_times, fit_times[1:], strict=False))
    assert len(fit_times) <= 4
    clock.t = 30.5
    p(Progress("fit", 30.5, 40, 40, 0.01, 0.0))  # the last epoch always passes
    assert "epoch=40/40" in sent[-1]
    clock.t = 30.6
    p(Progress("maps", 30.6))
    assert "stage=maps" in sent[-1]


def test_batch_size_is_capped_by_the_memory_budget():
    paper = Dims(128, 128, 40, 24, nte=3, nseg=128, ntau=5, nlines=12800)
    cfg = SummitConfig()
    per_x = batch_bytes_per_x(paper, cfg)
    assert per_x == int((24 * 3 + 41) * 40 * 128 * 8 * 4.0)  # images + atoms; the volume is chunked
    exact = dataclasses.replace(cfg, forward="exact")
    assert batch_bytes_per_x(paper, exact) == int(24 * 3 * 5 * 128 * 40 * 128 * 8 * 4.0)
    budget = dataclasses.replace(cfg, memory_budget_mb=2.5 * per_x / 2**20)
    assert batch_size(paper, budget) == 2
    assert batch_size(paper, dataclasses.replace(cfg, memory_budget_mb=1.0)) == 1  # never below 1
    assert batch_size(paper, dataclasses.replace(cfg, memory_budget_mb=0.0)) == cfg.batch_x  # no cap
    small = Dims(32, 32, 8, 4, nte=3, nseg=32, ntau=4, nlines=256)
    assert batch_size(small, cfg) == cfg.batch_x  # small scans keep the configured batch
    est = estimate_resources(paper, "summit", budget)
    assert est.parts["batch"] == 2 * per_x + batch_chunk_bytes(budget)


def test_time_estimate_counts_the_epochs_of_the_step_schedule():
    paper = Dims(128, 128, 40, 24, nte=3, nseg=128, ntau=5, nlines=12800)  # 32 steps per epoch at batch_x 4
    cfg = SummitConfig()
    as_given = estimate_resources(paper, "summit", dataclasses.replace(cfg, schedule_steps_per_epoch=0))
    halved = estimate_resources(paper, "summit", dataclasses.replace(cfg, schedule_steps_per_epoch=0, epochs=30))
    assert estimate_resources(paper, "summit", cfg).seconds == halved.seconds < as_given.seconds

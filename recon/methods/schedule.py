"""The training schedule in Adam steps: epoch-valued settings shortened for volumes with long epochs.

An epoch of :func:`~qmapinr.recon.methods.loop.fit` is one pass over the readout positions x in batches of
``batch_x``, i.e. ``ceil(nx / batch_x)`` Adam steps. The schedule of :class:`~qmapinr.recon.config.SummitConfig`
(``epochs``, ``lr_step``, ``wnnm_start_epoch``, ``t2star_hold_epochs``, ``coarse_to_fine_epochs``) was set where
an epoch is ``schedule_steps_per_epoch`` = 16 steps (16x64x64 at ``batch_x`` 4, the size its quality is measured
at). The INR has the same number of parameters at any matrix size and every step sees ``batch_x`` full (z, y)
slices, so what the schedule has to provide is a number of Adam steps, not of passes: at the paper's 128 readout
positions an epoch is 32 steps and 60 epochs are 1 920 steps, twice what the schedule was set for (the measured
data consistency is flat from epoch ~25 there, docs/benchmarks/epoch.md). :func:`step_schedule` therefore
shortens every epoch-valued field by ``schedule_steps_per_epoch / steps`` when an epoch has more steps than the
reference, keeping the schedule's shape (learning-rate halvings, WNNM half-way, the T2* hold) and its number of
steps. It never lengthens a schedule (small volumes, fewer steps per epoch, keep the settings as given, so their
maps are unchanged) and ``schedule_steps_per_epoch = 0`` switches it off.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TypeVar

EPOCH_FIELDS = ("epochs", "lr_step", "wnnm_start_epoch", "t2star_hold_epochs", "coarse_to_fine_epochs")
"""The settings counted in epochs (all of them scaled together)."""

C = TypeVar("C")


def steps_per_epoch(nx: int, batch_x: int) -> int:
    """Adam steps of one epoch over ``nx`` readout positions in batches of ``batch_x``."""
    return math.ceil(nx / max(1, batch_x))


def step_schedule(cfg: C, nx: int, batch_x: int) -> tuple[C, str | None]:
    """``cfg`` with its epoch-valued fields scaled to the reference number of steps per epoch.

    Returns the config (unchanged when an epoch has at most ``cfg.schedule_steps_per_epoch`` steps or the
    reference is 0) and a one-line note of the change for the log and ``info['warnings']`` (None if unchanged).
    Scaled values are rounded, at least 1 for ``epochs`` and ``lr_step`` and for a positive
    ``coarse_to_fine_epochs``; ``wnnm_start_epoch`` and ``t2star_hold_epochs`` may become 0.
    """
    ref = getattr(cfg, "schedule_steps_per_epoch", 0)
    steps = steps_per_epoch(nx, batch_x)
    if ref <= 0 or steps <= ref:
        return cfg, None
    f = ref / steps
    new = {}
    for name in EPOCH_FIELDS:
        v = getattr(cfg, name)
        keep_positive = name in ("epochs", "lr_step") or (name == "coarse_to_fine_epochs" and v > 0)
        new[name] = max(1, round(v * f)) if keep_positive else round(v * f)
    if cfg.wnnm_start_epoch >= cfg.epochs:  # WNNM was off: it stays off
        new["wnnm_start_epoch"] = max(new["wnnm_start_epoch"], new["epochs"])
    note = (f"{steps} Adam steps per epoch (nx {nx}, batch_x {batch_x}) > schedule_steps_per_epoch {ref}: schedule "
            f"shortened by {f:.3g}: " + ", ".join(f"{n} {getattr(cfg, n)}->{new[n]}" for n in EPOCH_FIELDS
                                                  if getattr(cfg, n) != new[n]))
    return dataclasses.replace(cfg, **new), note

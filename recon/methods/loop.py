"""The training loop every INR method shares (SUMMIT, LoREIN, the distributed run): :func:`fit`.

Per epoch a seeded permutation of the readout positions x is split into batches (or, with a
:class:`DataParallel` hook, into this rank's share of them); every batch is one ``loss_fn`` call, one backward and
one Adam step with the learning rate halved every ``lr_step`` epochs; the epoch loss is read once per epoch (the
one host sync), checked for finiteness and reported as :class:`~qmapinr.recon.methods.progress.Progress`; the
intra-op thread count follows the measured batch times (:mod:`qmapinr.recon.methods.threadtune`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.methods.progress import Progress, ProgressCallback
from qmapinr.recon.methods.threadtune import ThreadTuner
from qmapinr.recon.methods.validate import check_loss

log = logging.getLogger(__name__)


EpochCallback = Callable[[int, float, nn.Module], None]


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Timer:
    """Accumulates wall time per stage name (seconds).

    On CUDA a stage time needs a host sync; it is taken only when ``sync`` is True (``fit(time_stages=True)``),
    otherwise :meth:`mark` records nothing there, so the loop never waits on the device per batch.
    """

    def __init__(self, device: torch.device, sync: bool = True) -> None:
        self.device = device
        self.active = device.type != "cuda" or sync
        self.totals: dict[str, float] = {}
        self._t = time.perf_counter()

    def restart(self) -> None:
        """Start the next interval now (time spent before is not attributed to any stage)."""
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        if not self.active:
            return
        _sync(self.device)
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - self._t
        self._t = now


@dataclass
class FitResult:
    """Per-epoch data-consistency loss and the stage timings of the loop (seconds; callback time excluded)."""

    history: list[float]
    timings: dict[str, float]


class DataParallel(Protocol):
    """The hook a data-parallel run over readout slabs plugs into :func:`run_inr`, :func:`fit` and
    :func:`final_maps` (:class:`qmapinr.recon.methods.distributed.XSlabParallel`; None = one process, unchanged).

    ``owned``: int64 ``(n_own,)`` readout positions whose data this rank holds.
    """

    owned: torch.Tensor

    def shard(self, run: Any, cfg: SummitConfig) -> None:  # run: summit.solver.InrRun
        """After the model and loss are built: keep only the owned x-slab of ``run.prep.hybrid`` (in place)."""

    def batches(self, order: torch.Tensor, bx: int) -> Iterable[torch.Tensor]:
        """This rank's part of every step of the epoch ``order``; the same number of steps on every rank."""

    def sync_grads(self, model: nn.Module, n_local: int) -> None:
        """After backward: every rank's grads become the batch-size weighted mean over all ranks."""

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over the ranks."""

    def reduce_volumes(self, vols: dict[str, torch.Tensor]) -> None:
        """Sum every ``(nz, ny, nx)`` volume over the ranks in place (each rank filled its own x)."""


BatchLoss = Callable[[nn.Module, torch.Tensor, int, "_Timer"], tuple[torch.Tensor, torch.Tensor]]
"""``loss_fn(model, xb, epoch, timer) -> (loss, data_consistency)`` for one batch of readout positions ``xb``
(``timer.mark(stage)`` attributes time to the loss's own stages)."""


def fit(model: nn.Module, loss_fn: BatchLoss, nx: int, cfg: SummitConfig, device: torch.device,
        callback: EpochCallback | None = None, progress: ProgressCallback | None = None,
        time_stages: bool = False, batch_x: int | None = None, parallel: DataParallel | None = None
        ) -> FitResult:
    """The training loop every INR method shares: seeded x-batch order, Adam + step decay, plateau stop.

    ``model.param_groups(lr, coil_lr_scale)`` gives the Adam groups and ``model.set_epoch(epoch)`` is called at
    the start of every epoch; ``loss_fn`` returns the batch loss and its data-consistency part (for the history).
    The epoch loss is accumulated on the device and read once per epoch (no host sync per batch); per-stage
    times on CUDA only with ``time_stages``. ``progress`` gets a :class:`Progress` after every epoch (epoch,
    loss, ETA). ``batch_x`` overrides ``cfg.batch_x`` (e.g. the budget-capped :func:`resolve_batch_x`).
    ``parallel``: one rank of a data-parallel run (its batches, a gradient all-reduce per step, epoch sums over
    the ranks); a rank may own no x of a step.
    """
    bx = batch_x or cfg.batch_x
    opt = torch.optim.Adam(model.param_groups(cfg.lr, cfg.coil_lr_scale), lr=cfg.lr, fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    gen = torch.Generator().manual_seed(cfg.seed)
    timer = _Timer(device, sync=time_stages)
    tuner = ThreadTuner(cfg.threads, device, enabled=cfg.adaptive_threads)
    history: list[float] = []
    t_loop = time.perf_counter()
    excluded = 0.0
    for epoch in range(cfg.epochs):
        model.set_epoch(epoch)
        order = torch.randperm(nx, generator=gen).to(device)  # one copy per epoch, batches are views
        dc_sum = torch.zeros((), device=device)
        loss_sum = torch.zeros((), device=device)
        for xb in order.split(bx) if parallel is None else parallel.batches(order, bx):
            timer.mark("other")
            tuner.start()
            opt.zero_grad(set_to_none=True)
            if len(xb):  # always in one process
                loss, dc = loss_fn(model, xb, epoch, timer)
                loss_sum = loss_sum + loss.detach()  # NaN/Inf propagate; checked once per epoch (no host sync here)
                loss.backward()
                dc_sum = dc_sum + dc.detach() * (len(xb) / nx)
            if parallel is not None:
                parallel.sync_grads(model, len(xb))  # the step's one collective
            opt.step()
            tuner.stop(len(xb))
            timer.mark("backward_step")
        if parallel is not None:
            dc_sum, loss_sum = parallel.reduce(torch.stack([dc_sum, loss_sum]))
        epoch_dc = float(dc_sum)  # the one host sync of the epoch
        check_loss(float(loss_sum), epoch)
        sched.step()
        history.append(epoch_dc)
        log.info("epoch %d/%d  DC L1 %.5g  lr %.2g", epoch + 1, cfg.epochs, epoch_dc, sched.get_last_lr()[0])
        if progress is not None:
            spent = time.perf_counter() - t_loop - excluded
            progress(Progress("fit", spent, epoch + 1, cfg.epochs, epoch_dc,
                              spent / (epoch + 1) * (cfg.epochs - epoch - 1)))
        if callback is not None:
            t_cb = time.perf_counter()
            callback(epoch, t_cb - t_loop - excluded, model)
            excluded += time.perf_counter() - t_cb
            timer.restart()
        if cfg.plateau_rel > 0 and len(history) > 5:
            prev = min(history[-6:-1])
            if prev - epoch_dc < cfg.plateau_rel * prev:
                log.info("data-consistency plateau after %d epochs: stopping", epoch + 1)
                break
    timings = {f"{k}_s": v for k, v in timer.totals.items()}
    timings["epochs_run"] = len(history)
    if tuner.active:
        timings["threads_final"] = tuner.best
    timings["loop_s"] = time.perf_counter() - t_loop - excluded
    timings["callback_s"] = excluded
    return FitResult(history, timings)

"""Intra-op thread count chosen from measured batch times while the training loop runs (CPU only).

Why (docs/benchmarks/threads.md, quiet 2-core machine): with the passive OpenMP wait policy, one thread is the
fastest on the demo volume whatever else runs (waking a second thread costs more than it gives on such small
tensors), while at 16x64x64 two threads win as soon as other processes compete; which count is faster depends on
the problem size *and* on the load of the host at that moment, and the load changes during a reconstruction on a
shared recon host. So the loop measures it: it times a few batches at each candidate count (1, and the session's
share of the CPUs), keeps the fastest per readout position, and measures again every ``period`` batches.

The extra cost is the exploration itself: ``trials`` batches per candidate every ``period`` batches, i.e. at most
about ``trials * len(candidates) / period`` of the batches run at the slower count (4 % with the defaults).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


class ThreadTuner:
    """Chooses between ``{1, max_threads // 2, max_threads}`` intra-op threads from measured batch times.

    Use: ``tuner.start()`` before a batch, ``tuner.stop(n_positions)`` after its optimiser step. Inactive (a
    no-op that leaves ``torch.get_num_threads()`` alone) when ``max_threads <= 1``, when ``enabled`` is False,
    or on a CUDA device.

    Parameters
    ----------
    max_threads : the session's thread count (the upper candidate).
    device : the training device (tuning only on the CPU).
    period : batches between two measurement rounds.
    trials : timed batches per candidate and round (after one untimed warm-up batch per switch).
    clock : seconds (the tests pass a fake one).
    """

    def __init__(self, max_threads: int, device: torch.device, enabled: bool = True, period: int = 100,
                 trials: int = 2, clock: Callable[[], float] = time.perf_counter) -> None:
        self.active = enabled and max_threads > 1 and device.type == "cpu"
        self.candidates = sorted({1, max(1, max_threads // 2), max_threads})
        self.period, self.trials = period, trials
        self.best = max_threads
        self.choices: list[int] = []  # the count chosen after every measurement round
        self._plan: list[tuple[int, bool]] = []  # (threads, timed) of the batches still to measure
        self._times: dict[int, list[float]] = {}
        self._since = period  # measure at the start
        self._current: tuple[int, bool] | None = None
        self._t0 = 0.0
        self._clock = clock

    def start(self) -> None:
        """Set the thread count of the next batch."""
        if not self.active:
            return
        if not self._plan and self._since >= self.period:
            self._plan = [(n, timed) for n in self.candidates for timed in [False] + [True] * self.trials]
            self._times = {n: [] for n in self.candidates}
        self._current = self._plan.pop(0) if self._plan else (self.best, False)
        torch.set_num_threads(self._current[0])
        self._t0 = self._clock()

    def stop(self, n_positions: int) -> None:
        """Record the batch that just finished (``n_positions`` readout positions in it)."""
        if not self.active or self._current is None:
            return
        threads, timed = self._current
        if timed:
            self._times[threads].append((self._clock() - self._t0) / max(n_positions, 1))
        self._current = None
        measuring = any(self._times.values())
        if measuring and not self._plan:  # round complete: pick the fastest (median per position)
            med = {n: sorted(v)[len(v) // 2] for n, v in self._times.items() if v}
            best = min(med, key=med.get)
            if not self.choices or best != self.choices[-1]:
                log.info("threads: %d intra-op thread(s) measured fastest (%s s per readout position)", best,
                         ", ".join(f"{n}: {v:.3g}" for n, v in sorted(med.items())))
            self.best = best
            self.choices.append(best)
            log.debug("threads: %s s/position -> %d", {n: f"{v:.3g}" for n, v in med.items()}, self.best)
            self._times, self._since = {}, 0
        elif not measuring:
            self._since += 1

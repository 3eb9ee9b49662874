"""Progress reports of a long reconstruction: stage, epoch, loss and ETA, at a bounded rate.

The solver calls a :data:`ProgressCallback` with a :class:`Progress` at every stage change and after every epoch;
:class:`ThrottledProgress` turns those into one-line texts for a sink (a log, a wire TEXT message) at most once per
``min_interval_s`` (stage changes and the last epoch always pass). No transport import here: the gadget layer
passes ``connection.send`` as the sink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One report. ``stage``: 'prepare', 'fit', 'maps' or 'done'; epoch fields only during 'fit'.

    ``elapsed_s``: seconds since the reconstruction started; ``eta_s``: estimated seconds left in this stage.
    """

    stage: str
    elapsed_s: float
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    eta_s: float | None = None

    def text(self) -> str:
        """``qmapinr progress: stage=fit epoch=12/60 loss=0.0123 eta=85s elapsed=20s``."""
        parts = [f"stage={self.stage}"]
        if self.epoch is not None:
            parts.append(f"epoch={self.epoch}/{self.epochs}")
        if self.loss is not None:
            parts.append(f"loss={self.loss:.5g}")
        if self.eta_s is not None:
            parts.append(f"eta={self.eta_s:.0f}s")
        parts.append(f"elapsed={self.elapsed_s:.0f}s")
        return "qmapinr progress: " + " ".join(parts)


ProgressCallback = Callable[[Progress], None]


class ThrottledProgress:
    """A :data:`ProgressCallback` forwarding ``report.text()`` to ``sink`` at most once per ``min_interval_s``.

    Stage changes and the final epoch are always forwarded; everything is also logged at INFO at the same rate.
    """

    def __init__(self, sink: Callable[[str], object] | None, min_interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.min_interval_s, self.clock = sink, min_interval_s, clock
        self._last: float | None = None
        self._stage: str | None = None
        self.sent: list[str] = []

    def __call__(self, report: Progress) -> None:
        now = self.clock()
        final = report.epoch is not None and report.epoch == report.epochs
        if (report.stage == self._stage and not final and self._last is not None
                and now - self._last < self.min_interval_s):
            return
        self._last, self._stage = now, report.stage
        text = report.text()
        log.info("%s", text)
        self.sent.append(text)
        if self.sink is not None:
            self.sink(text)

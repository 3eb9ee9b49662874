"""The adaptive thread count follows the measured batch times and is off where it must be."""

from __future__ import annotations

import dataclasses

import torch

from qmapinr.gadgets.threads import session_config
from qmapinr.recon.config import SummitConfig
from qmapinr.recon.methods.threadtune import ThreadTuner


class FakeClock:
    """A batch at n threads takes ``cost[n]`` seconds per readout position (4 positions per batch): every second
    call (the tuner's stop) advances the time by the batch's cost at the current thread count."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.t, self.started = cost, 0.0, False

    def __call__(self) -> float:
        if self.started:  # stop: the batch ran at the current thread count
            self.t += 4 * self.cost[torch.get_num_threads()]
        self.started = not self.started
        return self.t


def _run(tuner: ThreadTuner, clock: FakeClock, batches: int) -> list[int]:
    used = []
    for _ in range(batches):
        tuner.start()
        used.append(torch.get_num_threads())
        tuner.stop(4)  # the fake clock charges the batch at the current count
    return used


def test_picks_the_fastest_count_and_measures_again_when_the_load_changes():
    before = torch.get_num_threads()
    try:
        clock = FakeClock({1: 1.0, 2: 3.0, 4: 2.0})
        tuner = ThreadTuner(4, torch.device("cpu"), period=10, trials=2, clock=clock)
        used = _run(tuner, clock, 9)  # one round: 3 candidates x (1 warm-up + 2 timed)
        assert sorted(set(used)) == [1, 2, 4] and tuner.best == 1
        used = _run(tuner, clock, 10)
        assert set(used) == {1}  # exploit until the next round
        clock.cost = {1: 5.0, 2: 1.0, 4: 2.0}  # another process now competes differently
        _run(tuner, clock, 9)
        assert tuner.best == 2 and tuner.choices == [1, 2]
    finally:
        torch.set_num_threads(before)


def test_inactive_for_one_thread_cuda_or_disabled():
    before = torch.get_num_threads()
    for tuner in (ThreadTuner(1, torch.device("cpu")), ThreadTuner(2, torch.device("cuda")),
                  ThreadTuner(2, torch.device("cpu"), enabled=False)):
        tuner.start()
        tuner.stop(4)
        assert not tuner.active and torch.get_num_threads() == before


def test_session_config_turns_it_off_for_an_explicit_thread_count(monkeypatch):
    monkeypatch.delenv("QMAPINR_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("qmapinr.gadgets.threads.usable_cpus", lambda *a, **k: (4, "4 CPUs (test)"))
    auto = session_config(SummitConfig())
    assert auto.threads == 4 and auto.adaptive_threads
    explicit = session_config(dataclasses.replace(SummitConfig(), threads=3))
    assert explicit.threads == 3 and not explicit.adaptive_threads
    monkeypatch.setenv("QMAPINR_THREADS", "2")
    assert not session_config(SummitConfig()).adaptive_threads

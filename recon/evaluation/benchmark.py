"""Side-by-side benchmark: SUMMIT vs the subspace (LRT-like) baseline vs the BART peer on the same simulated data.

One case = (phantom, R, SNR, seed). Every method gets the same :class:`KSpace6D`; its maps are scored against the
phantom truth (:mod:`qmapinr.recon.evaluation.metrics`), with wall time and peak resident memory measured around
the call.
SUMMIT also records a convergence curve (NRMSE vs wall time, callback time excluded) and its time-to-quality:
the wall time after which every scored NRMSE stays within 5 % of its final value.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.evaluation.metrics import SCORED, Scores, nrmse, score
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.sim.phantom import Phantom
from qmapinr.recon.sim.simulate import SimulationConfig, simulate

log = logging.getLogger(__name__)

METHODS = ("summit", "subspace", "bart")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Context manager sampling this process's resident set size every 20 ms; ``peak_mb`` above the start."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, _rss_mb() - self._start)

    def __enter__(self) -> PeakMemory:
        self._start = _rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb() - self._start)


@dataclass
class MethodResult:
    """One method on one case."""

    method: str
    case: str
    scores: Scores
    seconds: float
    peak_mb: float
    maps: QuantMaps
    curve: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    time_to_quality_s: float | None = None
    error: str | None = None


def time_to_quality(curve: list[tuple[float, dict[str, float]]], tol: float = 0.05) -> float | None:
    """Earliest time after which every map's NRMSE stays within ``tol`` (relative) of its final value."""
    if not curve:
        return None
    final = curve[-1][1]
    t_ok = curve[-1][0]
    for t, vals in reversed(curve):
        if all(abs(vals[k] - final[k]) <= tol * final[k] for k in final):
            t_ok = t
        else:
            break
    return t_ok


def _summit(kspace: KSpace6D, phantom: Phantom, cfg: SummitConfig, every: int):
    from qmapinr.recon.methods.summit.solver import summit_recon

    curve: list[tuple[float, dict[str, float]]] = []
    tissues = [phantom.label_of(t) for t in ("WM", "GM") if t in phantom.label_names.values()]
    region = phantom.mask & np.isin(phantom.labels, tissues) if tissues else phantom.mask

    def callback(epoch: int, seconds: float, model) -> None:
        if epoch % every and epoch != cfg.epochs - 1:
            return
        vols = model.volumes(("T1", "T2", "T2star"), cfg.batch_x)
        curve.append((seconds, {n: nrmse(v.numpy(), phantom.maps[n], region) for n, v in vols.items()}))

    out = summit_recon(kspace, cfg, callback=callback)
    return out, curve


def run_method(method: str, kspace: KSpace6D, phantom: Phantom, case: str,
               summit_cfg: SummitConfig | None = None, curve_every: int = 5) -> MethodResult:
    """Run one method, score it, measure wall time and peak RSS. Errors are caught and reported in the row."""
    summit_cfg = summit_cfg or SummitConfig()
    curve: list = []
    t0 = time.perf_counter()
    try:
        with PeakMemory() as mem:
            if method == "summit":
                maps, curve = _summit(kspace, phantom, summit_cfg, curve_every)
            elif method == "subspace":
                from qmapinr.recon.methods.subspace import SubspaceConfig, subspace_recon

                maps = subspace_recon(kspace, SubspaceConfig())
            elif method == "bart":
                from qmapinr.recon.methods.bart import BartConfig, bart_available, bart_recon

                if not bart_available():
                    raise RuntimeError("BART CLI not installed (Debian package 'bart')")
                try:
                    maps = bart_recon(kspace, BartConfig(threads=os.cpu_count() or 1))
                except RuntimeError as exc:
                    if "ecalib" not in str(exc):
                        raise
                    # No fully sampled k-space centre for ESPIRiT (3x3 per tau here): BART's pics runs with the
                    # project's coil maps instead, and the row says so.
                    log.warning("bart ecalib failed (%s); using qmapinr coil maps for bart pics", exc)
                    method = "bart (qmapinr coil maps)"
                    maps = bart_recon(kspace, BartConfig(coil_maps="qmapinr", threads=os.cpu_count() or 1))
            else:
                raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    except Exception as exc:  # a failing method must not hide the other rows
        log.exception("%s failed on %s", method, case)
        return MethodResult(method, case, Scores(), time.perf_counter() - t0, 0.0,
                            QuantMaps(maps={}), error=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t0
    if method == "summit":
        seconds = float(maps.info["timings"]["total_s"])  # callback time excluded
    mask = phantom.mask & (maps.mask if maps.mask is not None else True)
    s = score(maps.maps, phantom.maps, phantom.labels, phantom.label_names, mask, names=SCORED)
    return MethodResult(method, case, s, seconds, mem.peak_mb, maps, curve, time_to_quality(curve))


def run_case(sim: SimulationConfig, methods: tuple[str, ...], summit_cfg: SummitConfig,
             progress: Callable[[str], None] | None = None) -> tuple[list[MethodResult], Phantom]:
    """Simulate one case and run every method on it."""
    kspace, phantom = simulate(sim)
    case = f"{sim.phantom} R={sim.R:g} SNR={sim.snr if sim.snr else 'inf'}"
    results = []
    for m in methods:
        if progress:
            progress(f"{case}: {m}")
        results.append(run_method(m, kspace, phantom, case, summit_cfg))
    return results, phantom

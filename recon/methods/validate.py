"""Checks of a method's settings against the data before any work starts, and guards on what comes out.

One place for every check that can fail early (docs/design.md: "impossible configuration -> clear error"):

* :func:`validate` ``(cfg, kspace) -> (cfg, warnings)``: the data (:func:`check_kspace`: empty, all-zero,
  non-finite or corrupt samples, missing T2-preps, truncated stream) and the method's settings (ranges, option
  values, sizes against the matrix). Every problem is collected into ONE :class:`~qmapinr.recon.config.ConfigError`
  (a ``ValueError``) whose message names the setting and what to change. Settings that cannot work on this
  matrix but have an obvious safe value are adjusted instead and reported in ``warnings`` (logged here; the
  registry copies them into ``QuantMaps.info['warnings']``, which become the images' meta ``Warning``):

  - **WNNM patch on a thin slab.** WNNM works on 2-D ``(z, y)`` slices of the maps (one per readout position x).
    When ``wnnm_patch`` exceeds ``nz`` or ``ny`` (e.g. the 4-slice ``tests/data/tiny.h5`` with the default patch
    5) the patch is clipped to ``min(wnnm_patch, nz, ny)``: the regulariser then groups ``nz x nz`` patches that
    span the whole slab, which is what a 5-pixel patch does on a thicker slab near its centre. (The alternative,
    ``(y, x)`` patches, would regularise across the batch of x positions, which the solver does not see at once.)
  - ``batch_x`` larger than ``nx`` is clipped to ``nx``.

  :func:`validate` is idempotent: a config it returned passes again without changes or warnings.
* :func:`check_loss`, :func:`check_support`, :func:`check_maps`: guards inside and after a solver. A non-finite
  loss, an empty support mask or output maps that are not finite (or carry no signal) raise
  :class:`ReconstructionError` with one line that says what went wrong and the likely cause; a chain exception
  reaches the client as TEXT (``gadgets/transport/handler.py``), so no zeros are ever sent with ``status=ok``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import torch

from qmapinr.recon.config import ConfigError, HashGridConfig, SummitConfig, check_literals
from qmapinr.recon.inr.heads import DEFAULT_RANGES
from qmapinr.recon.kspace import KSpace6D, QuantMaps

log = logging.getLogger(__name__)

OUTLIER_RATIO = 1e8
"""A k-space line whose peak |sample| exceeds the median line peak by more than this is corrupt: the centre of a
fully sampled 128x128x40 volume at SNR 1000 exceeds the noise floor by ~1e6."""

MAX_MAGNITUDE = 1e18
"""|sample| above this overflows float32 once squared (3.4e38): such data cannot be processed as measured."""

_LINE_BLOCK = 4096


class ReconstructionError(RuntimeError):
    """The reconstruction cannot produce honest maps from this data (the message says why, in one line)."""


class _Problems:
    """Collects ``name=value: rule`` texts and raises them as one :class:`ConfigError`."""

    def __init__(self, owner: str) -> None:
        self.owner, self.items = owner, []

    def require(self, ok: bool, name: str, value: Any, rule: str) -> None:
        if not ok:
            self.items.append(f"{name}={value!r} {rule}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(f"invalid {self.owner} settings: " + "; ".join(self.items))


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _line_peaks(data: np.ndarray) -> np.ndarray:
    """float64 ``(nlines,)``: max |sample| of every line over coils, echoes and readout (block-wise, no copy of
    the whole array; NaN where a line holds a non-finite sample)."""
    nl = data.shape[2]
    out = np.empty(nl)
    for a in range(0, nl, _LINE_BLOCK):
        blk = np.abs(data[:, :, a:a + _LINE_BLOCK, :]).astype(np.float64)
        peak = blk.max(axis=(0, 1, 3))
        peak[~np.isfinite(blk).all(axis=(0, 1, 3))] = np.nan
        out[a:a + _LINE_BLOCK] = peak
    return out


def _line(kspace: KSpace6D, i: int) -> str:
    return (f"line {i} (ky={int(kspace.ky[i])}, kz={int(kspace.kz[i])}, segment={int(kspace.seg[i])}, "
            f"set={int(kspace.tau[i])})")


def check_kspace(kspace: KSpace6D) -> list[str]:
    """Data checks common to every method; returns warnings, raises :class:`ReconstructionError`.

    Errors: no lines; NaN/Inf samples; all-zero data; a line whose peak |sample| is above :data:`MAX_MAGNITUDE`
    or more than :data:`OUTLIER_RATIO` times the median line peak (a corrupt sample: it would become the data
    scale and push everything else below float32 resolution); fewer than 2 T2-prep durations or 2 echoes with
    data (T2 or T2*/B0 would not be encoded). Warnings: T2-preps never sampled, a stream that ended without
    ``ACQ_LAST_IN_MEASUREMENT`` (``kspace.meta['last_flag_seen']`` False) or with dropped lines.
    """
    warnings: list[str] = []
    if kspace.nlines == 0:
        raise ReconstructionError("the measurement has no imaging lines: nothing to reconstruct")
    peaks = _line_peaks(kspace.data)
    bad = np.flatnonzero(~np.isfinite(peaks))
    if bad.size:
        raise ReconstructionError(f"k-space has NaN/Inf samples in {bad.size} lines, first {_line(kspace, bad[0])}")
    top = int(np.argmax(peaks))
    if peaks[top] == 0:
        raise ReconstructionError("k-space is all zero (every sample of every coil and echo is 0): no signal "
                                  "was received; check the receiver channels and the data scaling")
    ref = float(np.median(peaks[peaks > 0]))
    if peaks[top] > MAX_MAGNITUDE or peaks[top] > OUTLIER_RATIO * ref:
        raise ReconstructionError(
            f"k-space {_line(kspace, top)} has a sample of magnitude {peaks[top]:.3g}, {peaks[top] / ref:.3g} "
            f"times the median line peak {ref:.3g}: corrupt data (remove or repair that acquisition)")
    seq = kspace.seq
    present = np.unique(kspace.tau[peaks > 0])
    missing = sorted(set(range(seq.ntau)) - set(present.tolist()))
    if len(present) < 2:
        raise ReconstructionError(
            f"only {len(present)} of {seq.ntau} T2-prep durations have data (set index {present.tolist()}): T2 "
            "is not encoded; an aborted scan needs at least 2 T2-preps")
    if missing:
        warnings.append(f"T2-prep set {missing} (tau {[seq.tau_ms[i] for i in missing]} ms) never sampled: "
                        f"maps from the {len(present)} other T2-preps")
    if seq.nte < 2:
        raise ReconstructionError(f"{seq.nte} echo: T2* and B0 need at least 2 echo times")
    meta = kspace.meta
    if meta.get("last_flag_seen") is False:
        warnings.append(f"scan incomplete: the stream ended without ACQ_LAST_IN_MEASUREMENT after "
                        f"{meta.get('n_acquisitions', '?')} acquisitions; maps from the {kspace.nlines} lines that "
                        f"arrived (R = {kspace.acceleration:.2f})")
    if meta.get("dropped_lines"):
        warnings.append(f"{meta['dropped_lines']} lines with missing echoes were dropped")
    return warnings


def _check_grid(p: _Problems, g: HashGridConfig, name: str) -> None:
    p.require(isinstance(g.n_levels, int) and g.n_levels >= 1, f"{name}.n_levels", g.n_levels, "must be >= 1")
    p.require(g.n_features_per_level >= 1, f"{name}.n_features_per_level", g.n_features_per_level,
              "must be >= 1")
    p.require(1 <= g.log2_hashmap_size <= 30, f"{name}.log2_hashmap_size", g.log2_hashmap_size,
              "must be in 1..30")
    p.require(g.base_resolution >= 1, f"{name}.base_resolution", g.base_resolution, "must be >= 1")
    p.require(_finite_number(g.per_level_scale) and g.per_level_scale >= 1.0, f"{name}.per_level_scale",
              g.per_level_scale, "must be >= 1")
    if g.implementation == "tcnn":
        from qmapinr.recon.inr.hashgrid import tcnn_available

        ok, why = tcnn_available()
        p.require(ok, f"{name}.implementation", g.implementation, f"cannot run ({why}); use 'auto' or 'torch'")


def wnnm_active(cfg: SummitConfig) -> bool:
    """True if WNNM is switched on during the fit (a positive lambda and a start epoch before the last)."""
    return (cfg.lambda_a > 0 or cfg.lambda_t1_phase > 0 or cfg.lambda_t2 > 0) and cfg.wnnm_start_epoch < cfg.epochs


def validate_summit(cfg: SummitConfig, kspace: KSpace6D) -> tuple[SummitConfig, list[str]]:
    """:class:`SummitConfig` against the data: ranges, option values, sizes; see the module docstring."""
    check_literals(cfg)
    p = _Problems("summit")
    nx, ny, nz = kspace.geometry.matrix
    seq = kspace.seq
    ints = {"epochs": 0, "lr_step": 1, "batch_x": 1, "hidden": 1, "layers": 1, "rank": 1, "virtual_coils": 0,
            "coil_refine_iters": 0, "wnnm_start_epoch": 0, "wnnm_patch": 1, "wnnm_window": 1, "wnnm_similar": 1,
            "coarse_to_fine_epochs": 0, "t2star_hold_epochs": 0, "threads": 0, "min_virtual_coils": 1,
            "compress_above_coils": 0,
            "schedule_steps_per_epoch": 0}
    for name, low in ints.items():
        v = getattr(cfg, name)
        p.require(isinstance(v, int) and not isinstance(v, bool) and v >= low, name, v, f"must be an integer >= {low}")
    p.require(_finite_number(cfg.lr) and cfg.lr > 0, "lr", cfg.lr, "must be > 0 (e.g. 1e-2)")
    p.require(_finite_number(cfg.lr_gamma) and 0 < cfg.lr_gamma <= 1, "lr_gamma", cfg.lr_gamma, "must be in (0, 1]")
    p.require(_finite_number(cfg.coil_lr_scale) and cfg.coil_lr_scale >= 0, "coil_lr_scale", cfg.coil_lr_scale,
              "must be >= 0")
    for name in ("lambda_a", "lambda_t1_phase", "lambda_t2"):
        v = getattr(cfg, name)
        p.require(_finite_number(v) and v >= 0, name, v, "must be >= 0 (0 switches that WNNM group off)")
    p.require(_finite_number(cfg.coil_energy) and 0 <= cfg.coil_energy <= 1, "coil_energy", cfg.coil_energy,
              "must be in [0, 1] (a fraction of the data energy; 0 = no compression by energy)")
    p.require(_finite_number(cfg.plateau_rel) and 0 <= cfg.plateau_rel < 1, "plateau_rel", cfg.plateau_rel,
              "must be in [0, 1) (0 = off)")
    p.require(cfg.wnnm_window % 2 == 1, "wnnm_window", cfg.wnnm_window, "must be odd (e.g. 7)")
    p.require(cfg.wnnm_similar <= cfg.wnnm_window ** 2, "wnnm_similar", cfg.wnnm_similar,
              f"must be <= wnnm_window^2 = {cfg.wnnm_window ** 2}")
    if cfg.forward == "structured":
        p.require(cfg.rank <= seq.nseg, "rank", cfg.rank,
                  f"must be <= the {seq.nseg} readouts per segment (the q^n basis has at most that many vectors)")
    if cfg.device == "cuda":
        p.require(torch.cuda.is_available(), "device", cfg.device, "but CUDA is not available; use 'auto' or 'cpu'")
    _check_grid(p, cfg.map_grid, "map_grid")
    _check_grid(p, cfg.coil_grid, "coil_grid")
    p.raise_if_any()
    warnings: list[str] = []
    changes: dict[str, Any] = {}
    if cfg.batch_x > nx:
        changes["batch_x"] = nx
    patch = min(cfg.wnnm_patch, nz, ny)
    if wnnm_active(cfg) and patch < cfg.wnnm_patch:
        changes["wnnm_patch"] = patch
        warnings.append(f"wnnm_patch {cfg.wnnm_patch} exceeds the (z, y) slice {nz}x{ny}: WNNM uses {patch}x{patch} "
                        f"patches (set wnnm_patch<={patch} to silence this)")
    if cfg.virtual_coils > kspace.ncoils:
        warnings.append(f"virtual_coils {cfg.virtual_coils} > {kspace.ncoils} coils: no coil compression")
    for w in warnings:
        log.warning("summit: %s", w)
    return (dataclasses.replace(cfg, **changes) if changes else cfg), warnings


def _check_dictionary_grid(p: _Problems, cfg: Any) -> None:
    for t in ("t1", "t2"):
        lo, hi, n = getattr(cfg, f"{t}_min_ms"), getattr(cfg, f"{t}_max_ms"), getattr(cfg, f"n_{t}")
        p.require(_finite_number(lo) and lo > 0, f"{t}_min_ms", lo, "must be > 0 ms")
        p.require(_finite_number(hi) and hi > lo, f"{t}_max_ms", hi, f"must be > {t}_min_ms")
        p.require(n >= 2, f"n_{t}", n, "must be >= 2")
    p.require(_finite_number(cfg.mask_threshold) and 0 <= cfg.mask_threshold < 1, "mask_threshold",
              cfg.mask_threshold, "must be in [0, 1)")


def validate_generic(cfg: Any, kspace: KSpace6D, owner: str) -> tuple[Any, list[str]]:
    """Baseline-type configs (subspace, BART): option values, rank, iteration counts and dictionary grids."""
    check_literals(cfg)
    p = _Problems(owner)
    seq = kspace.seq
    p.require(1 <= cfg.rank <= seq.ntau * seq.nseg, "rank", cfg.rank,
              f"must be in 1..{seq.ntau * seq.nseg} (tau x n samples)")
    for name in ("admm_iters", "virtual_coils", "coil_refine_iters", "threads"):
        if hasattr(cfg, name):
            p.require(getattr(cfg, name) >= 0, name, getattr(cfg, name), "must be >= 0")
    for name in ("cg_iters", "init_cg_iters", "iters", "calib", "kernel", "coil_width_z", "coil_width_y",
                 "coil_width_x", "batch_bytes"):
        if hasattr(cfg, name):
            p.require(getattr(cfg, name) >= 1, name, getattr(cfg, name), "must be >= 1")
    for name in ("lam_tv", "crop"):
        if hasattr(cfg, name):
            v = getattr(cfg, name)
            p.require(_finite_number(v) and v >= 0, name, v, "must be >= 0")
    if hasattr(cfg, "rho"):
        p.require(_finite_number(cfg.rho) and cfg.rho > 0, "rho", cfg.rho, "must be > 0")
    _check_dictionary_grid(p, cfg)
    p.raise_if_any()
    return cfg, []


def validate(cfg: Any, kspace: KSpace6D) -> tuple[Any, list[str]]:
    """Check the data and ``cfg`` before any work; returns the config to use and the warnings (see module doc).

    Raises
    ------
    ReconstructionError : the data cannot give maps (all zero, corrupt, too few T2-preps or echoes).
    ConfigError : a setting is out of range or impossible for this matrix (all problems in one message).
    """
    warnings = check_kspace(kspace)
    for w in warnings:
        log.warning("%s", w)
    if isinstance(cfg, SummitConfig):
        cfg, more = validate_summit(cfg, kspace)
    else:
        cfg, more = validate_generic(cfg, kspace, type(cfg).__name__.removesuffix("Config").lower())
    return cfg, warnings + more


def check_loss(value: float, epoch: int, what: str = "loss") -> None:
    """Raise :class:`ReconstructionError` if the training loss ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise ReconstructionError(f"non-finite {what} ({value}) at epoch {epoch + 1}: the fit diverged; lower lr "
                                  "or check the data and coil maps for NaN/Inf")


def check_support(mask: torch.Tensor | np.ndarray, kspace: KSpace6D) -> None:
    """Raise :class:`ReconstructionError` if the support mask from the low-resolution image is empty."""
    if bool(np.asarray(mask).any()):
        return
    truncated = " (the stream ended early: aborted scan?)" if kspace.meta.get("last_flag_seen") is False else ""
    raise ReconstructionError(
        f"empty support mask: the low-resolution image from the k-space centre has no voxel above threshold; "
        f"{kspace.nlines} lines, R = {kspace.acceleration:.2f}{truncated}: too few central k-space samples at "
        "distinct (tau, n) to form an initial image")


BOUND_FRACTION = 0.25
"""A relaxation map with more than this fraction of its in-mask voxels at the model's upper bound is flagged."""


def check_maps(maps: QuantMaps, method: str) -> None:
    """Raise :class:`ReconstructionError` unless ``maps`` has a non-empty mask, finite values and some signal.

    A T1/T2/T2* map whose in-mask voxels sit at the upper bound of the INR heads (:data:`DEFAULT_RANGES`, within
    5 %) in more than :data:`BOUND_FRACTION` of the mask is not determined by the data: it is returned, with a
    warning in the log and in ``info['warnings']`` (the meta ``Warning`` of every image), never silently.
    """
    if maps.mask is None or not bool(np.asarray(maps.mask).any()):
        raise ReconstructionError(f"{method}: the output mask is empty (no voxel with signal): no maps to return")
    mask = np.asarray(maps.mask)
    for name, arr in maps.maps.items():
        arr = np.asarray(arr)
        bad = int((~np.isfinite(arr[mask])).sum())
        if bad:
            raise ReconstructionError(f"{method}: map {name} has {bad} non-finite voxels inside the mask")
    amp = maps.maps.get("A")
    if amp is not None and not bool(np.any(np.asarray(amp)[mask] != 0)):
        raise ReconstructionError(f"{method}: the amplitude map is 0 everywhere inside the mask: no signal")
    for name in ("T1", "T2", "T2star"):
        if name not in maps.maps or DEFAULT_RANGES.get(name) is None:
            continue
        hi = DEFAULT_RANGES[name][1]
        frac = float(np.mean(np.asarray(maps.maps[name])[mask] >= 0.95 * hi))
        if frac > BOUND_FRACTION:
            msg = (f"{method}: {name} is at its model bound ({hi:g} ms) in {100 * frac:.0f} % of the mask: "
                   "not determined by these data")
            notes = maps.info.setdefault("warnings", [])
            if msg not in notes:  # check_maps runs in the solver and again in the registry: say it once
                log.warning(msg)
                notes.append(msg)

"""Seeded simulation of an undersampled 3-D T2IR-prepared multi-echo GRE acquisition.

``simulate(cfg)`` builds the phantom, coil maps and sampling pattern, evaluates the signal of
:mod:`qmapinr.recon.physics.signal` per voxel (its ``steady_state_terms``, ``shot_coefficients`` and
``echo_factors``), multiplies by the coil maps and computes only the sampled (ky, kz) lines of the centred
unitary 3-D FFT (:func:`~qmapinr.recon.physics.forward.synthesize_lines`).

Sequence history: by default (``prep_loop_order='shot-outer'``, what a scanner does when it cycles the
T2-prep durations) every shot's pre-preparation magnetisation is the *exact* one of the acquisition as played:
the scan starts at thermal equilibrium, plays ``prep_dummies`` dummy preparations (default: one full cycle of
all tau) and then the acquired shots in their true time order (``Lines.shot``), each starting where the
previous segment ended. Shots whose magnetisation still differs from the periodic steady state (the start-up
transient) get their own FFT. ``prep_loop_order=None`` reproduces the paper's closed form (the former default).

SNR definition: ``SNR = mean |S| / sigma`` where the mean runs over the object mask (``Phantom.mask``) and all
(n, tau, TE) of the noiseless image-domain signal ``S`` (the periodic steady state of the declared loop;
coil-combined: the coil maps have unit root-sum-of-squares, so ``S`` is the object's own signal), and ``sigma``
is the standard deviation of the complex Gaussian noise added to every k-space sample, ``sigma^2 = E|noise|^2``
(real and imaginary parts each ``sigma / sqrt(2)``, independent across coils). The FFT is unitary, so each coil
image carries noise of the same sigma. The noise pre-scan (``KSpace6D.noise``, ``(coils, noise_samples)``) is
drawn with the same sigma.
``snr=None`` means noiseless (and no pre-scan).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from qmapinr.recon.kspace import PREP_LOOP_ORDERS, Geometry, KSpace6D, SequenceParams
from qmapinr.recon.physics.forward import synthesize_lines
from qmapinr.recon.physics.signal import echo_factors, prep_coefficients, shot_coefficients, steady_state_terms
from qmapinr.recon.sim.coils import coil_sensitivities
from qmapinr.recon.sim.phantom import Phantom, brain_phantom, nist_phantom
from qmapinr.recon.sim.sampling import vd_gaussian_lines
from qmapinr.recon.sim.shepp_logan import shepp_logan_phantom

log = logging.getLogger(__name__)

PRESETS: dict[str, dict] = {
    # SUMMIT paper simulation protocol
    "paper-sim": {
        "tau_ms": (25.0, 50.0, 70.0, 90.0),
        "te_ms": (4.5, 11.2, 17.9, 24.6),
        "tr_ms": 30.0,
        "flip_deg": 10.0,
        "nseg": 80,
    },
    # SUMMIT paper phantom acquisition protocol
    "phantom": {
        "tau_ms": (0.0, 30.0, 60.0, 90.0, 120.0),
        "te_ms": (3.7, 9.4, 15.1),
        "tr_ms": 20.0,
        "flip_deg": 4.0,
        "nseg": 128,
    },
    # small and fast, for demos and tests
    "demo": {
        "tau_ms": (0.0, 30.0, 60.0, 90.0),
        "te_ms": (3.7, 9.4, 15.1),
        "tr_ms": 20.0,
        "flip_deg": 8.0,
        "nseg": 32,
    },
}
PHANTOMS = {"brain": brain_phantom, "nist": nist_phantom, "shepp-logan": shepp_logan_phantom}
TRANSIENT_TOL = 1e-7  # |c_shot - c_tau| below which a shot is simulated with the periodic steady state


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated measurement (the same config and seed give the same bits).

    Attributes
    ----------
    shape : (nz, ny, nx) matrix; z is the slab (thick-voxel) direction.
    ncoils : receive coils.
    R : acceleration per tau (lines per tau = round(ny * nz / R)).
    snr : mean object signal / noise sigma (module docstring), None = noiseless.
    seed : master seed (phantom uses it directly; coils, sampling and noise use spawned streams).
    phantom : 'brain' or 'nist'.
    preset : sequence preset, a key of :data:`PRESETS` ('paper-sim', 'phantom', 'demo').
    nseg : readouts per segment, overriding the preset's.
    fov_mm : (x, y, z) field of view; default (220, 220, 4 * nz), i.e. 4 mm slab partitions.
    prep_loop_order : 'shot-outer' (default; exact sequence history, every shot cycles through all tau),
        'tau-outer' (exact history, all shots of one tau before the next) or None (the paper's closed form,
        steady state before every preparation; shots acquired shot-outer). Written to the header.
    recovery_delay_ms : free recovery before each preparation (with a loop order; written to the header).
    prep_dummies : dummy preparations before the first acquired shot (shot-outer) or before every tau block
        (tau-outer); None = one full cycle of all tau (shot-outer) or one per block (tau-outer).
    inversion_efficiency : B of the signal model.
    sigma_frac, calib : sampling density width and fully sampled centre (see :mod:`.sampling`); ``calib=(0, 0)``
        is pure variable-density sampling without a calibration block.
    noise_samples : samples per coil of the noise pre-scan.
    sample_time_us : readout dwell time written to the acquisition headers.
    b0_t : field strength (T).
    """

    shape: tuple[int, int, int] = (8, 32, 32)
    ncoils: int = 4
    R: float = 4.0
    snr: float | None = 30.0
    seed: int = 0
    phantom: str = "brain"
    preset: str = "demo"
    nseg: int | None = None
    fov_mm: tuple[float, float, float] | None = None
    prep_loop_order: str | None = "shot-outer"
    recovery_delay_ms: float = 0.0
    prep_dummies: int | None = None
    inversion_efficiency: float = -1.0
    sigma_frac: float = 0.3
    calib: tuple[int, int] = (3, 3)
    noise_samples: int = 256
    sample_time_us: float = 5.0
    b0_t: float = 3.0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}; known: {sorted(PRESETS)}")
        if self.phantom not in PHANTOMS:
            raise ValueError(f"phantom={self.phantom!r}; known: {sorted(PHANTOMS)}")
        if self.prep_loop_order is not None and self.prep_loop_order not in PREP_LOOP_ORDERS:
            raise ValueError(f"prep_loop_order={self.prep_loop_order!r}; expected None or one of {PREP_LOOP_ORDERS}")
        if len(self.shape) != 3:
            raise ValueError(f"shape={self.shape} must be (nz, ny, nx)")

    @property
    def seq(self) -> SequenceParams:
        p = PRESETS[self.preset]
        return SequenceParams(
            tr_ms=p["tr_ms"],
            te_ms=tuple(p["te_ms"]),
            flip_deg=p["flip_deg"],
            tau_ms=tuple(p["tau_ms"]),
            nseg=int(self.nseg if self.nseg is not None else p["nseg"]),
            inversion_efficiency=self.inversion_efficiency,
            prep_loop_order=self.prep_loop_order,
            recovery_delay_ms=self.recovery_delay_ms if self.prep_loop_order else 0.0,
            prep_dummies=self._dummies(len(p["tau_ms"])) if self.prep_loop_order else 0,
        )

    def _dummies(self, ntau: int) -> int:
        if self.prep_dummies is not None:
            return int(self.prep_dummies)
        return ntau if self.prep_loop_order == "shot-outer" else 1

    @property
    def geometry(self) -> Geometry:
        nz, ny, nx = self.shape
        fov = self.fov_mm if self.fov_mm is not None else (220.0, 220.0, 4.0 * nz)
        return Geometry(matrix=(nx, ny, nz), fov_mm=tuple(float(f) for f in fov))

    @property
    def acquisition_order(self) -> str:
        return self.prep_loop_order or "shot-outer"

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SimulationConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SimulationConfig fields: {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def tiny_fixture_config() -> SimulationConfig:
    """The config of ``tests/data/tiny.h5`` (see tests/data/README.md; closed-form signal, as written)."""
    return SimulationConfig(
        shape=(4, 16, 16), ncoils=2, R=2.0, snr=30.0, seed=1, phantom="brain", preset="demo", nseg=8,
        prep_loop_order=None,
    )


@dataclass
class VoxelFactors:
    """Per-voxel signal pieces over the mask: ``S(te, tau, n) = hs[:, te] (1 - c[:, tau] q^n)``.

    ``index`` int64 ``(nv,)`` flat voxel indices into (nz, ny, nx); ``hs`` complex128 ``(nv, nte)`` = h_TE *
    ss; ``c`` float64 ``(nv, ntau)`` (periodic steady state); ``q`` float64 ``(nv,)``; ``c_shot`` float64
    ``(nv, nshots)`` the exact coefficient of every acquired shot (start-up transient included) or None;
    ``transient`` bool ``(nshots,)``: shots whose ``c_shot`` differs from ``c`` of their tau by more than
    :data:`TRANSIENT_TOL` somewhere.
    """

    index: np.ndarray
    hs: torch.Tensor
    c: torch.Tensor
    q: torch.Tensor
    shape: tuple[int, int, int]
    c_shot: torch.Tensor | None = None
    transient: np.ndarray | None = None

    def values(self, tau_index: int, n: int, shot: int | None = None) -> torch.Tensor:
        """complex128 ``(nv, nte)`` signal of every masked voxel at (tau_index, n) (of acquired ``shot``)."""
        c = self.c[:, tau_index] if shot is None else self.c_shot[:, shot]
        return self.hs * (1.0 - c * self.q**n)[:, None]

    def image(self, tau_index: int, n: int) -> np.ndarray:
        """complex64 ``(nte, nz, ny, nx)`` signal image at (tau_index, n), zero outside the mask."""
        return self.scatter(self.values(tau_index, n))

    def scatter(self, values: torch.Tensor) -> np.ndarray:
        """Masked voxel values ``(nv, nte)`` -> complex64 image ``(nte, nz, ny, nx)``, 0 outside the mask."""
        out = np.zeros((values.shape[1], int(np.prod(self.shape))), dtype=np.complex64)
        out[:, self.index] = values.T.numpy()
        return out.reshape((values.shape[1],) + self.shape)


def voxel_factors(phantom: Phantom, seq: SequenceParams, shot_tau: np.ndarray | None = None) -> VoxelFactors:
    """Signal building blocks of :mod:`qmapinr.recon.physics.signal` over ``phantom.mask``.

    ``shot_tau`` int ``(nshots,)``: tau index of every acquired shot in time order; given, the exact per-shot
    coefficients (sequence history from thermal equilibrium, dummies included) are computed too.
    """
    index = np.flatnonzero(phantom.mask.ravel())

    def get(name: str) -> torch.Tensor:
        return torch.from_numpy(phantom.maps[name].ravel()[index].astype(np.float64))

    t1, t2 = get("T1"), get("T2")
    ss, q = steady_state_terms(t1, seq)
    c = prep_coefficients(t1, t2, seq)
    h = echo_factors(get("A"), get("T2star"), get("Phase0"), get("B0"), seq)
    fac = VoxelFactors(index=index, hs=h * ss[:, None], c=c, q=q, shape=phantom.shape)
    if shot_tau is not None:
        shot_tau = np.asarray(shot_tau, dtype=np.int64)
        fac.c_shot = shot_coefficients(t1, t2, seq, shot_tau)
        dev = (fac.c_shot - c[:, torch.from_numpy(shot_tau)]).abs()
        fac.transient = (dev.amax(0) > TRANSIENT_TOL).numpy() if index.size else np.zeros(shot_tau.size, bool)
    return fac


def simulate(cfg: SimulationConfig) -> tuple[KSpace6D, Phantom]:
    """Simulate one measurement.

    Returns
    -------
    kspace : :class:`KSpace6D`, lines in acquisition order, data complex64 ``(coils, nte, nlines, nx)``,
        noise pre-scan ``(coils, cfg.noise_samples)`` (None if noiseless); ``meta`` holds 'sigma', 'snr',
        'mean_signal', 'shot' (int ``(nlines,)``), 'acquisition_order', 'sample_time_us', 'config' (dict);
        B0 in tesla in ``field_strength_t``.
    phantom : the ground truth, with ``sens`` = the coil maps used.
    """
    seq, geom = cfg.seq, cfg.geometry
    nz, ny, nx = cfg.shape
    s_coil, s_samp, s_noise = np.random.SeedSequence(cfg.seed).spawn(3)
    phantom = PHANTOMS[cfg.phantom](tuple(cfg.shape), seed=cfg.seed, voxel_mm=geom.voxel_mm, b0_t=cfg.b0_t)
    sens = coil_sensitivities(
        cfg.ncoils, tuple(cfg.shape), np.random.default_rng(s_coil), voxel_mm=geom.voxel_mm
    )
    phantom.sens = sens
    lines = vd_gaussian_lines(
        ny,
        nz,
        seq.ntau,
        seq.nseg,
        cfg.R,
        np.random.default_rng(s_samp),
        sigma_frac=cfg.sigma_frac,
        calib=cfg.calib,
        order=cfg.acquisition_order,
    )
    shot_tau = np.zeros(int(lines.shot.max()) + 1 if lines.nlines else 0, dtype=np.int64)
    shot_tau[lines.shot] = lines.tau
    fac = voxel_factors(phantom, seq, shot_tau)
    # Only the sampled lines: 1 + K FFTs per signal class (a tau's periodic signal, or one start-up-transient
    # shot's own), TE and coil, through the low-rank q^n identity (exact to 1e-6; physics.forward).
    tr_mask = np.zeros(0, dtype=bool) if fac.transient is None else np.asarray(fac.transient)
    transient = np.flatnonzero(tr_mask)
    is_tr = tr_mask[lines.shot] if tr_mask.size else np.zeros(lines.nlines, dtype=bool)
    group = np.asarray(lines.tau, dtype=np.int64).copy()
    group[is_tr] = seq.ntau + np.searchsorted(transient, lines.shot[is_tr])
    c_all = fac.c if fac.c_shot is None or transient.size == 0 else torch.cat(
        [fac.c, fac.c_shot[:, torch.from_numpy(transient)]], 1)
    data = synthesize_lines(fac.hs, torch.ones_like(c_all), -c_all, fac.q, fac.index, tuple(cfg.shape), sens,
                            lines.ky, lines.kz, lines.seg, group, seq.nseg)
    abs_h = fac.hs.abs().sum(1)  # |S| = |hs_te| |1 - c q^n| (real recovery factor), summed over TE
    abs_sum = sum(float((abs_h[:, None] * (1.0 - fac.c * fac.q[:, None] ** n).abs()).sum()) for n in range(seq.nseg))
    nvals = fac.index.size * seq.nte * seq.ntau * seq.nseg
    mean_signal = abs_sum / max(nvals, 1)
    noise = None
    sigma = 0.0
    if cfg.snr is not None:
        sigma = mean_signal / cfg.snr
        rng = np.random.default_rng(s_noise)
        for c in range(cfg.ncoils):  # per coil, to bound the float64 temporaries
            data[c] += _complex_noise(rng, data.shape[1:], sigma)
        noise = _complex_noise(rng, (cfg.ncoils, cfg.noise_samples), sigma)
    log.info(
        "simulated %d lines x %d echoes x %d coils, R=%.2f, mean |S|=%.4g, sigma=%.4g",
        lines.nlines,
        seq.nte,
        cfg.ncoils,
        lines.acceleration,
        mean_signal,
        sigma,
    )
    kspace = KSpace6D(
        data=data,
        ky=lines.ky,
        kz=lines.kz,
        seg=lines.seg,
        tau=lines.tau,
        seq=seq,
        geometry=geom,
        noise=noise,
        field_strength_t=cfg.b0_t,
        acq_order=np.argsort(np.lexsort((lines.seg, lines.shot)), kind="stable"),
        meta={
            "sigma": sigma,
            "snr": cfg.snr,
            "mean_signal": mean_signal,
            "shot": lines.shot,
            "acquisition_order": lines.order,
            "transient_shots": int(fac.transient.sum()),
            "sample_time_us": cfg.sample_time_us,
            "config": cfg.to_dict(),
        },
    )
    phantom.info["config"] = cfg.to_dict()
    return kspace, phantom


def _complex_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """complex64 Gaussian noise with ``E|n|^2 = sigma^2``."""
    scale = sigma / np.sqrt(2.0)
    return (rng.normal(0.0, scale, size=shape) + 1j * rng.normal(0.0, scale, size=shape)).astype(np.complex64)

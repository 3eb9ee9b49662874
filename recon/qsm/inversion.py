"""Dipole inversion (local field -> susceptibility) and the field-map-to-QSM pipeline.

The INR solver fits an off-resonance map ``B0`` (Hz) directly from ``phase(TE) = Phase0 + 2 pi B0 TE``, so no
phase unwrapping or echo combination is needed here:

    Hz --(/ gamma_bar B0)--> ppm --(background removal)--> local field --(dipole inversion)--> chi (ppm)

Inversions (all volumes ``(nz, ny, nx)``, ``voxel_mm = (x, y, z)``, uncentred NumPy FFT order):

- :func:`tkd` -- truncated k-space division (Shmueli et al., MRM 2009;62:1510): ``1/D`` with ``|D|``
  clipped to ``threshold`` (0.19 typical; Wharton et al. MRM 2010). Fast; under-estimates chi (by ~15-20 %
  on the phantom of :mod:`qmapinr.recon.qsm.phantom`).
- :func:`l2grad` -- closed-form Tikhonov with a gradient penalty (Bilgic et al., JMRI 2014;40:181):
  ``chi = IFFT( D F(f) / (D^2 + lam |E|^2) )``, ``|E|^2`` the Fourier symbol of the forward-difference
  Laplacian (periodic), in physical units scaled by the smallest voxel size.
- :func:`l2grad_cg` -- the same cost with the data term restricted to the mask (and optionally weighted),
  ``|| W M (D chi - f) ||^2 + lam || grad chi ||^2``, solved by conjugate gradients. Slower, but it does not
  treat the (unknown) field outside the mask as zero and accepts a data weight. With the same ``lam`` it
  smooths more than the closed form (fewer data equations): object slope 0.65-0.69 vs 0.74-0.79 on the
  phantom.

Reference: the returned susceptibility has zero mean over the returned (eroded) mask ("whole-brain mean"
reference); values outside that mask are zero.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft

from qmapinr.recon.optim.cg import conjugate_gradient
from qmapinr.recon.physics.dipole import convolve_real, dipole_kernel, half_spectrum
from qmapinr.recon.qsm.background import pdf, vsharp

__all__ = [
    "GAMMA_BAR_MHZ_PER_T",
    "DEFAULT_LAM",
    "hz_to_ppm",
    "gradient_symbol",
    "tkd",
    "l2grad",
    "l2grad_cg",
    "qsm_from_field",
]

logger = logging.getLogger(__name__)

#: Proton gyromagnetic ratio / 2 pi in MHz/T (CODATA 2018).
GAMMA_BAR_MHZ_PER_T = 42.577478518

#: Default regularisation weights (dimensionless: fields and chi both in ppm, gradients per smallest voxel).
#: Measured on :func:`qmapinr.recon.qsm.phantom.make_qsm_phantom` (64x64x16, 2x2x4 mm, 1 Hz noise) with
#: the closed form, seeds 0 / 1: lam 0.003 -> object-mean slope 0.91 / 0.85, voxel RMSE 0.027 ppm;
#: 0.01 -> 0.79 / 0.74, 0.020 ppm; 0.03 -> 0.65 / 0.61, 0.016 ppm. No automatic choice (an L-curve showed no
#: usable corner on that phantom).
DEFAULT_LAM = {"l2grad": 0.01, "l2grad_cg": 0.01}


def hz_to_ppm(b0_hz: np.ndarray, b0_t: float = 3.0) -> np.ndarray:
    """Off-resonance (Hz) -> relative field (ppm): ``f_ppm = b0_hz / (gamma_bar [MHz/T] * B0 [T])``.

    The sign follows the project's phase model ``phase = Phase0 + 2 pi B0 TE``: a positive frequency is a
    higher field. Data from a scanner whose phase turns the other way must be negated before calling.
    """
    if b0_t <= 0:
        raise ValueError(f"b0_t must be positive (tesla), got {b0_t}")
    return np.asarray(b0_hz, dtype=np.float64) / (GAMMA_BAR_MHZ_PER_T * b0_t)


def gradient_symbol(shape: Sequence[int], voxel_mm: Sequence[float]) -> np.ndarray:
    """``|E(k)|^2 = sum_j |1 - exp(2 pi i k_j / N_j)|^2 (v_min / v_j)^2``, float64 ``(nz, ny, nx)``.

    Uncentred order. This is the Fourier symbol of ``grad^T grad`` for periodic forward differences in
    physical units, scaled so that it equals Bilgic's voxel-unit symbol for isotropic voxels.
    """
    vox = np.asarray(voxel_mm, dtype=np.float64).reshape(3)
    vmin = vox.min()
    out = np.zeros(tuple(int(n) for n in shape), dtype=np.float64)
    for axis, v in zip((2, 1, 0), vox, strict=True):  # x is the last array axis, z the first
        n = out.shape[axis]
        e2 = (2.0 * np.sin(np.pi * np.arange(n) / n)) ** 2 * (vmin / v) ** 2
        sh = [1, 1, 1]
        sh[axis] = n
        out = out + e2.reshape(sh)
    return out


def _check(local_ppm: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(local_ppm, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"field and mask must both be (nz, ny, nx); got {f.shape} and {m.shape}")
    return np.where(m, f, 0.0), m


def tkd(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_mm: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    threshold: float = 0.19,
) -> np.ndarray:
    """Truncated k-space division; float32 ``(nz, ny, nx)`` chi (ppm), zero outside ``mask``, unreferenced.

    ``1/D`` is replaced by ``sign(D)/threshold`` where ``|D| < threshold`` (and 0 at DC).
    """
    f, m = _check(local_ppm, mask)
    d = half_spectrum(dipole_kernel(f.shape, voxel_mm, b0_dir).astype(np.float64))
    d_clip = np.where(np.abs(d) < threshold, np.sign(d) * threshold, d)
    inv = np.zeros_like(d)
    nz = d_clip != 0
    inv[nz] = 1.0 / d_clip[nz]
    chi = convolve_real(f, inv)
    return np.where(m, chi, 0.0).astype(np.float32)


def l2grad(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_mm: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    lam: float = DEFAULT_LAM["l2grad"],
) -> np.ndarray:
    """Closed-form gradient-regularised (Tikhonov) inversion; float32 chi (ppm), zero outside ``mask``."""
    f, m = _check(local_ppm, mask)
    d = half_spectrum(dipole_kernel(f.shape, voxel_mm, b0_dir).astype(np.float64))
    e2 = half_spectrum(gradient_symbol(f.shape, voxel_mm))
    denom = d**2 + lam * e2
    denom[0, 0, 0] = np.inf  # DC undetermined (D(0) = E(0) = 0): set the mean to zero, referenced later
    chi = convolve_real(f, d / denom)
    return np.where(m, chi, 0.0).astype(np.float32)


def l2grad_cg(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_mm: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    lam: float = DEFAULT_LAM["l2grad_cg"],
    weight: np.ndarray | None = None,
    n_iter: int = 60,
    tol: float = 1e-3,
) -> np.ndarray:
    """Masked, weighted L2-gradient inversion by CG: ``min || W M (D chi - f) ||^2 + lam || grad chi ||^2``.

    Warm-started from :func:`l2grad`. ``weight`` (non-negative ``(nz, ny, nx)``, e.g. magnitude or 1/sigma
    of the field) defaults to 1. Returns float32 chi (ppm), zero outside ``mask``, not referenced.
    """
    f, m = _check(local_ppm, mask)
    d = half_spectrum(dipole_kernel(f.shape, voxel_mm, b0_dir).astype(np.float64))
    e2 = half_spectrum(gradient_symbol(f.shape, voxel_mm))
    w2 = m.astype(np.float64) if weight is None else m * np.asarray(weight, dtype=np.float64) ** 2
    shape = f.shape
    # tiny identity term fixes the free constant (D(0) = E(0) = 0 would leave the mean undetermined)
    eps = 1e-6 * lam

    def normal(x: np.ndarray) -> np.ndarray:
        xk = sfft.rfftn(x)
        u = w2 * sfft.irfftn(d * xk, s=shape)
        return sfft.irfftn(d * sfft.rfftn(u) + (lam * e2 + eps) * xk, s=shape)

    rhs = convolve_real(w2 * f, d)
    x0 = l2grad(f, m, voxel_mm, b0_dir, lam=lam).astype(np.float64)
    x, it = conjugate_gradient(normal, rhs, x0=x0, n_iter=n_iter, tol=tol)
    logger.debug("l2grad_cg: %d CG iterations", it)
    return np.where(m, x.reshape(shape), 0.0).astype(np.float32)


def qsm_from_field(
    b0_hz: np.ndarray,
    mask: np.ndarray,
    voxel_mm: Sequence[float],
    b0_t: float = 3.0,
    method: str = "l2grad",
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    background: str = "vsharp",
    radii_mm: Sequence[float] | None = None,
    vsharp_threshold: float = 0.05,
    tkd_threshold: float = 0.19,
    lam: float | None = None,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Susceptibility map (ppm) from an off-resonance map (Hz).

    Parameters
    ----------
    b0_hz : float ``(nz, ny, nx)`` off-resonance in Hz (e.g. the INR's ``B0`` map); values outside ``mask``
        are ignored (they may be anything finite or not).
    mask : bool ``(nz, ny, nx)`` brain / object mask.
    voxel_mm : (x, y, z) voxel size in mm (e.g. ``Geometry.voxel_mm``).
    b0_t : main field in tesla (``f_ppm = b0_hz / (42.577478518 MHz/T * b0_t)``).
    method : ``'l2grad'`` (closed form, default), ``'l2grad_cg'`` (masked iterative) or ``'tkd'``.
    b0_dir : (bx, by, bz) B0 direction in the image frame
        (see :func:`~qmapinr.recon.physics.dipole.b0_dir_from_geometry`).
    background : ``'vsharp'`` (default; erodes the mask) or ``'pdf'`` (keeps the mask).
    radii_mm, vsharp_threshold : V-SHARP radii and deconvolution truncation
        (default radii: :func:`~qmapinr.recon.qsm.background.default_radii_mm`).
    tkd_threshold : TKD truncation (method ``'tkd'``).
    lam : gradient regularisation weight for the L2 methods (default ``DEFAULT_LAM[method]``).
    weight : optional data weight for ``'l2grad_cg'`` and ``'pdf'`` (e.g. magnitude).

    Returns
    -------
    chi_ppm : float32 ``(nz, ny, nx)`` susceptibility in ppm, referenced to zero mean over ``eroded_mask``,
        zero outside it.
    eroded_mask : bool ``(nz, ny, nx)``, the mask on which chi is defined (V-SHARP's eroded mask for
        ``background='vsharp'``, ``mask`` itself for ``'pdf'``).
    """
    m = np.asarray(mask).astype(bool)
    f_ppm = np.where(m, hz_to_ppm(np.where(m, b0_hz, 0.0), b0_t), 0.0)
    if background == "vsharp":
        local, eroded = vsharp(f_ppm, m, voxel_mm, radii_mm=radii_mm, threshold=vsharp_threshold)
    elif background == "pdf":
        local, eroded = pdf(f_ppm, m, voxel_mm, b0_dir, weight=weight)
    else:
        raise ValueError(f"unknown background method {background!r}; use 'vsharp' or 'pdf'")
    if method == "tkd":
        chi = tkd(local, eroded, voxel_mm, b0_dir, threshold=tkd_threshold)
    elif method == "l2grad":
        chi = l2grad(local, eroded, voxel_mm, b0_dir, lam=DEFAULT_LAM["l2grad"] if lam is None else lam)
    elif method == "l2grad_cg":
        chi = l2grad_cg(local, eroded, voxel_mm, b0_dir, lam=DEFAULT_LAM["l2grad_cg"] if lam is None else lam,
                        weight=weight)
    else:
        raise ValueError(f"unknown inversion method {method!r}; use 'l2grad', 'l2grad_cg' or 'tkd'")
    chi = chi.astype(np.float64)
    chi[eroded] -= chi[eroded].mean()
    chi[~eroded] = 0.0
    logger.debug(
        "QSM (%s + %s): %d voxels, chi range [%.3f, %.3f] ppm",
        background, method, int(eroded.sum()), float(chi[eroded].min()), float(chi[eroded].max()),
    )
    return chi.astype(np.float32), eroded

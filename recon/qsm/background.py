"""Background field removal inside a brain mask: V-SHARP and PDF.

The total field inside the mask is the sum of the *local* field (sources inside the mask) and a
*background* field (sources outside: air/tissue interfaces, shim residuals, the scanner's frequency offset).
The background is harmonic inside the mask, which both methods exploit.

- :func:`vsharp` -- variable-radius SHARP (Schweser et al., NeuroImage 2011;54:2789; Li et al.,
  NeuroImage 2011;55:1645; Wu et al., MRM 2012;67:137). Spherical-mean-value (SMV) high-pass
  ``(delta - s_r) * f`` at every voxel with the largest radius whose sphere lies inside the mask, then one
  deconvolution by the largest kernel, truncated where ``|1 - S_rmax(k)| < threshold``. Result is defined on
  an *eroded* mask.
- :func:`pdf` -- projection onto dipole fields (Liu et al., NMR Biomed 2011;24:1129): fit the field inside
  the mask with dipoles placed outside it (CG on the normal equations); the remainder is the local field.
  No erosion.

All volumes are ``(nz, ny, nx)``; ``voxel_mm`` is ``(x, y, z)``; the kernels use NumPy's uncentred FFT order.
Fields can be in any linear unit (ppm or Hz); the output has the input's unit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft
from scipy.signal import fftconvolve

from qmapinr.recon.optim.cg import conjugate_gradient
from qmapinr.recon.physics.dipole import convolve_real, dipole_kernel, half_spectrum

__all__ = ["sphere_footprint", "smv_kernel", "erode_sphere", "default_radii_mm", "vsharp", "pdf"]

logger = logging.getLogger(__name__)


def _prepare(field: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(field, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"field and mask must both be (nz, ny, nx); got {f.shape} and {m.shape}")
    if not m.any():
        raise ValueError("mask is empty")
    if not np.all(np.isfinite(f[m])):
        raise ValueError("field has non-finite values inside the mask")
    return np.where(m, f, 0.0), m


def sphere_footprint(voxel_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """Boolean ``(2rz+1, 2ry+1, 2rx+1)`` footprint of voxels whose centres lie within ``radius_mm``.

    The centre voxel is always included; with anisotropic voxels the footprint is an ellipsoid in voxel units.
    """
    vox = np.asarray(voxel_mm, dtype=np.float64).reshape(3)
    half = np.floor(radius_mm / vox + 1e-9).astype(int)  # (x, y, z) half-widths in voxels
    z, y, x = np.meshgrid(
        np.arange(-half[2], half[2] + 1) * vox[2],
        np.arange(-half[1], half[1] + 1) * vox[1],
        np.arange(-half[0], half[0] + 1) * vox[0],
        indexing="ij",
    )
    return (x**2 + y**2 + z**2) <= radius_mm**2 * (1.0 + 1e-9)


def smv_kernel(shape: Sequence[int], voxel_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """k-space of the normalised spherical-mean kernel ``s_r`` (real float64, uncentred, ``S(0) = 1``)."""
    fp = sphere_footprint(voxel_mm, radius_mm)
    if any(s > n for s, n in zip(fp.shape, shape, strict=True)):
        raise ValueError(f"radius {radius_mm} mm: sphere {fp.shape} larger than the grid {tuple(shape)}")
    img = np.zeros(tuple(shape), dtype=np.float64)
    img[: fp.shape[0], : fp.shape[1], : fp.shape[2]] = fp / fp.sum()
    img = np.roll(img, shift=[-(s // 2) for s in fp.shape], axis=(0, 1, 2))  # centre at voxel (0, 0, 0)
    return np.real(np.fft.fftn(img))


def erode_sphere(mask: np.ndarray, voxel_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """Voxels of ``mask`` whose whole sphere (same footprint as :func:`smv_kernel`) lies inside ``mask``.

    Voxels closer than the radius to the grid border are removed (the grid is not treated as periodic).
    """
    fp = sphere_footprint(voxel_mm, radius_mm)
    m = np.asarray(mask).astype(np.float64)
    count = fftconvolve(m, fp.astype(np.float64), mode="same")
    return count > fp.sum() - 0.5


def default_radii_mm(voxel_mm: Sequence[float]) -> tuple[float, ...]:
    """Default V-SHARP radii, largest first: ``max(9 mm, 2 vmax)`` down to ``vmax`` in steps of ``vmax``.

    ``vmax`` is the largest voxel dimension, so the smallest sphere still reaches the neighbours along every
    axis (e.g. 1 mm iso -> 9, 8, ..., 1 mm; 2 mm iso -> 9, 7, 5, 3, 2 mm; 1x1x4 mm -> 9, 5, 4 mm).
    """
    vmax = float(np.max(np.asarray(voxel_mm, dtype=np.float64)))
    rmax = max(9.0, 2.0 * vmax)
    radii = list(np.arange(rmax, vmax - 1e-6, -vmax))
    if radii[-1] > vmax + 1e-6:
        radii.append(vmax)
    return tuple(float(r) for r in radii)


def vsharp(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_mm: Sequence[float],
    radii_mm: Sequence[float] | None = None,
    threshold: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP background field removal.

    Parameters
    ----------
    field : float ``(nz, ny, nx)`` total field (ppm or Hz); values outside ``mask`` are ignored.
    mask : bool ``(nz, ny, nx)`` brain (region of interest) mask.
    voxel_mm : (x, y, z) voxel size in mm.
    radii_mm : SMV radii in mm (sorted largest first here); default :func:`default_radii_mm`.
    threshold : truncation of the deconvolution: k-space points with ``|1 - S_rmax(k)| < threshold`` are
        set to zero (0.05 as in Wu et al. 2012 / Li et al. 2011). Larger values remove more low-frequency
        content of the local field.

    Returns
    -------
    local : float32 ``(nz, ny, nx)`` local field in the input's unit, zero outside ``eroded``.
    eroded : bool ``(nz, ny, nx)``, the mask eroded by the *smallest* radius (voxels whose smallest sphere
        lies inside ``mask``; voxels closer than ``min(radii_mm)`` to the mask boundary or the grid border are
        lost).
    """
    f, m = _prepare(field, mask)
    radii = sorted((float(r) for r in (radii_mm if radii_mm is not None else default_radii_mm(voxel_mm))),
                   reverse=True)
    if not radii or radii[-1] <= 0:
        raise ValueError(f"radii_mm must be positive, got {radii_mm}")
    spec = sfft.rfftn(f)
    highpass = np.zeros_like(f)
    covered = np.zeros_like(m)
    s_max = None
    for r in radii:
        s_r = half_spectrum(smv_kernel(f.shape, voxel_mm, r))
        if s_max is None:
            s_max = s_r
        m_r = erode_sphere(m, voxel_mm, r)
        new = m_r & ~covered
        if new.any():
            hp_r = sfft.irfftn((1.0 - s_r) * spec, s=f.shape)
            highpass[new] = hp_r[new]
        covered |= m_r
    if not covered.any():
        raise ValueError(f"mask vanishes after erosion by {radii[-1]} mm; use smaller radii or a larger mask")
    h = 1.0 - s_max
    keep = np.abs(h) >= threshold
    inv = np.zeros_like(h)
    inv[keep] = 1.0 / h[keep]
    local = convolve_real(highpass, inv)
    local[~covered] = 0.0
    logger.debug("V-SHARP radii %s mm: %d of %d mask voxels kept", radii, int(covered.sum()), int(m.sum()))
    return local.astype(np.float32), covered


def pdf(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_mm: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    weight: np.ndarray | None = None,
    n_iter: int = 30,
    tol: float = 1e-4,
    pad: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Projection onto dipole fields (PDF).

    Solves ``min_x || W M (f - D P x) ||^2`` with ``x`` a susceptibility distribution supported outside the
    mask (``P`` = zero inside the mask) by conjugate gradients on the normal equations; ``D P x`` is the
    background field and ``local = M (f - D P x)``. Because ``D(0) = 0`` a constant offset is not a dipole
    field: the mean of the input inside the mask is removed first (the local field is defined up to a constant
    anyway).

    Parameters
    ----------
    field, mask, voxel_mm, b0_dir : as in :func:`vsharp` / :func:`qmapinr.recon.physics.dipole.dipole_kernel`.
    weight : optional non-negative ``(nz, ny, nx)`` data weight (e.g. magnitude / noise sigma); default 1.
    n_iter, tol : CG iteration limit and relative residual tolerance.
    pad : zero-padding in voxels added on every side, so that background sources can lie beyond the field
        of view (costs time; 0 by default).

    Returns
    -------
    local : float32 ``(nz, ny, nx)`` local field, zero outside ``mask``.
    mask : bool copy of the input mask (PDF does not erode).
    """
    f, m = _prepare(field, mask)
    f = np.where(m, f - f[m].mean(), 0.0)
    w2 = np.ones_like(f) if weight is None else np.asarray(weight, dtype=np.float64) ** 2
    widths = [(pad, pad)] * 3
    fp, mp, w2p = np.pad(f, widths), np.pad(m, widths), np.pad(w2 * m, widths)
    d = half_spectrum(dipole_kernel(fp.shape, voxel_mm, b0_dir).astype(np.float64))
    outside = (~mp).astype(np.float64)

    def conv(x: np.ndarray) -> np.ndarray:
        return convolve_real(x, d)

    def normal(x: np.ndarray) -> np.ndarray:
        return outside * conv(w2p * conv(outside * x))  # D is real and even, so D^T = D

    x, it = conjugate_gradient(normal, outside * conv(w2p * fp), n_iter=n_iter, tol=tol)
    logger.debug("PDF: %d CG iterations", it)
    local = np.where(mp, fp - conv(outside * x), 0.0)
    crop = tuple(slice(pad, pad + n) for n in f.shape)
    local = local[crop]
    return local.astype(np.float32), m.copy()

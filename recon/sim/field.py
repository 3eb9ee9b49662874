"""Off-resonance from susceptibility (k-space dipole model) and smooth background field / phase terms.

Arrays are ``(nz, ny, nx)``; voxel sizes and directions are given in (x, y, z) order, as in
:class:`qmapinr.recon.kspace.Geometry`.
"""

from __future__ import annotations

import numpy as np

from qmapinr.recon.physics.dipole import dipole_kernel  # one kernel for simulation and QSM (same conventions)

GAMMA_BAR_MHZ_PER_T = 42.577478518
"""Proton gyromagnetic ratio / (2 pi), MHz/T."""


def dipole_field_hz(
    chi_ppm: np.ndarray,
    voxel_mm: tuple[float, float, float],
    b0_t: float = 3.0,
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0),
    pad_factor: int = 2,
) -> np.ndarray:
    """Off-resonance (Hz) induced by a susceptibility distribution.

    ``df = gamma_bar * B0 * IFFT[D * FFT[chi * 1e-6]]`` with the Lorentz-corrected kernel of
    :func:`qmapinr.recon.physics.dipole.dipole_kernel`; the volume is zero-padded to ``pad_factor`` times its size on
    every axis (centred) to limit wrap-around. A paramagnetic (chi > 0) sphere gives a positive field beyond
    its poles (along B0), a negative field at its equator and zero inside.

    Parameters
    ----------
    chi_ppm : float ``(nz, ny, nx)`` susceptibility in ppm (SI), relative to the surroundings.
    voxel_mm : (x, y, z) voxel size in mm.
    b0_t : field strength in T.
    b0_dir : (x, y, z) direction of B0.
    pad_factor : zero-padding factor per axis (>= 1).

    Returns
    -------
    float32 ``(nz, ny, nx)`` off-resonance in Hz.
    """
    chi = np.asarray(chi_ppm, dtype=np.float64)
    if chi.ndim != 3:
        raise ValueError(f"chi has shape {chi.shape}, expected (nz, ny, nx)")
    shape = chi.shape
    padded = tuple(int(n * pad_factor) for n in shape)
    start = tuple((p - n) // 2 for p, n in zip(padded, shape, strict=True))
    sl = tuple(slice(s, s + n) for s, n in zip(start, shape, strict=True))
    big = np.zeros(padded, dtype=np.float64)
    big[sl] = chi
    d = dipole_kernel(padded, voxel_mm, b0_dir)
    field = np.fft.ifftn(d * np.fft.fftn(big)).real[sl]
    return (GAMMA_BAR_MHZ_PER_T * 1e6 * b0_t * 1e-6 * field).astype(np.float32)


def normalised_coords(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index coordinates scaled to [-1, 1) per axis, 0 at index n // 2: z (nz,1,1), y (1,ny,1), x (1,1,nx)."""
    nz, ny, nx = shape
    z = ((np.arange(nz) - nz // 2) / (nz / 2))[:, None, None]
    y = ((np.arange(ny) - ny // 2) / (ny / 2))[None, :, None]
    x = ((np.arange(nx) - nx // 2) / (nx / 2))[None, None, :]
    return z, y, x


def background_field_hz(
    shape: tuple[int, int, int], rng: np.random.Generator, amplitude_hz: float = 10.0
) -> np.ndarray:
    """Linear shim residual ``c0 + cx x + cy y + cz z`` (Hz) over normalised coordinates.

    ``c0`` is uniform in ``[-amplitude_hz, amplitude_hz] / 2`` and each slope uniform in
    ``[-amplitude_hz, amplitude_hz] / 3``, so ``|field| <= 1.5 * amplitude_hz``. Returns float32 ``(nz, ny,
    nx)``.
    """
    z, y, x = normalised_coords(shape)
    c0 = rng.uniform(-0.5, 0.5) * amplitude_hz
    cx, cy, cz = rng.uniform(-1.0, 1.0, size=3) * amplitude_hz / 3.0
    return np.broadcast_to(c0 + cx * x + cy * y + cz * z, shape).astype(np.float32)


def smooth_phase(
    shape: tuple[int, int, int], rng: np.random.Generator, amplitude_rad: float = 1.0
) -> np.ndarray:
    """Smooth low-order (linear + quadratic) phase in rad, float32 ``(nz, ny, nx)``.

    ``phi = c0 + sum_i a_i u_i + sum_i b_i u_i^2`` over the normalised coordinates ``u = (x, y, z)``;
    ``c0`` uniform in ``[-pi, pi)``, the six other coefficients uniform in
    ``[-amplitude_rad, amplitude_rad] / 3``.
    """
    z, y, x = normalised_coords(shape)
    c0 = rng.uniform(-np.pi, np.pi)
    a = rng.uniform(-1.0, 1.0, size=6) * amplitude_rad / 3.0
    phi = c0 + a[0] * x + a[1] * y + a[2] * z + a[3] * x**2 + a[4] * y**2 + a[5] * z**2
    return np.broadcast_to(phi, shape).astype(np.float32)

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


#: Air/tissue susceptibility difference (ppm, SI): air +0.36, soft tissue about -9.05 (Schenck, Med Phys
#: 1996;23:815), so an air cavity in tissue is +9.4 ppm relative to its surroundings.
AIR_TISSUE_CHI_PPM = 9.4

#: Default air cavity outside the simulated slab: a sinus-like ellipsoid in front of and below the brain;
#: (centre, semi-axes) in mm, (x, y, z) relative to the grid centre (y > 0 towards higher row index).
DEFAULT_CAVITY_MM = ((0.0, 70.0, -80.0), (25.0, 12.0, 12.0))


def external_field_hz(
    shape: tuple[int, int, int],
    voxel_mm: tuple[float, float, float],
    b0_t: float = 3.0,
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0),
    cavity_mm: tuple[tuple[float, float, float], tuple[float, float, float]] = DEFAULT_CAVITY_MM,
    chi_ppm: float = AIR_TISSUE_CHI_PPM,
) -> np.ndarray:
    """Off-resonance (Hz) inside the grid produced by an air cavity *outside* it: a smooth background field.

    The cavity (an ellipsoid of ``chi_ppm`` relative to tissue) is placed on an enlarged grid (same voxels)
    that holds the simulated grid at its centre and the cavity with a margin; the field is computed there
    with the zero-padded dipole convolution of :func:`dipole_field_hz` and cropped back. A cavity that
    overlaps the simulated grid is an error, so the field is harmonic inside it -- what background field
    removal assumes. With the default cavity the field inside a 220 mm x 220 mm x 32-64 mm slab spans about
    0-80 Hz at 3 T (largest at the slab corner nearest to it).

    Parameters
    ----------
    shape : (nz, ny, nx) simulated grid.
    voxel_mm : (x, y, z) mm.
    b0_t, b0_dir : field strength (T) and direction (x, y, z).
    cavity_mm : (centre, semi-axes) in mm, (x, y, z) relative to the grid centre.
    chi_ppm : susceptibility of the cavity relative to the surroundings (ppm).

    Returns
    -------
    float32 ``(nz, ny, nx)`` Hz.
    """
    vox = np.asarray(voxel_mm, dtype=np.float64)
    (cx, cy, cz), (sx, sy, sz) = cavity_mm
    c = np.array([cx, cy, cz])
    semi = np.array([sx, sy, sz])
    half_mm = np.array([shape[2], shape[1], shape[0]]) * vox / 2.0
    need = np.maximum(half_mm, np.abs(c) + semi) + 4.0 * vox  # half extent (x, y, z) holding both
    big = tuple(int(2 * np.ceil(need[i] / vox[i])) for i in (2, 1, 0))  # (nz, ny, nx)
    axes = [(np.arange(n) - n // 2) * vox[i] for n, i in zip(big, (2, 1, 0), strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    air = (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2 + ((z - cz) / sz) ** 2) <= 1.0
    start = tuple(b // 2 - n // 2 for b, n in zip(big, shape, strict=True))
    sl = tuple(slice(s0, s0 + n) for s0, n in zip(start, shape, strict=True))
    if air[sl].any():
        raise ValueError("external_field_hz: the cavity overlaps the simulated grid; place it outside")
    chi = np.where(air, chi_ppm, 0.0)
    volume = 4.0 / 3.0 * np.pi * sx * sy * sz
    if air.sum() * np.prod(vox) < 0.5 * volume:  # coarse grid: keep the cavity's moment in its nearest voxels
        idx = tuple(int(np.clip(np.round(c / v) + b // 2, 0, b - 1)) for c, v, b in
                    zip((cz, cy, cx), vox[::-1], big, strict=True))
        chi = np.zeros(big)
        chi[idx] = chi_ppm * volume / np.prod(vox)
        if chi[sl].any():
            raise ValueError("external_field_hz: the cavity overlaps the simulated grid; place it outside")
    field = dipole_field_hz(chi, tuple(vox), b0_t=b0_t, b0_dir=b0_dir, pad_factor=2)
    return field[sl].astype(np.float32)

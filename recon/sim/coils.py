"""Smooth, birdcage-like receive coil sensitivities for a head array.

Coils are small loops placed on rings around the head (axis of the rings = z). The magnitude of coil c follows
the on-axis Biot-Savart fall-off of a circular loop, ``|S_c| ~ (a^2 / (a^2 + d^2))^(3/2)`` with ``d`` the
distance from the loop centre and ``a`` the loop radius; the phase is the coil's azimuth plus a small seeded
linear ramp (smooth, as for real receive fields). Finally all maps are divided by their root-sum-of-squares
over coils, so that ``sum_c |S_c|^2 = 1`` at every voxel (SENSE/ESPIRiT-like normalisation: the coil-combined
image is the object).
"""

from __future__ import annotations

import math

import numpy as np

COILS_PER_RING = 8


def coil_sensitivities(
    ncoils: int,
    shape: tuple[int, int, int],
    seed: int | np.random.Generator,
    voxel_mm: tuple[float, float, float] | None = None,
    ring_radius: float = 1.25,
    loop_radius: float = 0.6,
) -> np.ndarray:
    """Complex coil maps.

    Parameters
    ----------
    ncoils : number of coils; up to 8 per ring, rings stacked along z (e.g. 24 coils = 3 rings of 8).
    shape : (nz, ny, nx).
    seed : int seed or numpy Generator (jitter of the coil positions and the phase ramps).
    voxel_mm : (x, y, z) voxel size in mm; sets the physical aspect ratio of the grid (default: isotropic
        voxels). Lengths below are in units of half the x field of view.
    ring_radius : radius of the coil rings (half-FOV-x units); the head fills ~0.8 of the half FOV.
    loop_radius : radius of each loop (half-FOV-x units).

    Returns
    -------
    complex64 ``(ncoils, nz, ny, nx)`` with ``sum_c |S_c|^2 = 1`` everywhere.
    """
    if ncoils < 1:
        raise ValueError(f"ncoils={ncoils} must be >= 1")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    nz, ny, nx = shape
    vx, vy, vz = voxel_mm if voxel_mm is not None else (1.0, 1.0, 1.0)
    half = nx * vx / 2.0  # mm per unit length
    x = ((np.arange(nx) - nx // 2) * vx / half)[None, None, :]
    y = ((np.arange(ny) - ny // 2) * vy / half)[None, :, None]
    z = ((np.arange(nz) - nz // 2) * vz / half)[:, None, None]
    nrings = math.ceil(ncoils / COILS_PER_RING)
    per_ring = math.ceil(ncoils / nrings)
    ring_z = (np.arange(nrings) - (nrings - 1) / 2.0) * 1.2 * loop_radius
    maps = np.empty((ncoils,) + tuple(shape), dtype=np.complex128)
    for c in range(ncoils):
        ring, k = divmod(c, per_ring)
        n_here = min(per_ring, ncoils - ring * per_ring)
        az = 2 * np.pi * k / n_here + np.pi * ring / max(n_here, 1) + rng.uniform(-0.1, 0.1)
        cx, cy, cz = (
            ring_radius * math.cos(az),
            ring_radius * math.sin(az),
            ring_z[ring] + rng.uniform(-0.05, 0.05),
        )
        d2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
        mag = (loop_radius**2 / (loop_radius**2 + d2)) ** 1.5
        ramp = rng.uniform(-0.5, 0.5, size=3)
        phase = az + ramp[0] * x + ramp[1] * y + ramp[2] * z
        maps[c] = mag * np.exp(1j * phase)
    rss = np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    return (maps / rss).astype(np.complex64)

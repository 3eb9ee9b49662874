"""A small digital susceptibility phantom with a realistic background field, for tests and simulations.

Geometry scales with the field of view: an ellipsoidal "brain" mask with semi-axes (0.36, 0.42, 0.40) x FOV
holds six ellipsoids with deep-grey-matter / vein / white-matter susceptibilities from the QSM challenge 2.0
head phantom (Marques et al., MRM 2021;86:526; values as tabulated in docs/phantoms.md), on a
parenchyma of chi = 0 ppm. The background field comes from sources *outside* the mask: an air-cavity-like
ellipsoid (+9.4 ppm relative to tissue, the air/tissue susceptibility difference) in front of and below the
brain, a harmonic second-order shim residual and a constant frequency offset. Fields are computed with the
zero-padded dipole convolution (:func:`qmapinr.recon.physics.dipole.forward_field_ppm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qmapinr.recon.physics.dipole import forward_field_ppm
from qmapinr.recon.qsm.inversion import GAMMA_BAR_MHZ_PER_T

__all__ = ["QsmPhantom", "PHANTOM_OBJECTS", "make_qsm_phantom"]

#: (name, centre (x, y, z), semi-axes (x, y, z)) in units of the brain semi-axes, chi in ppm.
PHANTOM_OBJECTS: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float], float], ...] = (
    ("globus_pallidus", (-0.39, 0.30, 0.0), (0.17, 0.15, 0.31), 0.131),
    ("red_nucleus", (0.39, 0.30, 0.0), (0.17, 0.15, 0.31), 0.100),
    ("white_matter", (-0.39, -0.30, 0.0), (0.17, 0.15, 0.31), -0.030),
    ("caudate", (0.39, -0.30, 0.0), (0.17, 0.15, 0.31), 0.044),
    ("vein", (0.0, 0.0, 0.15), (0.26, 0.09, 0.19), 0.190),
    ("substantia_nigra", (0.0, 0.63, 0.0), (0.13, 0.11, 0.38), 0.111),
)

_BRAIN_SEMI_FOV = (0.36, 0.42, 0.40)
_CAVITY = ((0.0, -1.07, -0.54), (0.22, 0.09, 0.23), 9.4)  # centre, semi-axes (brain units), chi (ppm)


@dataclass(frozen=True)
class QsmPhantom:
    """Arrays are ``(nz, ny, nx)``.

    Attributes
    ----------
    chi_ppm : float32 susceptibility inside the brain (0 outside), ppm.
    mask : bool brain mask.
    labels : int32, 0 = parenchyma/outside, i = ``PHANTOM_OBJECTS[i - 1]``.
    values_ppm : float64 ``(nobjects,)`` the objects' chi.
    local_ppm : float32 field of ``chi_ppm`` alone (relative field, ppm).
    background_ppm : float32 field of the outside sources + shim residual + offset, ppm.
    total_hz : float32 ``(local + background) * gamma_bar * B0`` plus white noise, Hz.
    voxel_mm : (x, y, z) mm.
    b0_t : tesla.
    """

    chi_ppm: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    values_ppm: np.ndarray
    local_ppm: np.ndarray
    background_ppm: np.ndarray
    total_hz: np.ndarray
    voxel_mm: tuple[float, float, float]
    b0_t: float


def _coords(shape: Sequence[int], voxel_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nz, ny, nx = shape
    z = (np.arange(nz) - nz / 2 + 0.5) * voxel_mm[2]
    y = (np.arange(ny) - ny / 2 + 0.5) * voxel_mm[1]
    x = (np.arange(nx) - nx / 2 + 0.5) * voxel_mm[0]
    return np.meshgrid(z, y, x, indexing="ij")


def _ellipsoid(zyx: tuple[np.ndarray, ...], centre: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    z, y, x = zyx
    return (((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
            + ((z - centre[2]) / semi[2]) ** 2) <= 1.0


def make_qsm_phantom(
    shape: Sequence[int] = (16, 64, 64),
    voxel_mm: Sequence[float] = (2.0, 2.0, 4.0),
    b0_t: float = 3.0,
    noise_hz: float = 1.0,
    seed: int = 0,
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    shim_ppm: float = 0.4,
    offset_hz: float = 30.0,
) -> QsmPhantom:
    """Build the phantom.

    Parameters
    ----------
    shape : (nz, ny, nx).
    voxel_mm : (x, y, z) mm.
    b0_t : field strength in tesla (Hz per ppm = 42.577478518 * b0_t).
    noise_hz : standard deviation of white Gaussian noise added to ``total_hz``.
    seed : seed of the noise generator.
    b0_dir : main-field direction in the image frame.
    shim_ppm : amplitude scale of the harmonic shim residual (ppm at the brain's edge).
    offset_hz : constant frequency offset (centre-frequency error), Hz.
    """
    shape = tuple(int(n) for n in shape)
    vox = tuple(float(v) for v in voxel_mm)
    zyx = _coords(shape, vox)
    fov = [n * v for n, v in zip((shape[2], shape[1], shape[0]), vox, strict=True)]
    semi = np.array([f * s for f, s in zip(fov, _BRAIN_SEMI_FOV, strict=True)])
    brain = _ellipsoid(zyx, (0.0, 0.0, 0.0), semi)
    chi = np.zeros(shape)
    labels = np.zeros(shape, dtype=np.int32)
    for i, (_, centre, axes, value) in enumerate(PHANTOM_OBJECTS, start=1):
        obj = _ellipsoid(zyx, np.array(centre) * semi, np.array(axes) * semi) & brain
        chi[obj] = value
        labels[obj] = i
    c_centre, c_axes, c_chi = _CAVITY
    cavity = _ellipsoid(zyx, np.array(c_centre) * semi, np.array(c_axes) * semi) & ~brain
    local = forward_field_ppm(chi, vox, b0_dir)
    # one length scale for all axes keeps the polynomial harmonic (zero Laplacian), as a real shim field is
    z, y, x = (c / semi.max() for c in zyx)
    shim = shim_ppm * (
        0.75 * x - 0.5 * y + 0.6 * z + (2 * z**2 - x**2 - y**2) + 0.75 * (x**2 - y**2) + 0.5 * x * y
    )
    hz_per_ppm = GAMMA_BAR_MHZ_PER_T * b0_t
    background = forward_field_ppm(np.where(cavity, c_chi, 0.0), vox, b0_dir) + shim + offset_hz / hz_per_ppm
    rng = np.random.default_rng(seed)
    total = (local + background) * hz_per_ppm + noise_hz * rng.standard_normal(shape)
    return QsmPhantom(
        chi_ppm=chi.astype(np.float32),
        mask=brain,
        labels=labels,
        values_ppm=np.array([o[3] for o in PHANTOM_OBJECTS]),
        local_ppm=local.astype(np.float32),
        background_ppm=background.astype(np.float32),
        total_hz=total.astype(np.float32),
        voxel_mm=vox,  # type: ignore[arg-type]
        b0_t=float(b0_t),
    )

"""Unit dipole kernel of QSM and the susceptibility -> field forward model.

Conventions (used by every module of :mod:`qmapinr.recon.qsm`)
----------------------------------------------------------------
- Volumes are NumPy arrays of shape ``(nz, ny, nx)`` (the project's map layout); voxel sizes are given as
  ``voxel_mm = (x, y, z)`` in mm and the main-field direction as ``b0_dir = (bx, by, bz)`` in the same
  image frame (x = readout/column axis, y = phase axis, z = slice axis). :func:`b0_dir_from_geometry`
  converts a scanner geometry into that frame.
- The k-space kernel is returned in NumPy's *uncentred* FFT order (DC at index ``[0, 0, 0]``, frequencies as
  ``numpy.fft.fftfreq``), i.e. it multiplies ``numpy.fft.fftn(x)`` directly. ``centred=True`` returns the
  ``fftshift``-ed kernel (DC at ``n // 2``), matching :func:`qmapinr.recon.physics.fft.fftc`.
- The kernel is the continuous one, ``D(k) = 1/3 - (k . b)^2 / |k|^2`` with ``D(0) = 0`` (Salomir et al.
  2003; Marques & Bowtell 2005; the form used by MEDI, STI Suite, SEPIA and qsm-forward). The 1/3 term is
  the Lorentz-sphere correction, so the field inside a uniformly magnetised sphere is zero. ``D(0) = 0``
  means the field has zero mean over the (periodic) grid: susceptibility and field are both known only up to
  a constant.
- Fields are *relative* fields ``delta_B / B0`` in ppm (susceptibility in ppm, SI volume susceptibility
  x 1e6). A positive susceptibility raises the field along B0 beside it and lowers it in the equatorial plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft

__all__ = [
    "dipole_kernel",
    "forward_field_ppm",
    "b0_dir_from_geometry",
    "kspace_grid",
    "half_spectrum",
    "convolve_real",
]


def _unit(b0_dir: Sequence[float]) -> np.ndarray:
    b = np.asarray(b0_dir, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(b))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"b0_dir must be a non-zero finite 3-vector, got {tuple(b0_dir)}")
    return b / norm


def _check_shape_voxel(
    shape: Sequence[int], voxel_mm: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be (nz, ny, nx) with positive sizes, got {tuple(shape)}")
    vox = np.asarray(voxel_mm, dtype=np.float64).reshape(3)
    if np.any(vox <= 0) or not np.all(np.isfinite(vox)):
        raise ValueError(f"voxel_mm must be three positive sizes (x, y, z) in mm, got {tuple(voxel_mm)}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), vox


def kspace_grid(shape: Sequence[int], voxel_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/mm) of an ``(nz, ny, nx)`` grid in uncentred FFT order, broadcastable.

    Returns
    -------
    kz, ky, kx : float64 arrays of shapes ``(nz, 1, 1)``, ``(1, ny, 1)``, ``(1, 1, nx)``.
    """
    (nz, ny, nx), vox = _check_shape_voxel(shape, voxel_mm)
    kx = np.fft.fftfreq(nx, d=vox[0]).reshape(1, 1, nx)
    ky = np.fft.fftfreq(ny, d=vox[1]).reshape(1, ny, 1)
    kz = np.fft.fftfreq(nz, d=vox[2]).reshape(nz, 1, 1)
    return kz, ky, kx


def dipole_kernel(
    shape: Sequence[int],
    voxel_mm: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    centred: bool = False,
) -> np.ndarray:
    """Continuous unit dipole kernel in k-space.

    Parameters
    ----------
    shape : (nz, ny, nx) grid size.
    voxel_mm : (x, y, z) voxel size in mm (sets the physical k grid, so anisotropic voxels are handled).
    b0_dir : (bx, by, bz) main-field direction in the image frame (normalised here).
    centred : False (default) -> uncentred NumPy order (multiply ``np.fft.fftn`` output);
        True -> DC at ``n // 2`` (multiply :func:`qmapinr.recon.physics.fft.fftc` output).

    Returns
    -------
    float32 array ``(nz, ny, nx)``: ``D(k) = 1/3 - (k . b)^2 / |k|^2``, ``D(0) = 0``; values in
    ``[-2/3, 1/3]``, even in k (``D(-k) = D(k)``).
    """
    kz, ky, kx = kspace_grid(shape, voxel_mm)
    b = _unit(b0_dir)
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    k2 = kx**2 + ky**2 + kz**2
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb**2 / k2
    d[0, 0, 0] = 0.0
    # Even-size axes have an unpaired Nyquist plane (fftfreq gives -1/2 there, +1/2 is not on the grid); with
    # an oblique b0 the cross terms would make D(-k) != D(k) on it. Symmetrising keeps D exactly even, so the
    # convolution with a real volume stays real (and rfft-based convolution is exact).
    d = 0.5 * (d + np.roll(np.flip(d, axis=(0, 1, 2)), shift=1, axis=(0, 1, 2)))
    d = d.astype(np.float32)
    return np.fft.fftshift(d) if centred else d


def half_spectrum(kernel: np.ndarray) -> np.ndarray:
    """The ``rfftn`` half (last axis ``0 .. nx // 2``) of an uncentred, real, even ``(nz, ny, nx)`` kernel."""
    return np.ascontiguousarray(kernel[..., : kernel.shape[-1] // 2 + 1])


def convolve_real(x: np.ndarray, kernel_half: np.ndarray) -> np.ndarray:
    """Periodic convolution of a real volume with a real, even kernel given by its :func:`half_spectrum`.

    ``x`` float ``(nz, ny, nx)``; returns float64 ``(nz, ny, nx)`` = ``real(ifftn(K * fftn(x)))``, computed
    with real FFTs (half the work).
    """
    return sfft.irfftn(kernel_half * sfft.rfftn(x), s=x.shape)


def forward_field_ppm(
    chi_ppm: np.ndarray,
    voxel_mm: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    pad: bool = True,
) -> np.ndarray:
    """Relative field (ppm) produced by a susceptibility distribution: ``IFFT(D . FFT(chi))``.

    Parameters
    ----------
    chi_ppm : float ``(nz, ny, nx)`` susceptibility in ppm, relative to the medium surrounding the grid.
    voxel_mm : (x, y, z) voxel size in mm.
    b0_dir : (bx, by, bz) main-field direction in the image frame.
    pad : if True (default) zero-pad to twice the size along every axis before the FFT (the medium outside the
        grid has chi = 0), which suppresses the wrap-around of the periodic convolution; the result is cropped
        back. If False the convolution is periodic over the grid (the model the inversions assume).

    Returns
    -------
    float32 ``(nz, ny, nx)`` relative field ``delta_B / B0`` in ppm (multiply by ``gamma_bar * B0`` for Hz).
    """
    chi = np.asarray(chi_ppm, dtype=np.float64)
    if chi.ndim != 3:
        raise ValueError(f"chi_ppm must be 3-D (nz, ny, nx), got shape {chi.shape}")
    shape = chi.shape
    if pad:
        work = np.zeros(tuple(2 * n for n in shape), dtype=np.float64)
        work[: shape[0], : shape[1], : shape[2]] = chi
    else:
        work = chi
    d = half_spectrum(dipole_kernel(work.shape, voxel_mm, b0_dir).astype(np.float64))
    field = convolve_real(work, d)
    return field[: shape[0], : shape[1], : shape[2]].astype(np.float32)


def b0_dir_from_geometry(
    read_dir: Sequence[float],
    phase_dir: Sequence[float],
    slice_dir: Sequence[float],
    b0_patient: Sequence[float] = (0.0, 0.0, 1.0),
) -> tuple[float, float, float]:
    """Main-field direction expressed in the image frame (x = read, y = phase, z = slice).

    Parameters
    ----------
    read_dir, phase_dir, slice_dir : (3,) direction cosines of the image axes in patient coordinates
        (ISMRMRD ``read_dir``/``phase_dir``/``slice_dir``, also :class:`qmapinr.recon.kspace.Geometry`).
    b0_patient : (3,) B0 direction in patient coordinates. The default, patient z (head-foot), is parallel
        to B0 for head-first and feet-first positions in a closed-bore scanner; the sign is irrelevant (D is
        quadratic in b).

    Returns
    -------
    (bx, by, bz) unit vector for :func:`dipole_kernel`.
    """
    rot = np.stack([_unit(read_dir), _unit(phase_dir), _unit(slice_dir)])  # rows: image axes
    b = rot @ _unit(b0_patient)
    b = b / np.linalg.norm(b)
    return float(b[0]), float(b[1]), float(b[2])

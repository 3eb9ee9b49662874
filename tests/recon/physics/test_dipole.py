"""Dipole kernel and susceptibility -> field forward model (qmapinr.recon.physics.dipole)."""

from __future__ import annotations

import numpy as np
import pytest

from qmapinr.recon.physics.dipole import b0_dir_from_geometry, dipole_kernel, forward_field_ppm
from qmapinr.recon.physics.fft import fftc_np, ifftc_np


def _neg_index(d: np.ndarray) -> np.ndarray:
    """D(-k) on the uncentred grid: index i -> (-i) mod n along every axis."""
    return np.roll(np.flip(d, axis=(0, 1, 2)), shift=1, axis=(0, 1, 2))


@pytest.mark.parametrize(
    ("shape", "voxel", "b0"),
    [((8, 16, 12), (1.0, 1.0, 1.0), (0, 0, 1)), ((9, 10, 16), (1.0, 1.2, 4.0), (0.2, -0.3, 0.9))],
)
def test_kernel_properties(shape, voxel, b0):
    d = dipole_kernel(shape, voxel, b0)
    assert d.shape == shape and d.dtype == np.float32
    assert d[0, 0, 0] == 0.0
    assert d.min() >= -2.0 / 3.0 - 1e-6 and d.max() <= 1.0 / 3.0 + 1e-6
    assert d.min() < -0.5 and d.max() > 0.3  # the range is actually used
    np.testing.assert_allclose(d, _neg_index(d), atol=1e-7)  # even in k -> real convolution


def test_kernel_values_and_axis_order():
    shape = (8, 8, 8)
    dz = dipole_kernel(shape, (1, 1, 1), (0, 0, 1))
    # B0 along z = first array axis: k along z gives 1/3 - 1, k along x (last axis) gives 1/3
    assert dz[1, 0, 0] == pytest.approx(-2.0 / 3.0)
    assert dz[0, 0, 1] == pytest.approx(1.0 / 3.0)
    assert dz[0, 1, 0] == pytest.approx(1.0 / 3.0)
    # B0 along x: the same kernel with the z and x array axes swapped
    dx = dipole_kernel(shape, (1, 1, 1), (1, 0, 0))
    np.testing.assert_allclose(dx, dz.transpose(2, 1, 0), atol=1e-7)
    # anisotropic voxels enter through the physical k: k = (1/(8*1 mm), 0, 1/(8*4 mm)) -> kz^2/k^2 = 1/17
    da = dipole_kernel(shape, (1.0, 1.0, 4.0), (0, 0, 1))
    assert da[1, 0, 1] == pytest.approx(1.0 / 3.0 - 1.0 / 17.0, rel=1e-5)


def test_centred_kernel_matches_project_fft():
    rng = np.random.default_rng(3)
    shape = (8, 12, 10)
    chi = rng.standard_normal(shape)
    d = dipole_kernel(shape, (1.0, 1.5, 2.0), (0.1, 0.2, 1.0))
    dc = dipole_kernel(shape, (1.0, 1.5, 2.0), (0.1, 0.2, 1.0), centred=True)
    assert dc[shape[0] // 2, shape[1] // 2, shape[2] // 2] == 0.0
    via_numpy = np.real(np.fft.ifftn(d * np.fft.fftn(chi)))
    via_fftc = np.real(ifftc_np(dc * fftc_np(chi.astype(np.complex64), (0, 1, 2)), (0, 1, 2)))
    np.testing.assert_allclose(via_fftc, via_numpy, atol=1e-5)


def _sphere(shape: tuple[int, int, int], voxel: tuple[float, float, float], radius_mm: float):
    """Voxelised sphere centred at index (n // 2) along each axis, and the distance map in mm."""
    cz, cy, cx = (np.arange(n) - n // 2 for n in shape)
    z, y, x = np.meshgrid(cz * voxel[2], cy * voxel[1], cx * voxel[0], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    return (r <= radius_mm).astype(np.float64), r


def test_sphere_field_dipole_pattern():
    """Outside a sphere: polar/equatorial = -2, amplitude chi/3 (a/r)^3 (3cos^2 - 1); inside ~ 0 (Lorentz)."""
    n, a = 40, 5.0
    chi, r = _sphere((n, n, n), (1, 1, 1), a)
    a_eff = (3.0 * chi.sum() / (4.0 * np.pi)) ** (1.0 / 3.0)  # radius of the voxelised sphere's volume
    f = forward_field_ppm(chi, (1, 1, 1))
    c = n // 2
    for dist in (8, 10, 12):
        polar = 0.5 * (f[c + dist, c, c] + f[c - dist, c, c])  # along B0 (z, first axis)
        equat = 0.25 * (f[c, c + dist, c] + f[c, c - dist, c] + f[c, c, c + dist] + f[c, c, c - dist])
        assert polar > 0 > equat  # positive chi raises the field along B0, lowers it beside
        assert polar / equat == pytest.approx(-2.0, rel=0.02)
        assert polar == pytest.approx(2.0 / 3.0 * (a_eff / dist) ** 3, rel=0.05)
    inside = f[r <= a - 1]
    assert abs(inside.mean()) < 1e-3  # vs 2/3 just outside the pole: Lorentz-corrected field is zero
    assert np.abs(inside).max() < 0.05  # staircase-surface ripple only


def test_sphere_field_anisotropic_voxels():
    """1x1x2 mm voxels: the physical k grid makes the field match the analytic dipole in mm."""
    voxel = (1.0, 1.0, 2.0)
    shape, a = (32, 48, 48), 8.0
    chi, _ = _sphere(shape, voxel, a)
    a_eff = (3.0 * chi.sum() * np.prod(voxel) / (4.0 * np.pi)) ** (1.0 / 3.0)
    f = forward_field_ppm(chi, voxel)
    cz, cy, cx = (n // 2 for n in shape)
    # the continuous kernel on a staircase surface rings by ~ +-6 % from slice to slice along z (measured),
    # so compare averages over 14, 16, 18 mm from the centre
    dists = np.array([14.0, 16.0, 18.0])
    polar = np.mean([f[cz + int(d / 2), cy, cx] / (a_eff / d) ** 3 for d in dists])
    equat = np.mean([f[cz, cy + int(d), cx] / (a_eff / d) ** 3 for d in dists])
    assert polar == pytest.approx(2.0 / 3.0, rel=0.05)
    assert equat == pytest.approx(-1.0 / 3.0, rel=0.05)


def test_forward_field_linear_and_periodic_mean_zero():
    rng = np.random.default_rng(0)
    chi = rng.standard_normal((8, 10, 12))
    f = forward_field_ppm(chi, (1.0, 1.0, 2.0), pad=False)
    assert abs(f.mean()) < 1e-5  # D(0) = 0
    np.testing.assert_allclose(forward_field_ppm(3.0 * chi, (1.0, 1.0, 2.0), pad=False), 3.0 * f, atol=1e-4)
    with pytest.raises(ValueError):
        forward_field_ppm(chi[0], (1.0, 1.0, 1.0))


def test_b0_dir_from_geometry():
    assert b0_dir_from_geometry((1, 0, 0), (0, 1, 0), (0, 0, 1)) == pytest.approx((0.0, 0.0, 1.0))
    # sagittal-like: readout along patient y, phase along z, slices along x -> B0 along the phase axis
    assert b0_dir_from_geometry((0, 1, 0), (0, 0, 1), (1, 0, 0)) == pytest.approx((0.0, 1.0, 0.0))
    t = np.deg2rad(20.0)  # slab tilted by 20 degrees about x
    b = b0_dir_from_geometry((1, 0, 0), (0, np.cos(t), np.sin(t)), (0, -np.sin(t), np.cos(t)))
    assert b == pytest.approx((0.0, np.sin(t), np.cos(t)))
    with pytest.raises(ValueError):
        dipole_kernel((4, 4, 4), (1, 1, 1), (0, 0, 0))

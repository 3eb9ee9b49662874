"""Dipole field of a sphere against the analytic result; background field and smooth phase."""

import numpy as np
import pytest

from qmapinr.recon.sim.field import (
    GAMMA_BAR_MHZ_PER_T,
    background_field_hz,
    dipole_field_hz,
    dipole_kernel,
    smooth_phase,
)

B0 = 3.0
SCALE = GAMMA_BAR_MHZ_PER_T * B0  # Hz per ppm


def _sphere(shape, voxel_mm, radius_mm):
    nz, ny, nx = shape
    z = (np.arange(nz) - nz // 2)[:, None, None] * voxel_mm[2]
    y = (np.arange(ny) - ny // 2)[None, :, None] * voxel_mm[1]
    x = (np.arange(nx) - nx // 2)[None, None, :] * voxel_mm[0]
    return ((x**2 + y**2 + z**2) <= radius_mm**2).astype(np.float64)


@pytest.mark.parametrize("voxel_mm", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_sphere_matches_analytic(voxel_mm):
    # chi = 1 ppm sphere, radius a = 8 mm: outside dB/B0 = chi/3 (a/r)^3 (3 cos^2 theta - 1), inside 0
    shape = (int(64 / voxel_mm[2]), 64, 64)
    a = 8.0
    chi = _sphere(shape, voxel_mm, a)
    f = dipole_field_hz(chi, voxel_mm, b0_t=B0)
    assert f.dtype == np.float32 and f.shape == shape
    cz, cy, cx = shape[0] // 2, 32, 32
    inside = f[chi > 0]
    assert abs(inside.mean()) < 0.03 * SCALE  # Lorentz-corrected: ~0 inside
    r = 2 * a  # 16 mm from the centre
    along_z = f[cz + int(r / voxel_mm[2]), cy, cx]
    equator = f[cz, cy, cx + int(r / voxel_mm[0])]
    expected_z = SCALE * (2.0 / 3.0) * (a / r) ** 3  # +10.6 Hz
    expected_eq = -SCALE * (1.0 / 3.0) * (a / r) ** 3  # -5.3 Hz
    assert along_z == pytest.approx(expected_z, rel=0.15)
    assert equator == pytest.approx(expected_eq, rel=0.15)
    assert along_z / equator == pytest.approx(-2.0, rel=0.15)


def test_b0_direction_is_respected():
    shape, vox = (48, 48, 48), (1.0, 1.0, 1.0)
    f = dipole_field_hz(_sphere(shape, vox, 6.0), vox, b0_t=B0, b0_dir=(1.0, 0.0, 0.0))
    c = 24
    assert f[c, c, c + 12] > 0 and f[c + 12, c, c] < 0  # positive beyond the poles along x now
    d = dipole_kernel((4, 6, 8), (1.0, 1.0, 1.0))
    assert (
        d[0, 0, 0] == 0 and d[1, 0, 0] == pytest.approx(-2.0 / 3.0) and d[0, 1, 0] == pytest.approx(1.0 / 3.0)
    )


def test_field_is_linear_and_scales_with_b0():
    vox = (2.0, 2.0, 4.0)
    chi = np.random.default_rng(0).normal(size=(8, 16, 16)) * 0.05
    f3 = dipole_field_hz(chi, vox, b0_t=3.0)
    f7 = dipole_field_hz(chi, vox, b0_t=7.0)
    assert np.allclose(f7, f3 * 7.0 / 3.0, rtol=1e-4, atol=1e-5)
    assert np.allclose(dipole_field_hz(2 * chi, vox), 2 * f3, rtol=1e-4, atol=1e-5)


def test_background_and_phase_are_smooth_bounded_and_seeded():
    shape = (8, 32, 32)
    b = background_field_hz(shape, np.random.default_rng(1), amplitude_hz=10.0)
    p = smooth_phase(shape, np.random.default_rng(1), amplitude_rad=1.0)
    assert b.shape == shape and p.shape == shape and b.dtype == np.float32 and p.dtype == np.float32
    assert np.abs(b).max() <= 15.0 + 1e-4
    assert np.ptp(p) <= 3.0 + 1e-5  # 3 linear terms (range <= 2/3 each) + 3 quadratic (<= 1/3 each)
    # linear field: second differences vanish
    assert np.abs(np.diff(b, n=2, axis=2)).max() < 1e-4
    assert np.array_equal(b, background_field_hz(shape, np.random.default_rng(1), amplitude_hz=10.0))
    assert not np.array_equal(p, smooth_phase(shape, np.random.default_rng(2), amplitude_rad=1.0))

"""TV (FANSI) dipole inversion, the automatic weight, the QSM mask and pipeline, and the scores."""

from __future__ import annotations

import numpy as np
import pytest

from qmapinr.recon.physics.dipole import forward_field_ppm
from qmapinr.recon.qsm.inversion import GAMMA_BAR_MHZ_PER_T
from qmapinr.recon.qsm.mask import brain_mask
from qmapinr.recon.qsm.phantom import make_qsm_phantom
from qmapinr.recon.qsm.pipeline import QsmUnavailable, qsm_pipeline
from qmapinr.recon.qsm.score import nrmse_demeaned, region_fit
from qmapinr.recon.qsm.tv import choose_alpha, estimate_noise, tv_fansi

HZ_PER_PPM = GAMMA_BAR_MHZ_PER_T * 3.0


def _ball(shape, voxel, centre_mm, radius_mm):
    nz, ny, nx = shape
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * v for n, v in zip((nz, ny, nx), voxel[::-1],
                                                                              strict=True)], indexing="ij")
    c = centre_mm
    return (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= radius_mm**2


def test_sphere_chi_recovered_by_forward_inverse_pair():
    # chi = 0.1 ppm sphere (r = 8 mm) inside a 'brain' ball (r = 20 mm), 2 mm iso, noiseless field on the ball.
    # Tolerance: the sphere's mean chi (referenced to the ball outside r = 12 mm) within 5 %, its core voxels
    # (r <= 4 mm) within 10 %.
    shape, vox = (24, 24, 24), (2.0, 2.0, 2.0)
    brain = _ball(shape, vox, (0, 0, 0), 20.0)
    sphere = _ball(shape, vox, (2.0, -2.0, 0.0), 8.0)
    chi_true = np.where(sphere, 0.1, 0.0)
    field = forward_field_ppm(chi_true, vox)
    chi, _ = tv_fansi(field, brain, vox, alpha=1e-5, n_iter=200, tol=1e-5)
    ref = chi[brain & ~_ball(shape, vox, (2.0, -2.0, 0.0), 12.0)].mean()
    assert chi[sphere].mean() - ref == pytest.approx(0.1, rel=0.05)
    core = _ball(shape, vox, (2.0, -2.0, 0.0), 4.0)
    assert np.all(np.abs(chi[core] - ref - 0.1) < 0.01)


def test_estimate_noise_matches_white_noise():
    rng = np.random.default_rng(3)
    shape = (16, 32, 32)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    smooth = 0.05 * x + 0.02 * y**2
    mask = x**2 + y**2 + z**2 < 0.8
    sigma = estimate_noise(smooth + 0.004 * rng.standard_normal(shape), mask)
    assert sigma == pytest.approx(0.004, rel=0.1)


@pytest.fixture(scope="module")
def phantom():
    return make_qsm_phantom((16, 32, 32), (4.0, 4.0, 4.0), noise_hz=0.0, seed=0)


def test_tv_with_automatic_alpha_given_true_local_field(phantom):
    p = phantom
    f = p.local_ppm + np.random.default_rng(0).standard_normal(p.mask.shape) * 0.25 / HZ_PER_PPM
    res = choose_alpha(f, p.mask, p.voxel_mm)
    assert res.rule.startswith("discrepancy") and 1e-4 < res.alpha < 2e-3
    regions = [p.labels == i for i in range(1, 7)]
    # measured (16x32x32, 4 mm, tau 1.1): alpha 9.5e-4, NRMSE 23.6 %, object slope 0.80, R^2 0.954
    assert nrmse_demeaned(res.chi, p.chi_ppm, p.mask) < 30.0
    fit = region_fit(res.chi, p.chi_ppm, p.mask, regions)
    assert 0.75 < fit["slope"] < 1.05 and fit["r2"] > 0.93


def test_pipeline_on_total_field(phantom):
    p = phantom
    support = p.mask
    total_hz = p.total_hz + np.random.default_rng(1).standard_normal(p.mask.shape) * 0.25
    res = qsm_pipeline(total_hz, support, support.astype(float), p.voxel_mm)
    assert res.mask.sum() < support.sum() and (res.mask <= support).all()  # eroded, not the whole support
    assert res.info["alpha"] > 0 and "discrepancy" in res.info["alpha_rule"]
    assert "V-SHARP" in res.info["background"]
    assert nrmse_demeaned(res.chi_ppm, p.chi_ppm, res.mask) < 60.0
    assert np.abs(res.local_hz[res.mask] - p.local_ppm[res.mask] * HZ_PER_PPM
                  - np.mean(res.local_hz[res.mask] - p.local_ppm[res.mask] * HZ_PER_PPM)).mean() < 1.0


def test_pipeline_falls_back_or_explains_on_thin_slabs():
    p = make_qsm_phantom((4, 32, 32), (4.0, 4.0, 4.0), noise_hz=0.0, seed=0)
    res = qsm_pipeline(p.total_hz, p.mask, p.mask.astype(float), p.voxel_mm, mask=p.mask)
    assert res.info["background"].startswith("PDF")
    with pytest.raises(QsmUnavailable, match="voxels"):
        qsm_pipeline(p.total_hz, p.mask, p.mask.astype(float), p.voxel_mm, mask=p.mask & (p.labels == 5))


def test_brain_mask_erodes_and_thresholds():
    shape, vox = (16, 40, 40), (2.0, 2.0, 2.0)
    support = _ball(shape, vox, (0, 0, 0), 30.0)
    mag = np.where(support, 1.0, 0.0)
    mag[:, :, :8] = 0.05  # a dark band
    m = brain_mask(support, mag, vox)
    assert m.sum() < support.sum() and not m[:, :, :8].any() and (m <= support).all()
    with pytest.raises(ValueError, match="empty"):
        brain_mask(np.zeros(shape, bool), mag, vox)

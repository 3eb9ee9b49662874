"""Tests of the noise-level estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qmapinr.recon.calibration.noise import estimate_sigma_from_map, estimate_sigma_from_noise_scan


def _complex_noise(sigmas, n, seed=0):
    rng = np.random.default_rng(seed)
    s = np.asarray(sigmas)[:, None]
    shape = (len(sigmas), n)
    return (s * rng.standard_normal(shape) + 1j * s * rng.standard_normal(shape)).astype(np.complex64)


def test_noise_scan_sigma_per_component_and_per_complex():
    noise = _complex_noise([0.3] * 4, 20000) + (0.5 - 0.2j)  # a DC offset is removed, not counted
    sigma = estimate_sigma_from_noise_scan(noise)
    assert abs(sigma - 0.3) < 0.3 * 0.02
    sigma_c = estimate_sigma_from_noise_scan(torch.from_numpy(noise), per="complex")
    assert abs(sigma_c - math.sqrt(2.0) * sigma) < 1e-9


def test_noise_scan_per_coil_and_rms_pooling():
    noise = _complex_noise([0.1, 0.2, 0.4], 30000, seed=3)
    per_coil = estimate_sigma_from_noise_scan(noise, per_coil=True)
    assert per_coil.shape == (3,)
    assert np.allclose(per_coil, [0.1, 0.2, 0.4], rtol=0.02)
    pooled = estimate_sigma_from_noise_scan(noise)
    assert abs(pooled - math.sqrt((0.01 + 0.04 + 0.16) / 3)) < 0.02 * pooled


def test_noise_scan_rejects_bad_input():
    with pytest.raises(ValueError):
        estimate_sigma_from_noise_scan(np.zeros((2, 3, 4), np.complex64))
    with pytest.raises(ValueError):
        estimate_sigma_from_noise_scan(np.zeros((2, 1), np.complex64))
    with pytest.raises(ValueError):
        estimate_sigma_from_noise_scan(np.zeros((2, 10), np.complex64), per="magnitude")


def test_map_sigma_on_smooth_image_plus_noise():
    g = torch.Generator().manual_seed(0)
    zz, yy = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    smooth = 1000.0 + 3.0 * zz - 2.0 * yy + 0.01 * (zz - 32) ** 2
    sigmas = torch.tensor([5.0, 20.0])
    x = smooth + sigmas[:, None, None] * torch.randn(2, 64, 64, generator=g)
    est = estimate_sigma_from_map(x)
    assert est.shape == (2,)
    assert torch.allclose(est, sigmas, rtol=0.1)
    assert float(estimate_sigma_from_map(smooth)) < 0.05

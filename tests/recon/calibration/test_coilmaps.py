"""Coil-map estimation and JSENSE refinement (recon/calibration/coilmaps.py, jsense.py)."""

import numpy as np
import pytest

from qmapinr.recon.calibration.coilmaps import calibration_box, estimate_coil_maps
from qmapinr.recon.calibration.jsense import refine_coil_maps
from qmapinr.recon.physics.dictionary import default_dictionary


def _alignment(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-voxel |<est, true>| / (||est|| ||true||): 1 = identical up to a per-voxel complex factor."""
    num = np.abs(np.sum(est * true.conj(), axis=0))
    return num / np.maximum(np.linalg.norm(est, axis=0) * np.linalg.norm(true, axis=0), 1e-30)


@pytest.mark.parametrize("method", ["ratio", "walsh"])
def test_estimate_coil_maps_aligned_with_truth(tiny, method):
    maps = estimate_coil_maps(tiny.kspace, method=method)
    assert maps.shape == tiny.sens.shape and maps.dtype == np.complex64
    ip = _alignment(maps, tiny.sens)[tiny.mask]
    assert np.percentile(ip, 5) > 0.95 and np.median(ip) > 0.98
    rss = np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))[tiny.mask]
    np.testing.assert_allclose(np.median(rss), 1.0, atol=0.05)


def test_contrast_weighting_beats_plain_mean(tiny):
    """Each location is sampled at a few random (tau, n): a plain mean mixes contrasts per location."""
    ip_fit = _alignment(estimate_coil_maps(tiny.kspace, weighting="contrast"), tiny.sens)[tiny.mask]
    ip_mean = _alignment(estimate_coil_maps(tiny.kspace, weighting="mean"), tiny.sens)[tiny.mask]
    assert np.median(ip_fit) > np.median(ip_mean) and np.percentile(ip_mean, 5) < 0.95


def test_phase_reference_removes_object_phase(tiny):
    maps = estimate_coil_maps(tiny.kspace, phase_reference="coil")
    ref = int(np.argmax(np.sum(np.abs(maps) ** 2, axis=(1, 2, 3))))
    assert np.abs(np.angle(maps[ref][tiny.mask])).max() < 1e-5


def test_jsense_refinement_improves_maps(tiny):
    init = estimate_coil_maps(tiny.kspace)
    basis, _, _ = default_dictionary(tiny.kspace.seq).svd_basis(4)
    refined, info = refine_coil_maps(tiny.kspace, init, basis, outer_iters=3, width=(6, 8, 8))
    err0 = np.sqrt(1 - np.clip(_alignment(init, tiny.sens)[tiny.mask], 0, 1) ** 2)
    err1 = np.sqrt(1 - np.clip(_alignment(refined, tiny.sens)[tiny.mask], 0, 1) ** 2)
    assert np.median(err1) < 0.5 * np.median(err0)
    assert np.median(err1) < 0.03
    assert info["jsense_residual"][-1] < info["jsense_residual"][0]


def test_calibration_box():
    count = np.zeros((6, 16), dtype=int)
    count[1:6, 4:13] = 1
    assert calibration_box(count) == (5, 9)
    assert calibration_box(count, (3, 5)) == (3, 5)
    assert calibration_box(np.zeros((6, 16), dtype=int)) == (0, 0)

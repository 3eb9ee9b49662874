"""Coil compression (recon/calibration/compression.py): one matrix, by count or energy; per readout position."""

import numpy as np
import pytest

from qmapinr.recon.calibration.compression import (
    coil_compress,
    compress_as_configured,
    geometric_coil_compress,
)
from qmapinr.recon.physics.fft import ifftc_np


def test_coil_compress_exact_and_energy(tiny):
    ks = tiny.kspace
    full, mat = coil_compress(ks, ks.ncoils)
    assert mat.shape == (ks.ncoils, ks.ncoils)
    np.testing.assert_allclose(mat @ mat.conj().T, np.eye(ks.ncoils), atol=1e-5)
    back = np.tensordot(mat.conj().T, full.data, axes=(1, 0))
    np.testing.assert_allclose(back, ks.data, atol=1e-5 * np.abs(ks.data).max())
    e_in = np.sum(np.abs(ks.data) ** 2)
    energies = [np.sum(np.abs(coil_compress(ks, n)[0].data) ** 2) for n in (1, 2, 3, 4)]
    assert np.all(np.diff(energies) >= 0) and energies[0] > 0.25 * e_in
    np.testing.assert_allclose(energies[-1], e_in, rtol=1e-5)
    two, _ = coil_compress(ks, 2)
    assert two.data.shape == (2,) + ks.data.shape[1:] and two.meta["coil_compression"]["n_virtual"] == 2
    with pytest.raises(ValueError):
        coil_compress(ks, 0)


def test_coil_compress_by_energy_keeps_the_fewest_eigen_coils_with_that_energy(tiny):
    ks = tiny.kspace
    e_in = np.sum(np.abs(ks.data) ** 2)
    kept = [np.sum(np.abs(coil_compress(ks, n)[0].data) ** 2) / e_in for n in range(1, ks.ncoils + 1)]
    for n in range(1, ks.ncoils):  # an energy just above what n eigen-coils keep needs n + 1 of them
        target = 0.5 * (kept[n - 1] + kept[n])
        out, _ = coil_compress(ks, energy=target)
        assert out.ncoils == n + 1, (n, target, kept)
        assert out.meta["coil_compression"]["energy_kept"] >= target
    assert coil_compress(ks, energy=kept[0] * 0.99)[0].ncoils == 1
    assert coil_compress(ks, energy=kept[0] * 0.99, min_virtual=3)[0].ncoils == 3  # the floor
    assert coil_compress(ks, energy=1.0)[0].ncoils == ks.ncoils
    with pytest.raises(ValueError):
        coil_compress(ks, energy=1.5)


def test_compress_as_configured_leaves_small_arrays_and_honours_an_explicit_count(tiny):
    ks = tiny.kspace  # 4 coils
    assert compress_as_configured(ks, 0, 0.0, 8) is ks  # off
    assert compress_as_configured(ks, 0, 0.5, 4) is ks  # no more coils than the floor: not compressed
    assert compress_as_configured(ks, 0, 0.5, 2).ncoils == 2  # the floor binds at a low energy
    assert compress_as_configured(ks, 3, 0.0, 8).ncoils == 3  # an explicit count wins over the floor
    assert compress_as_configured(ks, 4, 0.0, 8) is ks
    assert compress_as_configured(ks, 0, 0.5, 2, above=4) is ks  # no more coils than compress_above_coils
    assert compress_as_configured(ks, 0, 0.5, 2, above=3).ncoils == 2


def _energy(data: np.ndarray) -> float:
    return float(np.sum(np.abs(data.astype(np.complex128)) ** 2))


def test_geometric_compression_is_lossless_at_full_count_and_keeps_more_energy(tiny):
    ks = tiny.kspace
    full, mats = geometric_coil_compress(ks, ks.ncoils)
    nx = ks.data.shape[-1]
    assert mats.shape == (nx, ks.ncoils, ks.ncoils)
    for x in range(nx):
        np.testing.assert_allclose(mats[x] @ mats[x].conj().T, np.eye(ks.ncoils), atol=1e-5)
    hyb, hyb_v = ifftc_np(ks.data, (-1,)), ifftc_np(full.data, (-1,))
    back = np.einsum("xcn,nelx->celx", mats.conj().transpose(0, 2, 1), hyb_v)
    np.testing.assert_allclose(back, hyb, atol=1e-5 * np.abs(hyb).max())
    e_in = _energy(ks.data)
    for n in (1, 2, 3):  # per-x matrices keep at least what one matrix for the scan keeps
        geo, glob = geometric_coil_compress(ks, n)[0], coil_compress(ks, n)[0]
        assert _energy(geo.data) >= _energy(glob.data) * (1 - 1e-6)
        assert geo.meta["coil_compression"]["energy_kept"] == pytest.approx(_energy(geo.data) / e_in, rel=1e-4)
    by_energy = geometric_coil_compress(ks, energy=0.5 * (1 + _energy(geometric_coil_compress(ks, 1)[0].data) / e_in))
    assert by_energy[0].ncoils >= 2 and by_energy[0].meta["coil_compression"]["mode"] == "geometric"


def test_geometric_matrices_are_aligned_along_the_readout(tiny):
    """After alignment neighbouring x planes use nearly the same virtual coils: the step between neighbouring
    matrices is far below that of the raw per-x eigen-coils (whose phase and order are arbitrary per x)."""
    ks = tiny.kspace
    _, mats = geometric_coil_compress(ks, 2)
    hyb = ifftc_np(ks.data, (-1,))
    raw = []
    for x in range(hyb.shape[-1]):
        p = hyb[..., x].reshape(ks.ncoils, -1).astype(np.complex128)
        w, v = np.linalg.eigh(p @ p.conj().T)
        raw.append(v[:, ::-1][:, :2].conj().T * np.exp(1j * x))  # an arbitrary phase per x, as eigh may give
    step = lambda m: np.mean([np.linalg.norm(m[x] - m[x - 1]) for x in range(1, len(m))])  # noqa: E731
    assert step(mats) < 0.5 * step(np.array(raw)), (step(mats), step(np.array(raw)))


def test_compress_as_configured_picks_the_mode(tiny):
    ks = tiny.kspace
    assert compress_as_configured(ks, 2, 0.0, 8, "geometric").meta["coil_compression"]["mode"] == "geometric"
    assert compress_as_configured(ks, 2, 0.0, 8, "global").meta["coil_compression"]["mode"] == "global"
    with pytest.raises(ValueError, match="geometric"):
        compress_as_configured(ks, 2, 0.0, 8, "pca")

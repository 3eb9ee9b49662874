"""Dictionary matching of the T2IR multi-echo GRE signal (recon/baselines/dictionary.py)."""

import dataclasses

import numpy as np
import pytest
import torch

from qmapinr.recon.kspace import SequenceParams
from qmapinr.recon.physics.dictionary import (
    build_dictionary,
    coefficients_to_maps,
    fit_echoes,
    match,
    match_coefficients,
)
from qmapinr.recon.physics.signal import signal

SEQ = SequenceParams(tr_ms=30.0, te_ms=(4.5, 11.2, 17.9, 24.6), flip_deg=10.0,
                     tau_ms=(25.0, 50.0, 70.0, 90.0), nseg=20)
T1_GRID = np.geomspace(200.0, 4000.0, 24)
T2_GRID = np.geomspace(20.0, 1500.0, 18)


def _series(seq, a, t1, t2, t2s, phi, df):
    t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64))  # noqa: E731
    return signal(t(a), t(t1), t(t2), t(t2s), t(phi), t(df), seq).numpy()


def _truth(n, rng, t1_grid=T1_GRID, t2_grid=T2_GRID):
    return dict(a=rng.uniform(0.5, 2.0, n), t1=t1_grid[rng.integers(0, len(t1_grid), n)],
                t2=t2_grid[rng.integers(0, len(t2_grid), n)], t2s=rng.uniform(15.0, 120.0, n),
                phi=rng.uniform(-3.0, 3.0, n), df=rng.uniform(-60.0, 60.0, n))


@pytest.fixture(scope="module")
def dictionary():
    return build_dictionary(SEQ, T1_GRID, T2_GRID)


def test_exact_recovery_on_grid(dictionary):
    rng = np.random.default_rng(1)
    p = _truth(300, rng)
    s = _series(SEQ, p["a"], p["t1"], p["t2"], p["t2s"], p["phi"], p["df"])
    r = match(s, dictionary)
    np.testing.assert_allclose(r["T1"], p["t1"], rtol=1e-9)
    np.testing.assert_allclose(r["T2"], p["t2"], rtol=1e-9)
    np.testing.assert_allclose(r["T2star"], p["t2s"], rtol=1e-3)
    np.testing.assert_allclose(r["A"], p["a"], rtol=1e-3)
    np.testing.assert_allclose(r["B0"], p["df"], atol=1e-2)
    assert np.abs(np.angle(np.exp(1j * (r["Phase0"] - p["phi"])))).max() < 1e-3
    assert np.all(r["Residual"] < 1e-2 * np.linalg.norm(s.reshape(len(s), -1), axis=1))


def test_inversion_sign_matters(dictionary):
    """Matching is complex-aware: a recovery curve crossing zero is not confused with its magnitude twin."""
    rng = np.random.default_rng(2)
    p = _truth(50, rng)
    s = _series(SEQ, p["a"], p["t1"], p["t2"], p["t2s"], p["phi"], p["df"])
    r_true = match(s, dictionary)
    r_abs = match(np.abs(s), dictionary)  # magnitude data: sign information lost
    assert np.mean(np.isclose(r_true["T1"], p["t1"])) == 1.0
    assert np.mean(np.isclose(r_abs["T1"], p["t1"])) < 0.9


def test_refinement_within_grid_step(dictionary):
    rng = np.random.default_rng(3)
    n = 200
    t1 = np.exp(rng.uniform(np.log(300.0), np.log(2000.0), n))
    t2 = np.exp(rng.uniform(np.log(30.0), np.log(200.0), n))
    s = _series(SEQ, np.ones(n), t1, t2, np.full(n, 50.0), np.zeros(n), np.zeros(n))
    step1 = T1_GRID[1] / T1_GRID[0]
    step2 = T2_GRID[1] / T2_GRID[0]
    for refine in (False, True):
        # T1 and T2 are correlated in the signal and long T1 is weakly encoded by 20 readouts, so the best
        # atom can be a (diagonal) neighbour: allow two steps at worst, half a step in the median.
        r = match(s, dictionary, refine=refine)
        assert np.all(np.abs(np.log(r["T1"] / t1)) <= 2 * np.log(step1))
        assert np.all(np.abs(np.log(r["T2"] / t2)) <= 2 * np.log(step2))
        assert np.median(np.abs(np.log(r["T1"] / t1))) <= 0.5 * np.log(step1)
    plain = np.median(np.abs(np.log(match(s, dictionary)["T1"] / t1)))
    refined = np.median(np.abs(np.log(match(s, dictionary, refine=True)["T1"] / t1)))
    assert refined < plain


def test_match_coefficients_equals_direct_with_complete_basis(dictionary):
    rng = np.random.default_rng(4)
    p = _truth(100, rng)
    s = _series(SEQ, p["a"], p["t1"], p["t2"], p["t2s"], p["phi"], p["df"])
    direct = match(s, dictionary)
    t = SEQ.ntau * SEQ.nseg
    # A complete but non-orthonormal real basis, and a complete complex orthonormal one.
    b_real = np.linalg.qr(rng.standard_normal((t, t)))[0] @ np.diag(rng.uniform(0.5, 2.0, t))
    b_cplx = np.linalg.qr(rng.standard_normal((t, t)) + 1j * rng.standard_normal((t, t)))[0]
    flat = s.reshape(len(s), SEQ.nte, t)
    for b in (b_real, b_cplx):
        coeff = np.linalg.solve(b, flat.reshape(-1, t).T).T.reshape(len(s), SEQ.nte, t)  # S = B c
        got = match_coefficients(coeff, b.reshape(SEQ.ntau, SEQ.nseg, t), dictionary)
        np.testing.assert_array_equal(got["atom"], direct["atom"])
        for name in ("A", "T2star", "B0"):
            np.testing.assert_allclose(got[name], direct[name], rtol=1e-4, atol=1e-4)


def test_match_coefficients_in_svd_subspace(dictionary):
    rng = np.random.default_rng(5)
    p = _truth(100, rng)
    s = _series(SEQ, p["a"], p["t1"], p["t2"], p["t2s"], p["phi"], p["df"])
    u, emax, emean = dictionary.svd_basis(12)
    assert emax < 0.01 and emean <= emax
    coeff = s.reshape(len(s), SEQ.nte, -1) @ u.reshape(-1, 12)  # orthonormal: c = U^T S
    got = match_coefficients(coeff, u, dictionary)
    assert np.mean(np.isclose(got["T1"], p["t1"])) > 0.95
    np.testing.assert_allclose(np.median(got["T2star"] / p["t2s"]), 1.0, atol=0.02)


@pytest.mark.parametrize("order", ["tau-outer", "shot-outer"])
def test_history_dictionary_recovers_its_own_signal(order):
    seq = dataclasses.replace(SEQ, prep_loop_order=order, recovery_delay_ms=100.0)
    d = build_dictionary(seq, T1_GRID, T2_GRID)
    rng = np.random.default_rng(6)
    p = _truth(50, rng)
    s = _series(seq, p["a"], p["t1"], p["t2"], p["t2s"], p["phi"], p["df"])
    r = match(s, d)
    np.testing.assert_allclose(r["T1"], p["t1"])
    np.testing.assert_allclose(r["T2"], p["t2"])
    # the closed-form dictionary does not fit the history signal: some matches move off the truth
    closed = match(s, build_dictionary(dataclasses.replace(seq, prep_loop_order=None), T1_GRID, T2_GRID))
    assert not np.allclose(closed["T1"], p["t1"])


def test_fit_echoes_t2s_grid_and_single_echo():
    te = (5.0, 10.0, 15.0)
    tea = np.array(te)
    h = (2.0 * np.exp(-tea / 40.0) * np.exp(1j * (0.5 + 2 * np.pi * 20.0 * tea * 1e-3)))[None]
    r = fit_echoes(h, te, t2s_grid=np.array([20.0, 30.0, 40.0, 50.0]))
    assert r["T2star"][0] == 40.0
    np.testing.assert_allclose([r["A"][0], r["B0"][0], r["Phase0"][0]], [2.0, 20.0, 0.5], rtol=1e-6)
    one = fit_echoes(h[:, :1], te[:1])
    assert one["B0"][0] == 0.0 and np.isfinite(one["T2star"][0])


def test_coefficients_to_maps_shapes_and_mask(dictionary):
    rng = np.random.default_rng(7)
    u, _, _ = dictionary.svd_basis(8)
    p = _truth(2 * 3 * 4, rng)
    s = _series(SEQ, p["a"], p["t1"], p["t2"], p["t2s"], p["phi"], p["df"])
    coeff = (s.reshape(24, SEQ.nte, -1) @ u.reshape(-1, 8)).reshape(2, 3, 4, SEQ.nte, 8)
    coeff = np.moveaxis(coeff, (3, 4), (0, 1))  # (nte, K, nz, ny, nx)
    coeff[:, :, 0, 0, 0] = 0.0  # background voxel
    qm = coefficients_to_maps(coeff, u, dictionary, refine=False)
    assert qm.maps["T1"].shape == (2, 3, 4) and qm.maps["T1"].dtype == np.float32
    assert not qm.mask[0, 0, 0] and qm.mask.sum() == 23
    assert qm.maps["T1"][0, 0, 0] == 0.0

"""Simulator: hand-computed WM signal, agreement with signal()/fftc, SNR definition, seeding, configs."""

import math

import numpy as np
import pytest
import torch

from qmapinr.recon.physics.fft import fftc_np, ifftc_np
from qmapinr.recon.physics.signal import signal
from qmapinr.recon.sim.simulate import SimulationConfig, simulate, tiny_fixture_config, voxel_factors


def _wm_hand(seq, tau_ms, n, te_ms, b0_hz, phi0):
    """docs/design.md / paper closed form for WM (docs/phantoms.md values), written out with math only."""
    a, t1, t2, t2s = 0.65, 832.0, 79.2, 53.2
    alpha = math.radians(seq.flip_deg)
    e1 = math.exp(-seq.tr_ms / t1)
    ss = (1 - e1) / (1 - e1 * math.cos(alpha))
    q = e1 * math.cos(alpha)
    b = seq.inversion_efficiency
    mag = a * math.sin(alpha) * math.exp(-te_ms / t2s) * ss * (1 + (b * math.exp(-tau_ms / t2) - 1) * q**n)
    return mag * complex(
        math.cos(phi0 + 2 * math.pi * b0_hz * te_ms * 1e-3),
        math.sin(phi0 + 2 * math.pi * b0_hz * te_ms * 1e-3),
    )


def _wm_voxel(ph):
    zz, yy, xx = np.nonzero(ph.labels == ph.label_of("WM"))
    i = len(zz) // 2
    return int(zz[i]), int(yy[i]), int(xx[i])


@pytest.mark.parametrize("preset", ["paper-sim", "demo"])
def test_signal_image_equals_hand_formula_for_wm(preset):
    cfg = SimulationConfig(shape=(4, 16, 16), ncoils=1, preset=preset, snr=None, prep_loop_order=None)
    from qmapinr.recon.sim.phantom import brain_phantom

    ph = brain_phantom(cfg.shape, seed=0, voxel_mm=cfg.geometry.voxel_mm)
    seq = cfg.seq
    fac = voxel_factors(ph, seq)
    z, y, x = _wm_voxel(ph)
    b0, phi0 = float(ph.maps["B0"][z, y, x]), float(ph.maps["Phase0"][z, y, x])
    for t in range(seq.ntau):
        for n in (0, 1, seq.nseg // 2, seq.nseg - 1):
            img = fac.image(t, n)
            for e, te in enumerate(seq.te_ms):
                want = _wm_hand(seq, seq.tau_ms[t], n, te, b0, phi0)
                assert img[e, z, y, x] == pytest.approx(want, rel=2e-5, abs=1e-9)


def test_end_to_end_fully_sampled_n0_equals_hand_formula():
    # nseg = 1 and R = 1: every tau is a fully sampled k-space at n = 0; one coil.
    cfg = SimulationConfig(shape=(4, 16, 16), ncoils=1, R=1.0, nseg=1, snr=None, preset="demo", seed=2,
                           prep_loop_order=None)
    ks, ph = simulate(cfg)
    seq = ks.seq
    z, y, x = _wm_voxel(ph)
    b0, phi0 = float(ph.maps["B0"][z, y, x]), float(ph.maps["Phase0"][z, y, x])
    dense = ks.dense()  # (1, nte, ntau, 1, nz, ny, nx)
    assert ks.mask.all()
    for t in range(seq.ntau):
        img = ifftc_np(dense[0, :, t, 0], (-3, -2, -1)) / ph.sens[0]
        for e, te in enumerate(seq.te_ms):
            want = _wm_hand(seq, seq.tau_ms[t], 0, te, b0, phi0)
            assert img[e, z, y, x] == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("order", [None, "tau-outer", "shot-outer"])
def test_factors_equal_signal_function(order):
    cfg = SimulationConfig(shape=(4, 16, 16), preset="demo", prep_loop_order=order, recovery_delay_ms=50.0)
    from qmapinr.recon.sim.phantom import nist_phantom

    ph = nist_phantom(cfg.shape, seed=0, voxel_mm=cfg.geometry.voxel_mm)
    seq = cfg.seq
    fac = voxel_factors(ph, seq)
    m = {k: torch.from_numpy(ph.maps[k].ravel()[fac.index].astype(np.float64)) for k in ph.maps}
    ref = signal(m["A"], m["T1"], m["T2"], m["T2star"], m["Phase0"], m["B0"], seq)  # (nv, nte, ntau, nseg)
    for t in range(seq.ntau):
        for n in (0, 5, seq.nseg - 1):
            assert torch.allclose(fac.values(t, n), ref[:, :, t, n], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("order", [None, "shot-outer", "tau-outer"])
def test_kspace_lines_equal_centred_fft_of_coil_images(order):
    # odd sizes too; each line carries the exact signal of its own shot (start-up transient included)
    cfg = SimulationConfig(shape=(5, 12, 14), ncoils=3, R=3.0, nseg=6, snr=None, seed=4, prep_loop_order=order,
                           recovery_delay_ms=40.0, prep_dummies=1)
    ks, ph = simulate(cfg)
    shot_tau = np.zeros(int(ks.meta["shot"].max()) + 1, dtype=np.int64)
    shot_tau[ks.meta["shot"]] = ks.tau
    fac = voxel_factors(ph, ks.seq, shot_tau)
    assert (ks.meta["transient_shots"] > 0) == (order is not None)
    scale = np.abs(ks.data).max()
    for line in range(0, ks.nlines, 7):
        shot = None if order is None else int(ks.meta["shot"][line])
        img = fac.scatter(fac.values(int(ks.tau[line]), int(ks.seg[line]), shot))[None] * ph.sens[:, None]
        k = fftc_np(img, (-3, -2, -1))[:, :, ks.kz[line], ks.ky[line], :]
        assert np.abs(k - ks.data[:, :, line]).max() < 1e-5 * scale


def test_noise_sigma_matches_snr_definition():
    cfg = SimulationConfig(shape=(4, 16, 16), ncoils=4, R=2.0, nseg=8, snr=20.0, seed=5, noise_samples=256,
                           prep_loop_order=None)
    ks, ph = simulate(cfg)
    clean, _ = simulate(SimulationConfig(**{**cfg.__dict__, "snr": None}))
    # mean |S| over the mask and all (n, tau, TE), from signal() independently of the simulator's loop
    idx = np.flatnonzero(ph.mask.ravel())
    m = {k: torch.from_numpy(ph.maps[k].ravel()[idx].astype(np.float64)) for k in ph.maps}
    s = signal(m["A"], m["T1"], m["T2"], m["T2star"], m["Phase0"], m["B0"], ks.seq)
    sigma_def = float(s.abs().mean()) / cfg.snr
    assert ks.meta["sigma"] == pytest.approx(sigma_def, rel=1e-9)
    assert ks.noise.shape == (4, 256) and ks.noise.dtype == np.complex64
    sigma_prescan = float(np.sqrt(np.mean(np.abs(ks.noise) ** 2)))
    assert sigma_prescan == pytest.approx(sigma_def, rel=0.10)
    added = ks.data - clean.data
    assert float(np.sqrt(np.mean(np.abs(added) ** 2))) == pytest.approx(sigma_def, rel=0.10)
    assert abs(np.mean(added.real * added.imag)) < 0.1 * sigma_def**2  # circular noise
    assert clean.noise is None and clean.meta["sigma"] == 0.0


def test_seeded_and_shapes():
    a, pa = simulate(tiny_fixture_config())
    b, _ = simulate(tiny_fixture_config())
    c, _ = simulate(SimulationConfig(**{**tiny_fixture_config().__dict__, "seed": 2}))
    assert np.array_equal(a.data, b.data) and np.array_equal(a.noise, b.noise)
    assert not np.array_equal(a.data, c.data)
    assert a.data.shape == (2, 3, 4 * 32, 16) and a.data.dtype == np.complex64
    assert a.acceleration == 2.0 and a.seq.nseg == 8 and a.seq.tau_ms == (0.0, 30.0, 60.0, 90.0)
    assert a.geometry.matrix == (16, 16, 4) and a.geometry.voxel_mm[2] == 4.0
    assert pa.sens.shape == (2, 4, 16, 16)
    assert np.array_equal(a.meta["shot"], np.sort(a.meta["shot"]))


def test_presets_and_config_round_trip():
    paper = SimulationConfig(preset="paper-sim").seq
    assert paper.tau_ms == (25.0, 50.0, 70.0, 90.0) and paper.te_ms == (4.5, 11.2, 17.9, 24.6)
    assert (paper.tr_ms, paper.flip_deg, paper.nseg) == (30.0, 10.0, 80)
    phantom = SimulationConfig(preset="phantom").seq
    assert phantom.tau_ms == (0.0, 30.0, 60.0, 90.0, 120.0) and phantom.te_ms == (3.7, 9.4, 15.1)
    assert (phantom.tr_ms, phantom.flip_deg, phantom.nseg) == (20.0, 4.0, 128)
    cfg = SimulationConfig(prep_loop_order="tau-outer", fov_mm=(200.0, 200.0, 40.0), calib=(5, 3))
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.acquisition_order == "tau-outer" and cfg.seq.prep_loop_order == "tau-outer"
    with pytest.raises(ValueError, match="preset"):
        SimulationConfig(preset="nope")
    with pytest.raises(ValueError, match="prep_loop_order"):
        SimulationConfig(prep_loop_order="shots-outer")
    default = SimulationConfig().seq
    assert default.prep_loop_order == "shot-outer" and default.prep_dummies == default.ntau
    assert SimulationConfig(prep_loop_order=None, prep_dummies=3).seq.prep_dummies == 0


def test_tau_outer_simulation_runs_in_tau_order():
    ks, _ = simulate(
        SimulationConfig(shape=(4, 16, 16), ncoils=2, nseg=8, prep_loop_order="tau-outer", seed=3)
    )
    assert np.all(np.diff(ks.tau) >= 0) and ks.meta["acquisition_order"] == "tau-outer"


def test_fast_lines_equal_dense_path_with_many_readouts():
    """32 readouts per segment (the rank-K q^n synthesis is then a real reduction) vs one dense FFT per line's
    own signal (start-up-transient shots included)."""
    cfg = SimulationConfig(shape=(4, 10, 9), ncoils=2, R=2.0, snr=None, seed=5, phantom="nist", preset="demo")
    ks, ph = simulate(cfg)
    shot_tau = np.zeros(int(ks.meta["shot"].max()) + 1, dtype=np.int64)
    shot_tau[ks.meta["shot"]] = ks.tau
    fac = voxel_factors(ph, ks.seq, shot_tau)
    scale = np.abs(ks.data).max()
    for line in range(0, ks.nlines, 3):
        shot = int(ks.meta["shot"][line])
        img = fac.scatter(fac.values(int(ks.tau[line]), int(ks.seg[line]), shot))[None] * ph.sens[:, None]
        k = fftc_np(img, (-3, -2, -1))[:, :, ks.kz[line], ks.ky[line], :]
        assert np.abs(k - ks.data[:, :, line]).max() < 1e-5 * scale

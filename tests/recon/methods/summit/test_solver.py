"""SUMMIT solver on a tiny simulated phantom: it really fits the data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qmapinr.recon.config import HashGridConfig, SummitConfig
from qmapinr.recon.kspace import MAP_UNITS
from qmapinr.recon.methods.summit.solver import summit_recon
from qmapinr.recon.sim.simulate import SimulationConfig, simulate

TINY = SummitConfig(epochs=6, lr=5e-3, batch_x=4, coil_refine_iters=2,
                    map_grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, implementation="torch"))


@pytest.fixture(scope="module")
def tiny_kspace():
    torch.set_num_threads(1)
    # 8 readouts per segment: the start-up transient lasts ~4 cycles; 16 dummy preparations let it decay first
    ks, ph = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=2, snr=30, seed=1, nseg=8, prep_dummies=16))
    return ks, ph


def test_data_consistency_improves_monotonically_over_first_epochs(tiny_kspace):
    ks, _ = tiny_kspace
    out = summit_recon(ks, TINY)
    hist = out.info["history"]
    assert len(hist) == TINY.epochs
    assert all(b < 1.02 * a for a, b in zip(hist, hist[1:], strict=False)), hist  # Adam: small bumps only
    assert hist[-1] < 0.95 * hist[0], hist


def test_outputs_are_finite_masked_maps(tiny_kspace):
    ks, ph = tiny_kspace
    out = summit_recon(ks, dataclasses.replace(TINY, epochs=2))
    nx, ny, nz = ks.geometry.matrix
    assert set(out.maps) == {"A", "T1", "T2", "T2star", "B0", "Phase0", "Residual"} <= set(MAP_UNITS)
    for name, arr in out.maps.items():
        assert arr.shape == (nz, ny, nx) and arr.dtype == np.float32
        assert np.isfinite(arr).all(), name
        assert np.all(arr[~out.mask] == 0), name
    assert np.all(out.maps["T1"][out.mask] > 0)
    # the support found from the data overlaps the phantom's head
    overlap = (out.mask & ph.mask).sum() / ph.mask.sum()
    assert overlap > 0.8
    t = out.info["timings"]
    assert t["epochs_run"] == 2 and t["total_s"] > 0 and {"inr_s", "forward_s", "backward_step_s"} <= set(t)
    assert out.info["coil_compression"] is None and out.info["config"].coil_keep_rss == "off"  # few coils: as is


def test_exact_and_structured_forward_give_close_losses(tiny_kspace):
    ks, _ = tiny_kspace
    cfg = dataclasses.replace(TINY, epochs=1, coil_mode="ratio")
    a = summit_recon(ks, dataclasses.replace(cfg, forward="structured", rank=8)).info["history"][0]
    b = summit_recon(ks, dataclasses.replace(cfg, forward="exact")).info["history"][0]
    assert a == pytest.approx(b, rel=1e-3)


def test_bad_forward_name_is_rejected(tiny_kspace):
    ks, _ = tiny_kspace
    with pytest.raises(ValueError, match="forward=.fast. is not allowed"):
        summit_recon(ks, dataclasses.replace(TINY, epochs=1, coil_mode="ratio", forward="fast"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (CPU-only CI)")
def test_runs_on_cuda(tiny_kspace):
    ks, _ = tiny_kspace
    out = summit_recon(ks, dataclasses.replace(TINY, epochs=1, device="cuda"))
    assert np.isfinite(out.maps["T1"]).all()


def test_long_epochs_shorten_the_schedule_and_coil_energy_compresses(tiny_kspace):
    ks, _ = tiny_kspace  # nx 16, 2 coils
    cfg = dataclasses.replace(TINY, epochs=4, batch_x=2, schedule_steps_per_epoch=4, coil_energy=0.5,
                              min_virtual_coils=1, compress_above_coils=0)
    out = summit_recon(ks, cfg)  # 8 steps per epoch against a reference of 4: half the epochs
    assert out.info["timings"]["epochs_run"] == 2 and out.info["config"].epochs == 2
    assert any("schedule shortened" in w for w in out.info["warnings"])
    assert out.info["coil_compression"]["n_virtual"] == 1  # 2 coils, half the energy: the strongest eigen-coil
    assert out.info["config"].coil_keep_rss == "on"  # "auto" keeps the coil RSS on compressed data
    assert all(np.isfinite(v).all() for v in out.maps.values())

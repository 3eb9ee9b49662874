"""Start-up transient as line groups: shots from the acquisition order, the grouped model is exact on
history-exact simulated data (step-by-step shots), and the gadget buffer keeps the order it needs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qmapinr.gadgets.stages import buffer_kspace, split_noise
from qmapinr.recon.config import SummitConfig
from qmapinr.recon.methods.summit.solver import build_forward
from qmapinr.recon.physics.fft import readout_ifft
from qmapinr.recon.physics.history import display_groups, shot_sequence, transient_shots, with_shot_groups
from qmapinr.recon.sim.mrd_writer import read_mrd, write_mrd
from qmapinr.recon.sim.simulate import SimulationConfig, simulate


def test_shot_sequence_splits_on_tau_change_and_segment_reset():
    # two shot-outer cycles of 2 taus, 3 readouts each, then a tau-outer-like repeat of tau 1
    tau = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1])
    seg = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2])
    perm = np.random.default_rng(0).permutation(tau.size)  # line storage order is irrelevant
    shot, shot_tau = shot_sequence(tau[perm], seg[perm], np.arange(tau.size)[perm])
    np.testing.assert_array_equal(shot_tau, [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(shot, np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4])[perm])


def _truth_residual(ks, ph) -> float:
    """Relative L2 residual of the exact forward model with the true maps and coils against the lines."""
    fwd = build_forward(ks, SummitConfig(forward="exact"), torch.device("cpu"))
    maps = {k: torch.from_numpy(np.asarray(ph.maps[k], np.float32)).permute(2, 0, 1)
            for k in ("A", "T1", "T2", "T2star", "B0", "Phase0")}
    for k in ("T1", "T2", "T2star"):
        maps[k] = maps[k].clamp_min(1.0)  # background
    pred = fwd(maps, torch.from_numpy(ph.sens).permute(3, 0, 1, 2))
    y = readout_ifft(ks)
    return float((pred - y).abs().pow(2).sum() / y.abs().pow(2).sum()) ** 0.5


@pytest.mark.parametrize("order", ["shot-outer", "tau-outer"])
def test_grouped_model_reproduces_history_exact_data(order):
    ks, ph = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=4, snr=None, seed=2, nseg=16,
                                       prep_loop_order=order))
    grouped = with_shot_groups(ks)
    assert grouped.seq.prep_groups is not None
    assert _truth_residual(grouped, ph) < 1e-5
    assert _truth_residual(ks, ph) > 1e-2  # the steady-state model alone is wrong on these data
    # every physical tau is represented, and grouping is idempotent
    assert sorted(set(np.asarray(grouped.seq.prep_groups.group_tau)[display_groups(grouped.seq)])) == [0, 1, 2, 3]
    assert with_shot_groups(grouped) is grouped


def test_no_groups_without_history_or_order():
    ks, _ = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=4, snr=None, seed=2, nseg=16,
                                      prep_loop_order=None))
    assert with_shot_groups(ks) is ks  # the closed form: every shot is steady by definition
    ks, _ = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=4, snr=None, seed=2, nseg=16))
    assert with_shot_groups(dataclasses.replace(ks, acq_order=None)).seq.prep_groups is None
    # long segments: the transient has decayed after the dummy cycle
    seq = dataclasses.replace(ks.seq, nseg=512, prep_dummies=8)
    assert not transient_shots(seq, np.tile(np.arange(seq.ntau), 3)).any()


def test_buffer_keeps_the_acquisition_order_for_the_groups(tmp_path):
    ks, ph = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=4, snr=None, seed=2, nseg=16))
    path = tmp_path / "h.h5"
    write_mrd(path, ks, ph)
    header, acqs = read_mrd(path)
    (received,) = [o for o in buffer_kspace(split_noise(iter(acqs), header), header) if hasattr(o, "acq_order")]
    a, b = with_shot_groups(ks), with_shot_groups(received)
    assert a.seq == b.seq
    # same group for the same line, whatever order the two containers store their lines in
    def groups(grouped, physical):
        return {(int(y), int(z), int(s), int(t)): int(g) for y, z, s, t, g in
                zip(physical.ky, physical.kz, physical.seg, physical.tau, grouped.tau, strict=True)}

    assert groups(a, ks) == groups(b, received)

"""Sequence-history signal model against an independent step-by-step spoiled-GRE Mz simulation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from qmapinr.recon.kspace import SequenceParams
from qmapinr.recon.physics.signal import (
    played_preparations,
    pre_prep_mz,
    prep_coefficients,
    recovery_ab,
    shot_coefficients,
    signal,
    steady_state_terms,
)

SEQ = SequenceParams(tr_ms=20.0, te_ms=(3.7, 9.4), flip_deg=8.0, tau_ms=(0.0, 30.0, 60.0, 90.0), nseg=10,
                     inversion_efficiency=-0.95)
TISSUES = [(832.0, 79.2), (1331.0, 110.0), (4470.0, 2030.0), (300.0, 40.0)]  # WM, GM, CSF, short


def _step_by_step(t1, t2, seq, preps):
    """Mz (units of M0) before every excitation of every played preparation, from thermal equilibrium.

    Written with plain floats, one RF pulse and one TR at a time; ``preps`` is the tau index of every
    preparation in time order. Returns a list of per-preparation lists of nseg values.
    """
    e1 = math.exp(-seq.tr_ms / t1)
    ca = math.cos(math.radians(seq.flip_deg))
    mz, out = 1.0, []
    for t in preps:
        mz = seq.inversion_efficiency * math.exp(-seq.tau_ms[t] / t2) * mz  # T2-prep + inversion
        seg = []
        for _ in range(seq.nseg):
            seg.append(mz)  # the readout samples sin(alpha) * Mz before its pulse
            mz = mz * ca  # excitation; transverse part spoiled
            mz = 1.0 - (1.0 - mz) * e1  # T1 recovery over one TR
        mz = 1.0 - (1.0 - mz) * math.exp(-seq.recovery_delay_ms / t1)  # free recovery before the next prep
        out.append(seg)
    return out


def _model_mz(seq, c):
    """Mz_n = ss (1 - c q^n) for every tissue: ``(ntissue, len(c[0]), nseg)``."""
    t1 = torch.tensor([t for t, _ in TISSUES], dtype=torch.float64)
    ss, q = steady_state_terms(t1, seq)
    n = torch.arange(seq.nseg, dtype=torch.float64)
    return ss[:, None, None] * (1.0 - c[..., None] * q[:, None, None] ** n)


def _acquired_shots(order, ntau, nshots):
    """tau index of every acquired shot, in time order, for ``nshots`` shots per tau."""
    if order == "tau-outer":
        return np.repeat(np.arange(ntau), nshots)
    return np.tile(np.arange(ntau), nshots)


@pytest.mark.parametrize("order", ["shot-outer", "tau-outer"])
@pytest.mark.parametrize("delay_ms, dummies", [(0.0, 0), (250.0, 0), (0.0, 3), (120.0, 5)])
def test_history_of_every_shot_equals_step_by_step(order, delay_ms, dummies):
    seq = dataclasses.replace(SEQ, prep_loop_order=order, recovery_delay_ms=delay_ms, prep_dummies=dummies)
    shot_tau = _acquired_shots(order, seq.ntau, 3)
    prep_tau, acquired = played_preparations(shot_tau, seq)
    assert len(prep_tau) == len(shot_tau) + dummies * (seq.ntau if order == "tau-outer" else 1)
    assert np.array_equal(prep_tau[acquired], shot_tau)
    t1 = torch.tensor([t for t, _ in TISSUES], dtype=torch.float64)
    t2 = torch.tensor([t for _, t in TISSUES], dtype=torch.float64)
    got = _model_mz(seq, shot_coefficients(t1, t2, seq, shot_tau))  # (ntissue, nshots, nseg)
    for i, (a, b) in enumerate(TISSUES):
        ref = np.array(_step_by_step(a, b, seq, prep_tau))[acquired]
        np.testing.assert_allclose(got[i].numpy(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("order", ["shot-outer", "tau-outer"])
@pytest.mark.parametrize("delay_ms", [0.0, 300.0])
def test_periodic_steady_state_equals_long_step_by_step(order, delay_ms):
    """prep_coefficients / signal() = the step-by-step sequence after many cycles (its periodic state)."""
    seq = dataclasses.replace(SEQ, prep_loop_order=order, recovery_delay_ms=delay_ms)
    cycles = 400
    t1 = torch.tensor([t for t, _ in TISSUES], dtype=torch.float64)
    t2 = torch.tensor([t for _, t in TISSUES], dtype=torch.float64)
    got = _model_mz(seq, prep_coefficients(t1, t2, seq))  # (ntissue, ntau, nseg)
    for i, (a, b) in enumerate(TISSUES):
        if order == "shot-outer":
            mz = np.array(_step_by_step(a, b, seq, list(range(seq.ntau)) * cycles))[-seq.ntau:]
        else:
            mz = np.array([_step_by_step(a, b, seq, [t] * cycles)[-1] for t in range(seq.ntau)])
        np.testing.assert_allclose(got[i].numpy(), mz, rtol=0, atol=1e-6)
    # the history is not the closed form: CSF before the preparation is far from the FLASH steady state
    closed = pre_prep_mz(t1, t2, dataclasses.replace(seq, prep_loop_order=None))
    assert float((pre_prep_mz(t1, t2, seq) - closed).abs().max()) > 0.1


def test_signal_keeps_the_structured_form_and_closed_form_is_the_default():
    t1 = torch.tensor([900.0, 2500.0], dtype=torch.float64)
    t2 = torch.tensor([70.0, 300.0], dtype=torch.float64)
    one, zero = torch.ones_like(t1), torch.zeros_like(t1)
    for order in (None, "tau-outer", "shot-outer"):
        seq = dataclasses.replace(SEQ, prep_loop_order=order, recovery_delay_ms=100.0, te_ms=(0.0,))
        s = signal(one, t1, t2, one, zero, zero, seq)[:, 0].real  # (2, ntau, nseg); TE = 0: h = sin(alpha)
        a, b = recovery_ab(t1, t2, seq)
        _, q = steady_state_terms(t1, seq)
        n = torch.arange(seq.nseg, dtype=torch.float64)
        want = math.sin(math.radians(seq.flip_deg)) * (a[..., None] + b[..., None] * q[:, None, None] ** n)
        torch.testing.assert_close(s, want, rtol=1e-12, atol=1e-14)
    c = prep_coefficients(t1, t2, dataclasses.replace(SEQ, prep_loop_order=None, recovery_delay_ms=500.0))
    tau = torch.tensor(SEQ.tau_ms, dtype=torch.float64)
    torch.testing.assert_close(c, 1.0 - SEQ.inversion_efficiency * torch.exp(-tau / t2[:, None]))


def test_shot_coefficients_reach_the_periodic_state_and_broadcast():
    seq = dataclasses.replace(SEQ, prep_loop_order="shot-outer", prep_dummies=0)
    t1 = torch.tensor([[832.0, 4470.0]], dtype=torch.float64)  # voxel dims (1, 2)
    t2 = torch.tensor([[79.2, 2030.0]], dtype=torch.float64)
    shot_tau = _acquired_shots("shot-outer", seq.ntau, 60)
    c = shot_coefficients(t1, t2, seq, shot_tau)
    assert c.shape == (1, 2, shot_tau.size)
    per = prep_coefficients(t1, t2, seq)
    torch.testing.assert_close(c[..., -seq.ntau:], per, rtol=0, atol=1e-9)
    assert float((c[..., : seq.ntau] - per).abs().max()) > 1e-2  # the first cycle is a transient


def test_sequence_params_validate_the_loop():
    with pytest.raises(ValueError, match="prep_loop_order"):
        dataclasses.replace(SEQ, prep_loop_order="outer")
    with pytest.raises(ValueError, match="recovery_delay_ms"):
        dataclasses.replace(SEQ, recovery_delay_ms=-1.0)
    with pytest.raises(ValueError, match="prep_dummies"):
        dataclasses.replace(SEQ, prep_dummies=-2)

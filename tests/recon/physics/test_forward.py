"""Forward operators: adjointness, structured (rank-K q^n) vs exact model, agreement with the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from adjoint import assert_adjoint  # tests/helpers

from qmapinr.recon.kspace import SequenceParams
from qmapinr.recon.physics.forward import (
    ExactForward,
    LineSubspaceOp,
    StructuredForward,
    qn_basis,
    structured_basis,
)
from qmapinr.recon.physics.signal import prep_coefficients, signal

SEQ = SequenceParams(tr_ms=30.0, te_ms=(4.5, 11.2, 17.9, 24.6), flip_deg=10.0, tau_ms=(25.0, 50.0, 70.0, 90.0),
                     nseg=80)


def _lines(nz: int, ny: int, n: int, seq: SequenceParams, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, ny, (n,), generator=g), torch.randint(0, nz, (n,), generator=g),
            torch.randint(0, seq.nseg, (n,), generator=g), torch.randint(0, seq.ntau, (n,), generator=g))


def _maps(bx: int, nz: int, ny: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(lo, hi):
        return lo + (hi - lo) * torch.rand(bx, nz, ny, generator=g)

    return {"A": r(0.5, 1.5), "T1": r(300, 4000), "T2": r(40, 300), "T2star": r(20, 90),
            "Phase0": r(-3, 3), "B0": r(-40, 40)}


def test_signal_matches_hand_computed_value():
    """docs/design.md closed form evaluated by hand for one WM-like voxel."""
    a, t1, t2, t2s, phi0, df = 0.7, 832.0, 79.2, 53.2, 0.3, 12.0
    e, t, n = 2, 1, 17
    e1 = math.exp(-SEQ.tr_ms / t1)
    al = math.radians(SEQ.flip_deg)
    te, tau = SEQ.te_ms[e], SEQ.tau_ms[t]
    mag = a * (1 - e1) / (1 - e1 * math.cos(al)) * math.sin(al) * math.exp(-te / t2s)
    mag *= 1 + (-1 * math.exp(-tau / t2) - 1) * (e1 * math.cos(al)) ** n
    phase = phi0 + 2 * math.pi * df * te * 1e-3
    expected = mag * complex(math.cos(phase), math.sin(phase))
    args = [torch.tensor([v], dtype=torch.float64) for v in (a, t1, t2, t2s, phi0, df)]
    got = complex(signal(*args, SEQ)[0, e, t, n])
    assert abs(got - expected) < 1e-12 * max(abs(expected), 1)


def test_tau_outer_fixed_point_is_the_steady_state_of_repeated_shots():
    """tau-outer c_tau equals the limit of simulating shot after shot with the Bloch recursion."""
    import dataclasses

    seq = dataclasses.replace(SEQ, prep_loop_order="tau-outer", recovery_delay_ms=150.0, nseg=20)
    t1, t2 = 1500.0, 100.0
    c = prep_coefficients(torch.tensor([t1], dtype=torch.float64), torch.tensor([t2], dtype=torch.float64), seq)[0]
    e1, ca = math.exp(-seq.tr_ms / t1), math.cos(math.radians(seq.flip_deg))
    mss = (1 - e1) / (1 - e1 * ca)
    for k, tau in enumerate(seq.tau_ms):
        mz = 1.0
        for _ in range(200):  # shots of one tau until the start magnetisation converges
            mz = -math.exp(-tau / t2) * mz  # T2-prep + inversion (B = -1)
            first = mz
            for _ in range(seq.nseg):
                mz = mz * e1 * ca + (1 - e1)  # one readout + TR of T1 recovery
            mz = 1 - (1 - mz) * math.exp(-seq.recovery_delay_ms / t1)
        expected_c = 1 - first / mss  # S(n) ~ mss [1 - c q^n] at n = 0
        assert float(c[k]) == pytest.approx(expected_c, rel=1e-9)


def test_line_subspace_op_is_adjoint():
    nz, ny, bx, c = 6, 10, 2, 3
    ky, kz, seg, tau = _lines(nz, ny, 200, SEQ)
    basis = torch.randn(SEQ.ntau, SEQ.nseg, 5, generator=torch.Generator().manual_seed(1))
    op = LineSubspaceOp(basis.to(torch.float64), ky, kz, seg, tau, (nz, ny))
    assert_adjoint(op, (bx, c, 5, nz, ny), (bx, c, 200))


@pytest.mark.parametrize("rank,tol", [(6, 3e-3), (8, 2e-4)])
def test_structured_forward_matches_exact_forward(rank, tol):
    """The rank-K q^n model reproduces the exact per-(n, tau, TE) model within the basis error (docs/design.md)."""
    nz, ny, bx = 6, 8, 2
    lines = _lines(nz, ny, 300, SEQ)
    maps = _maps(bx, nz, ny)
    sens = torch.randn(bx, 3, nz, ny, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    sf = StructuredForward(SEQ, *lines, (nz, ny), rank=rank)
    ex = ExactForward(SEQ, *lines, (nz, ny))
    a, b = sf(maps, sens), ex(maps, sens)
    assert float((a - b).norm() / b.norm()) < tol
    assert sf.basis_error < 10 * tol


def test_qn_basis_error_drops_with_rank():
    errs = [qn_basis(SEQ, k)[1] for k in (2, 4, 6, 8)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 1e-3


def test_structured_basis_layout():
    v, _ = qn_basis(SEQ, 3)
    b = structured_basis(v, SEQ.ntau)
    assert b.shape == (SEQ.ntau, SEQ.nseg, 1 + 3 * SEQ.ntau)
    assert torch.all(b[..., 0] == 1)
    # atoms of tau t are zero at every other tau
    for t in range(SEQ.ntau):
        other = [u for u in range(SEQ.ntau) if u != t]
        assert torch.all(b[other][..., 1 + 3 * t: 1 + 3 * (t + 1)] == 0)


@pytest.mark.parametrize("order", [None, "shot-outer", "tau-outer"])
def test_forward_reproduces_simulated_file(order):
    """True maps + true coil maps through the structured forward reproduce the noiseless simulation.

    With a loop order the simulator plays the exact history from thermal equilibrium; 200 dummy preparations
    bring it to the periodic steady state that the structured forward models.
    """
    from qmapinr.recon.physics.fft import readout_ifft
    from qmapinr.recon.sim.simulate import SimulationConfig, simulate

    ks, ph = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=2, snr=None, seed=3, nseg=12,
                                       prep_loop_order=order, recovery_delay_ms=30.0, prep_dummies=200))
    nx, ny, nz = ks.geometry.matrix
    hyb = readout_ifft(ks)
    fwd = StructuredForward(ks.seq, ks.ky, ks.kz, ks.seg, ks.tau, (nz, ny), rank=8)
    maps = {k: torch.from_numpy(np.maximum(ph.maps[k], 1.0) if k in ("T1", "T2", "T2star") else ph.maps[k])
            .permute(2, 0, 1).float() for k in ("A", "T1", "T2", "T2star", "Phase0", "B0")}
    sens = torch.from_numpy(ph.sens).permute(3, 0, 1, 2)
    pred = fwd(maps, sens)
    assert float((pred - hyb).norm() / hyb.norm()) < 1e-4


def test_transient_groups_use_low_rank_corrections_of_their_steady_group():
    """A scan whose first shots are transient: each such group gets K' < K correction atoms on top of its steady
    group's (physics.history.transient_corrections), and the lines equal those of per-group atoms to 1e-5."""
    from qmapinr.recon.physics.history import transient_corrections, with_shot_groups
    from qmapinr.recon.sim.simulate import SimulationConfig, simulate

    ks, _ = simulate(SimulationConfig(shape=(8, 16, 16), ncoils=2, R=2, snr=None, seed=3, nseg=4,
                                      prep_loop_order="shot-outer"))
    ks = with_shot_groups(ks)
    groups = ks.seq.prep_groups
    assert groups is not None and min(groups.group_shot) < 0 < max(groups.group_shot)  # steady and transient
    corr = transient_corrections(ks.seq, 8)
    assert corr and all(0 < w.shape[0] < 8 for _, w in corr.values())
    nx, ny, nz = ks.geometry.matrix
    fwd = StructuredForward(ks.seq, ks.ky, ks.kz, ks.seg, ks.tau, (nz, ny), rank=8)
    assert fwd.op.natoms < 1 + 8 * ks.seq.ntau
    per_group = StructuredForward(ks.seq, ks.ky, ks.kz, ks.seg, ks.tau, (nz, ny), rank=8)
    per_group.corr, per_group.full = None, torch.arange(ks.seq.ntau)
    per_group.op = LineSubspaceOp(structured_basis(per_group.v, ks.seq.ntau), *(torch.as_tensor(a) for a in
                                  (ks.ky, ks.kz, ks.seg, ks.tau)), (nz, ny))
    maps = _maps(2, nz, ny)
    sens = torch.randn(2, 2, nz, ny, dtype=torch.complex64, generator=torch.Generator().manual_seed(4))
    a, b = fwd(maps, sens), per_group(maps, sens)
    assert float((a - b).norm() / b.norm()) < 1e-5
    exact = ExactForward(ks.seq, ks.ky, ks.kz, ks.seg, ks.tau, (nz, ny))(maps, sens)
    assert float((a - exact).norm() / exact.norm()) < 2e-4

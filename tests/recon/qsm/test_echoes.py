"""Echo-based field refinement (recon.qsm.echoes) and MEDI edge weights (recon.qsm.tv)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qmapinr.recon.qsm.echoes import echo_images, echo_operators, field_update, joint_temporal_basis
from qmapinr.recon.qsm.fieldfit import fit_field
from qmapinr.recon.qsm.tv import edge_weights
from qmapinr.recon.sim.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def noiseless():
    torch.set_num_threads(1)
    return simulate(SimulationConfig(shape=(8, 16, 16), R=4, snr=None, seed=0))


def _perturbed(ph):
    maps = dict(ph.maps)
    maps["B0"] = ph.maps["B0"] + 3.0 * np.sin(np.arange(16) / 2.0)[None, None, :]  # a 3 Hz error along x
    return maps


@pytest.mark.parametrize(("tol", "limit"), [(1e-7, 1e-4), (1e-3, 2e-3)])
def test_echo_operator_reproduces_the_simulator_and_is_adjoint(noiseless, tol, limit):
    ks, ph = noiseless
    ops, lines, index = echo_operators(ks, ph.maps, ph.mask, ph.sens, tol=tol)
    one = torch.ones(index.size, dtype=torch.complex64)
    for op, y in zip(ops, lines, strict=True):  # the true maps and u = 1 give the measured lines
        assert float((op.forward(one) - y).norm() / y.norm()) < limit
    g = torch.Generator().manual_seed(0)
    x = torch.randn(index.size, dtype=torch.complex64, generator=g)
    y = torch.randn(lines[1].shape, dtype=torch.complex64, generator=g)
    lhs = complex(torch.vdot(ops[1].forward(x).flatten(), y.flatten()))
    rhs = complex(torch.vdot(x, ops[1].adjoint(y)))
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)


def test_joint_basis_error_is_within_tol_and_shrinks_with_it():
    g = torch.Generator().manual_seed(1)
    c = 1.0 + torch.rand(500, 4, dtype=torch.float64, generator=g)
    q = 0.9 + 0.09 * torch.rand(500, dtype=torch.float64, generator=g)
    u3, w3, e3 = joint_temporal_basis(c, q, 32, tol=1e-3)
    u6, w6, e6 = joint_temporal_basis(c, q, 32, tol=1e-6)
    assert e3 <= 1.5e-3 and e6 <= 1.5e-6 and w3.shape[0] < w6.shape[0] <= 4 * 32
    assert u3.shape == (500, w3.shape[0]) and w3.shape[1] == 4 * 32


def test_field_update_and_echo_images_remove_a_b0_error(noiseless):
    ks, ph = noiseless
    maps = _perturbed(ph)
    m = ph.mask
    before = np.sqrt(((maps["B0"] - ph.maps["B0"])[m] ** 2).mean())
    df, info = field_update(ks, maps, m, ph.sens)
    e = (maps["B0"] + df - ph.maps["B0"])[m]
    assert before > 2.0 and np.sqrt(((e - e.mean()) ** 2).mean()) < 0.1 * before
    assert info["residual"][-1] < 0.1 * info["residual"][0]
    ec, _ = echo_images(ks, maps, m, ph.sens)
    e = (fit_field(ec, ks.seq.te_ms, m).b0_hz - ph.maps["B0"])[m]
    assert np.sqrt(((e - e.mean()) ** 2).mean()) < 0.1 * before


def test_edge_weights_mark_the_requested_fraction():
    mag = np.ones((8, 16, 16))
    mag[:, :, 8:] = 3.0  # one edge along x
    mask = np.ones(mag.shape, bool)
    w = edge_weights(np.stack([mag, mag]), mask, (2.0, 2.0, 2.0), edge_frac=0.05)
    assert w[0][:, :, 7].max() == 0.0 and w[0][:, :, :7].min() == 1.0  # the x difference across the edge
    assert w[1].min() == 1.0 and w[2].min() == 1.0


def test_echo_operator_coil_chunks_give_the_same_lines(noiseless):
    ks, ph = noiseless
    ops, lines, index = echo_operators(ks, ph.maps, ph.mask, ph.sens)
    op = ops[0]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(index.size, dtype=torch.complex64, generator=g)
    y = torch.randn(lines[0].shape, dtype=torch.complex64, generator=g)
    whole = op.forward(x), op.adjoint(y)
    assert op.chunk == op.ncoils > 1
    op.chunk = 1  # one coil at a time (what a small chunk_mb gives on a large volume)
    for a, b in zip((op.forward(x), op.adjoint(y)), whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_residual_norm_is_accumulated_in_double():
    from qmapinr.recon.qsm.echoes import _norm
    x = torch.randn(4, 12800, 128, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    x[:, :, 0] *= 30  # a dominant column, as the k-space centre
    ref = float(x.to(torch.complex128).abs().square().sum()) ** 0.5
    assert abs(_norm(x) - ref) < 1e-6 * ref
    assert abs(_norm(x.transpose(0, 1).contiguous()) - ref) < 1e-6 * ref

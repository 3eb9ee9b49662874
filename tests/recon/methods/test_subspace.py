"""Temporal-subspace SENSE operator, 3-D TV ADMM and the end-to-end subspace baseline."""

import dataclasses

import numpy as np
import pytest
import torch
from adjoint import assert_adjoint  # tests/helpers
from scipy.ndimage import binary_erosion
from synthetic import tiny_dataset  # tests/helpers

from qmapinr.recon.config import from_properties
from qmapinr.recon.methods.subspace import (
    SubspaceConfig,
    admm_tv,
    grad3,
    grad3_adjoint,
    group_shrink,
    subspace_recon,
)
from qmapinr.recon.optim.cg import conjugate_gradient
from qmapinr.recon.physics.dictionary import default_dictionary
from qmapinr.recon.physics.fft import readout_ifft
from qmapinr.recon.physics.sense import SenseSubspaceOp


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return tiny_dataset(matrix=(16, 14, 8), ncoils=4, acceleration=2.0, seed=0)


@pytest.fixture(scope="module")
def op_and_data(tiny):
    basis, _, _ = default_dictionary(tiny.kspace.seq).svd_basis(4)
    sens = torch.from_numpy(np.ascontiguousarray(np.transpose(tiny.sens, (3, 0, 1, 2))))
    op = SenseSubspaceOp(torch.from_numpy(basis), tiny.kspace, sens, batch_bytes=2**20)
    return op, readout_ifft(tiny.kspace)


def _rand(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def test_sense_operator_adjoint_and_normal(op_and_data):
    op, y = op_and_data
    assert op.bx < op.shape[0]  # the batching over x is exercised
    assert_adjoint(op, tuple(op.shape), tuple(y.shape), dtype=torch.complex64, rtol=1e-4)


def test_tv_gradient_adjoint_and_shrink():
    x, g = _rand((5, 2, 3, 4, 6), 2), _rand((3, 5, 2, 3, 4, 6), 3)
    lhs = torch.vdot(grad3(x).flatten(), g.flatten())
    rhs = torch.vdot(x.flatten(), grad3_adjoint(g).flatten())
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)
    const = torch.ones((4, 1, 2, 3, 5), dtype=torch.complex64)
    assert float(grad3(const).abs().max()) == 0.0
    v = _rand((3, 2, 1, 2, 2, 2), 4)
    shrunk = group_shrink(v, 0.5)
    norm_in = (v.abs() ** 2).sum((0, 2, 3)).sqrt()
    norm_out = (shrunk.abs() ** 2).sum((0, 2, 3)).sqrt()
    assert torch.allclose(norm_out, torch.clamp(norm_in - 0.5, min=0.0), atol=1e-5)


def test_cg_and_admm_lower_the_residual(op_and_data):
    op, y = op_and_data
    x0 = torch.zeros(op.shape, dtype=torch.complex64)
    x_cg, _ = conjugate_gradient(op.normal, op.adjoint(y), x0, 10)
    r_cg = float((op.forward(x_cg) - y).norm() / y.norm())
    assert r_cg < 0.2
    _, resid, objective = admm_tv(op, y, lam=1e-3 * float(x_cg.abs().max()), rho=0.05, iters=6, cg_iters=4,
                                  x0=x_cg)
    assert resid[-1] < 0.2 and objective[-1] <= objective[0] * 1.01


def test_subspace_recon_recovers_t1_in_the_interior(tiny):
    qm = subspace_recon(tiny.kspace, SubspaceConfig(rank=4, admm_iters=12, cg_iters=5))
    assert set(qm.maps) == {"A", "T1", "T2", "T2star", "B0", "Phase0", "Residual"}
    assert all(m.shape == (8, 14, 16) and m.dtype == np.float32 for m in qm.maps.values())
    hist = qm.info["residual_history"]
    assert hist[-1] < 0.1 < hist[0] and hist[-1] <= hist[1] * 1.05
    assert qm.info["jsense_residual"][-1] < qm.info["jsense_residual"][0]
    assert 0 < qm.info["basis_error_mean"] <= qm.info["basis_error_max"] < 0.2
    interior = binary_erosion(tiny.mask, iterations=1)
    assert qm.mask[interior].all()
    for name, tol_median, tol_p90 in (("T1", 0.05, 0.10), ("T2", 0.05, 0.10), ("T2star", 0.06, 0.15)):
        rel = np.abs(qm.maps[name][interior] / tiny.maps[name][interior] - 1)
        assert np.median(rel) < tol_median and np.percentile(rel, 90) < tol_p90, name
    assert np.median(np.abs(qm.maps["B0"][interior] - tiny.maps["B0"][interior])) < 1.0  # Hz
    for label in (True, False):  # the two compartments are told apart
        sel = interior & (tiny.compartment == label)
        np.testing.assert_allclose(np.median(qm.maps["T1"][sel]), tiny.maps["T1"][sel][0], rtol=0.05)


def test_subspace_recon_with_known_maps_and_compression(tiny):
    cfg = SubspaceConfig(rank=4, admm_iters=8, cg_iters=5, virtual_coils=3)
    qm = subspace_recon(tiny.kspace, cfg, sens=tiny.sens)
    interior = binary_erosion(tiny.mask, iterations=1)
    rel = np.abs(qm.maps["T1"][interior] / tiny.maps["T1"][interior] - 1)
    assert np.median(rel) < 0.05
    assert "jsense_residual" not in qm.info  # known maps are not refined


def test_config_from_properties():
    cfg = from_properties(SubspaceConfig, {"rank": "5", "lam_tv": "0.01", "refine": "false"})
    assert cfg == dataclasses.replace(SubspaceConfig(), rank=5, lam_tv=0.01, refine=False)

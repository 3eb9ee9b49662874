"""The one conjugate-gradient solver on NumPy (real) and torch (complex) systems."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qmapinr.recon.optim.cg import conjugate_gradient, inner


def _spd(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    return m @ m.T + n * np.eye(n)


def test_numpy_solves_spd_system_to_tolerance():
    a = _spd(30, 0)
    b = np.random.default_rng(1).standard_normal(30)
    x, it = conjugate_gradient(lambda v: a @ v, b, n_iter=200, tol=1e-10)
    assert np.linalg.norm(a @ x - b) <= 1e-9 * np.linalg.norm(b)
    assert 0 < it <= 30 + 5  # exact arithmetic needs at most n steps


def test_torch_complex_from_a_start_runs_fixed_steps():
    g = torch.Generator().manual_seed(0)
    m = torch.complex(torch.randn(20, 20, generator=g, dtype=torch.float64),
                      torch.randn(20, 20, generator=g, dtype=torch.float64))
    a = m.conj().T @ m + 20 * torch.eye(20, dtype=torch.complex128)
    xt = torch.randn(20, generator=g, dtype=torch.complex128)
    b = a @ xt
    x0 = torch.zeros(20, dtype=torch.complex128)
    x, it = conjugate_gradient(lambda v: a @ v, b, x0, n_iter=5)
    assert it == 5  # tol = 0: exactly n_iter steps
    x, it = conjugate_gradient(lambda v: a @ v, b, x0, n_iter=60)
    assert torch.allclose(x, xt, atol=1e-8)


def test_zero_rhs_and_non_positive_curvature_stop():
    b = np.zeros(5)
    x, it = conjugate_gradient(lambda v: v, b, tol=1e-6)
    assert it == 0 and not x.any()
    x, it = conjugate_gradient(lambda v: -v, np.ones(5), n_iter=10)  # negative definite: stops at once
    assert it == 0


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_inner_is_conjugate_linear_in_the_first_argument(kind):
    a = np.array([1 + 2j, 3 - 1j])
    b = np.array([2 - 1j, 1j])
    if kind == "torch":
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    assert inner(a, b) == pytest.approx(float(np.real(np.vdot(np.asarray(a), np.asarray(b)))))

"""Power iteration finds the largest eigenvalue of a Hermitian operator."""

from __future__ import annotations

import torch

from qmapinr.recon.optim.power import power_iteration


def test_largest_eigenvalue_of_a_diagonal_operator():
    d = torch.tensor([0.5, 1.0, 7.0, 2.0], dtype=torch.complex64)
    lam = power_iteration(lambda v: d * v, (4,), iters=60, seed=3)
    assert abs(lam - 7.0) < 1e-3
    assert power_iteration(lambda v: d * v, (4,), iters=60, seed=3) == lam  # seeded

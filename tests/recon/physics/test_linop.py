"""The LinearOperator base: normal defaults to adjoint(forward), calling applies forward."""

from __future__ import annotations

import torch
from adjoint import assert_adjoint  # tests/helpers

from qmapinr.recon.physics.linop import LinearOperator


class _Matrix(LinearOperator):
    def __init__(self, m: torch.Tensor) -> None:
        self.m = m

    def forward(self, x):
        return self.m @ x

    def adjoint(self, y):
        return self.m.conj().T @ y


def test_default_normal_and_call():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 3, generator=g, dtype=torch.float64).to(torch.complex128)
    op = _Matrix(m)
    x = torch.ones(3, dtype=torch.complex128)
    assert torch.allclose(op(x), m @ x)
    assert torch.allclose(op.normal(x), m.conj().T @ (m @ x))
    assert_adjoint(op, (3,), (5,))


def test_adjointness_helper_catches_a_wrong_adjoint():
    class _Wrong(_Matrix):
        def adjoint(self, y):
            return self.m.T @ y * 2

    op = _Wrong(torch.eye(3, dtype=torch.complex128))
    try:
        assert_adjoint(op, (3,), (3,))
    except AssertionError:
        return
    raise AssertionError("a wrong adjoint passed the check")

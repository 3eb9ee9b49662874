"""Chunked product lines: the same lines and gradients as autograd through ``op.forward(a * b)``."""

from __future__ import annotations

import pytest
import torch

from qmapinr.recon.physics.forward import LineSubspaceOp
from qmapinr.recon.physics.product import product_lines

BX, C, E, A, NZ, NY, L = 3, 5, 2, 7, 6, 10, 40


def _op() -> LineSubspaceOp:
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 9, A, generator=g)
    basis[1, :, 3:] = 0  # a tau with fewer active atoms (padded gather)
    lines = [torch.randint(0, hi, (L,), generator=g) for hi in (NY, NZ, 9, 4)]
    return LineSubspaceOp(basis, *lines, (NZ, NY))


def _grads(fn, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor):
    a, b = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
    out = fn(a, b)
    (out * w).real.sum().backward()
    return out.detach(), a.grad, b.grad


@pytest.mark.parametrize("chunk_bytes", [1, 8 * E * A * NZ * NY * 2, None])  # one coil, two coils, default
@pytest.mark.parametrize("pattern", ["summit_real_atoms", "summit_complex_atoms", "lorein_coils"])
def test_product_lines_match_autograd_of_the_coefficient_volume(chunk_bytes, pattern):
    op = _op()
    g = torch.Generator().manual_seed(1)
    if pattern == "lorein_coils":  # a = coil maps (bx, C, 1, 1), b = spatial bases (bx, 1, E, K)
        a = torch.randn(BX, C, 1, 1, NZ, NY, dtype=torch.complex64, generator=g)
        b = torch.randn(BX, 1, E, A, NZ, NY, dtype=torch.complex64, generator=g)
    else:  # a = h_TE * sens (bx, C, E, 1), b = recovery atoms (bx, 1, 1, A)
        a = torch.randn(BX, C, E, 1, NZ, NY, dtype=torch.complex64, generator=g)
        dtype = torch.complex64 if pattern == "summit_complex_atoms" else torch.float32
        b = torch.randn(BX, 1, 1, A, NZ, NY, dtype=dtype, generator=g)
    w = torch.randn(BX, C, E, L, dtype=torch.complex64, generator=g)
    ref, ga_ref, gb_ref = _grads(lambda x, y: op.forward(x * y), a, b, w)
    out, ga, gb = _grads(lambda x, y: product_lines(op, x, y, chunk_bytes), a, b, w)
    assert gb.dtype == b.dtype and ga.shape == a.shape and gb.shape == b.shape
    for got, want in ((out, ref), (ga, ga_ref), (gb, gb_ref)):
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_product_lines_rejects_mismatched_shapes():
    op = _op()
    a = torch.zeros(BX, C, E, 1, NZ, NY, dtype=torch.complex64)
    with pytest.raises(ValueError, match="same batch"):
        product_lines(op, a, torch.zeros(BX + 1, 1, 1, A, NZ, NY))

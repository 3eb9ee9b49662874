"""One adjointness check for every linear operator of the project (``<A x, y> == <x, A^H y>``, normal = A^H A)."""

from __future__ import annotations

import torch


def random_like_shape(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Seeded standard-normal tensor (complex: independent real and imaginary parts)."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        return torch.complex(torch.randn(shape, generator=g, dtype=real), torch.randn(shape, generator=g, dtype=real))
    return torch.randn(shape, generator=g, dtype=dtype)


def assert_adjoint(op, x_shape: tuple[int, ...], y_shape: tuple[int, ...], dtype: torch.dtype = torch.complex128,
                   rtol: float = 1e-10, check_normal: bool = True, seed: int = 0) -> None:
    """Assert ``<op.forward(x), y> == <x, op.adjoint(y)>`` to ``rtol`` for seeded random x, y (and, if
    ``check_normal``, ``op.normal(x) == op.adjoint(op.forward(x))``)."""
    x = random_like_shape(x_shape, dtype, seed)
    y = random_like_shape(y_shape, dtype, seed + 1)
    ax = op.forward(x)
    assert tuple(ax.shape) == tuple(y_shape), f"forward gives {tuple(ax.shape)}, expected {tuple(y_shape)}"
    lhs = torch.vdot(ax.flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    assert abs(lhs - rhs) <= rtol * abs(lhs), f"<Ax, y> = {complex(lhs)} but <x, A^H y> = {complex(rhs)}"
    if check_normal and hasattr(op, "normal"):
        n1, n2 = op.normal(x), op.adjoint(ax)
        scale = float(n2.abs().max())
        assert float((n1 - n2).abs().max()) <= max(rtol, 1e-6) * scale, "normal(x) != adjoint(forward(x))"

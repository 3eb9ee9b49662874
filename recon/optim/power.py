"""Power iteration: the largest eigenvalue of a Hermitian operator (step sizes of ADMM / gradient methods)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from qmapinr.recon.optim.cg import inner


def power_iteration(normal: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], iters: int = 12,
                    seed: int = 0) -> float:
    """Largest eigenvalue of the Hermitian ``normal`` operator on complex64 tensors of ``shape`` (seeded start)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    lam = 0.0
    for _ in range(iters):
        v = v / torch.linalg.vector_norm(v)
        w = normal(v)
        lam = inner(v, w)
        v = w
    return lam

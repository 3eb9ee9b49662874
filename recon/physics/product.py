"""Sampled lines of a product of coefficient images, in cache-sized chunks with a hand-written backward.

Every INR forward of the project has the form ``lines = LineSubspaceOp(a * b)`` with a broadcast product of a
per-coil image ``a`` and per-atom images ``b`` (SUMMIT: ``a = h_TE * sens`` ``(bx, C, E, 1, nz, ny)``,
``b = rec`` ``(bx, 1, 1, A, nz, ny)``; LoREIN: ``a = sens``, ``b = U``). The coefficient volume
``(bx, C, E, A, nz, ny)`` is the largest tensor of an epoch (862 MB per 4-x batch at paper size); through
autograd it is written, FFT'd, gathered and kept for the backward, where its gradient volume is scattered,
inverse FFT'd and reduced twice -- about ten passes over main memory per batch, which is what an epoch costs on a
2-core host (docs/benchmarks/epoch.md).

:func:`product_lines` computes the same lines one ``(x, coil chunk)`` at a time, the chunk sized to stay in the
processor cache (``chunk_bytes``), and keeps only ``a`` and ``b`` for the backward, which recomputes per chunk:
scatter of the line gradient, inverse FFT, and the two reductions ``grad_a = sum G conj(b)``,
``grad_b = sum G conj(a)`` (real part for a real ``b``). Same operator, same adjoint as
:class:`~qmapinr.recon.physics.forward.LineSubspaceOp` (tests: forward and both gradients against autograd of
``op.forward(a * b)`` to float32 tolerance). Measured at paper size: docs/benchmarks/epoch.md, round 6.
"""

from __future__ import annotations

import torch

#: Working set of one chunk on the CPU: the coefficient volume of a few coils, so that the product, FFT and
#: gather of a chunk stay in the last-level cache (16 MiB measured best at paper size on a 2-core EPYC host).
CPU_CHUNK_BYTES = 16 << 20
#: On a GPU the launch overhead dominates small chunks: one chunk per x position (all coils).
CUDA_CHUNK_BYTES = 1 << 34


def _coil_slice(t: torch.Tensor, i: int, c0: int, c1: int) -> torch.Tensor:
    """``t[i, c0:c1]`` when ``t`` has a coil axis, else ``t[i]`` (broadcast over coils)."""
    return t[i, c0:c1] if t.shape[1] > 1 else t[i]


class _ProductLines(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, op, cc: int) -> torch.Tensor:
        bx, ncoil = a.shape[0], max(a.shape[1], b.shape[1])
        ne = max(a.shape[2], b.shape[2])
        dtype = torch.promote_types(torch.result_type(a, b), torch.complex64)
        out = a.new_empty((bx, ncoil, ne, op.nlines), dtype=dtype)
        for i in range(bx):
            for c0 in range(0, ncoil, cc):
                c1 = min(ncoil, c0 + cc)
                coeff = _coil_slice(a, i, c0, c1) * _coil_slice(b, i, c0, c1)  # (cc, E, A, nz, ny)
                out[i, c0:c1] = op.forward(coeff.expand(c1 - c0, *coeff.shape[1:]))
        ctx.save_for_backward(a, b)
        ctx.op, ctx.cc = op, cc
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        op, cc = ctx.op, ctx.cc
        need_a, need_b = ctx.needs_input_grad[:2]
        ga = torch.zeros_like(a) if need_a else None
        gb = torch.zeros_like(b) if need_b else None
        bx, ncoil = grad.shape[:2]
        for i in range(bx):
            for c0 in range(0, ncoil, cc):
                c1 = min(ncoil, c0 + cc)
                ai, bi = _coil_slice(a, i, c0, c1), _coil_slice(b, i, c0, c1)  # (cc or 1, E.., A.., nz, ny)
                g = op.adjoint(grad[i, c0:c1])  # (cc, E, A, nz, ny): the coefficient volume's gradient
                if need_a:
                    part = (g * bi.conj()).sum_to_size(ai.shape)
                    _coil_slice(ga, i, c0, c1).add_(part if a.is_complex() else part.real)
                if need_b:
                    part = (g * ai.conj()).sum_to_size(bi.shape)
                    _coil_slice(gb, i, c0, c1).add_(part if b.is_complex() else part.real)
        return ga, gb, None, None


def product_lines(op, a: torch.Tensor, b: torch.Tensor, chunk_bytes: int | None = None) -> torch.Tensor:
    """``op.forward(a * b)`` without the coefficient volume: lines ``(bx, C, E, nlines)``.

    Parameters
    ----------
    op : :class:`~qmapinr.recon.physics.forward.LineSubspaceOp` over ``A`` atoms.
    a, b : ``(bx, Ca, Ea, Aa, nz, ny)`` and ``(bx, Cb, Eb, Ab, nz, ny)`` that broadcast to
        ``(bx, C, E, A, nz, ny)``; the coil axes ``Ca``/``Cb`` are ``C`` or 1. ``a`` complex, ``b`` real or
        complex; gradients flow to both.
    chunk_bytes : working set of one chunk (None: :data:`CPU_CHUNK_BYTES` on the CPU, :data:`CUDA_CHUNK_BYTES`
        on a GPU); the chunk is one x position and as many coils as fit (at least one).
    """
    if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:] or a.dim() != 6 or b.dim() != 6:
        raise ValueError(f"product_lines: a {tuple(a.shape)} and b {tuple(b.shape)} must be 6-D with the same "
                         "batch and (nz, ny)")
    if chunk_bytes is None:
        chunk_bytes = CUDA_CHUNK_BYTES if a.device.type == "cuda" else CPU_CHUNK_BYTES
    ne, na = max(a.shape[2], b.shape[2]), max(a.shape[3], b.shape[3])
    per_coil = 8 * ne * na * a.shape[-1] * a.shape[-2]
    cc = max(1, int(chunk_bytes // per_coil))
    return _ProductLines.apply(a, b, op, cc)

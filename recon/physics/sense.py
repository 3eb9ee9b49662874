"""SENSE operator of the temporal-subspace model (the normal operator without line gathering).

``A x = P F S U x``: coefficient images ``x (nx, nte, K, nz, ny)`` (one (z, y) plane per readout position x
after the readout IFFT), coil maps S ``(nx, C, nz, ny)``, centred unitary 2-D FFT over (kz, ky), contraction
with the temporal basis U and selection of the sampled lines (:class:`LineSubspaceOp`). x positions are
batched to bound the working set.
"""

from __future__ import annotations

import numpy as np
import torch

from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.physics.forward import LineSubspaceOp
from qmapinr.recon.physics.linop import LinearOperator
from qmapinr.recon.physics.product import product_lines


def temporal_psf(basis: torch.Tensor, kspace: KSpace6D) -> torch.Tensor:
    """Per (kz, ky) location the K x K Gram matrix ``sum_lines u u^T`` of the sampled basis rows.

    ``A^H A`` of the subspace model is ``S^H F^H T F S`` with this block-diagonal ``T`` (Cartesian lines), so
    the normal operator needs no line gathering at all.

    Returns
    -------
    ``(nz*ny, K, K)`` in the basis dtype.
    """
    nx, ny, nz = kspace.geometry.matrix
    rows = basis[torch.as_tensor(np.asarray(kspace.tau, dtype=np.int64)),
                 torch.as_tensor(np.asarray(kspace.seg, dtype=np.int64))]  # (nlines, K)
    sp = torch.as_tensor(np.asarray(kspace.kz, dtype=np.int64) * ny + np.asarray(kspace.ky, dtype=np.int64))
    outer = rows[:, :, None].conj() * rows[:, None, :]  # (nlines, K, K): conj(u_j) u_k
    k = basis.shape[-1]
    return torch.zeros(nz * ny, k, k, dtype=basis.dtype).index_add_(0, sp, outer)


class SenseSubspaceOp(LinearOperator):
    """``x (nx, nte, K, nz, ny) -> lines (nx, C, nte, nlines)``: coil maps, 2-D FFT, basis, line selection.

    Parameters
    ----------
    basis : real ``(ntau, nseg, K)``.
    kspace : provides the line indices (ky, kz, seg, tau) and the matrix.
    sens : complex ``(nx, C, nz, ny)`` (may be reassigned: ``op.sens = ...``).
    batch_bytes : working-set size used to batch x positions.
    """

    def __init__(self, basis: torch.Tensor, kspace: KSpace6D, sens: torch.Tensor,
                 batch_bytes: int = 256 * 2**20):
        nx, ny, nz = kspace.geometry.matrix
        idx = [torch.as_tensor(np.asarray(a, dtype=np.int64))
               for a in (kspace.ky, kspace.kz, kspace.seg, kspace.tau)]
        self.op = LineSubspaceOp(basis, *idx, (nz, ny))
        # The centring shifts of fftc / ifftc are a permutation and a unit-modulus modulation of k-space, both
        # of which commute with the location-diagonal PSF: A^H A = S^H F^H T' F S with plain FFTs and the PSF
        # moved to unshifted (ifftshift) order. Stored as (nz*ny, K, K).
        psf = temporal_psf(basis, kspace).to(torch.complex64).unflatten(0, (nz, ny))
        self.psf = torch.fft.ifftshift(psf, dim=(0, 1)).flatten(0, 1).contiguous()
        self.sens = sens
        self.k = basis.shape[-1]
        self.nte = kspace.seq.nte
        self.shape = (nx, self.nte, self.k, nz, ny)
        c = sens.shape[1]
        per_x = 8 * c * self.nte * max(self.k * nz * ny, kspace.nlines) * 2
        self.bx = max(1, min(nx, batch_bytes // per_x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, x.shape[0], self.bx):
            # lines of sens x x (bx, C, nte, K, nz, ny) in cache-sized chunks (physics.product)
            out.append(product_lines(self.op, self.sens[s:s + self.bx, :, None, None], x[s:s + self.bx, None]))
        return torch.cat(out, 0)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, y.shape[0], self.bx):
            img = self.op.adjoint(y[s:s + self.bx])  # (bx, C, nte, K, nz, ny)
            out.append((self.sens[s:s + self.bx, :, None, None].conj() * img).sum(1))
        return torch.cat(out, 0)

    def gram(self, img: torch.Tensor) -> torch.Tensor:
        """``F^H T F`` on per-coil coefficient images ``(..., K, nz, ny)`` (the line-space Gram operator)."""
        nz, ny = self.shape[-2:]
        k = torch.fft.fftn(img, dim=(-2, -1), norm="ortho")
        shape = k.shape
        k = k.reshape(-1, self.k, nz * ny).permute(2, 1, 0)  # (nz*ny, K, batch)
        k = torch.bmm(self.psf, k).permute(2, 1, 0).reshape(shape)
        return torch.fft.ifftn(k, dim=(-2, -1), norm="ortho")

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x`` through the temporal PSF (equal to ``adjoint(forward(x))``, much cheaper)."""
        out = []
        for s in range(0, x.shape[0], self.bx):
            sens = self.sens[s:s + self.bx, :, None, None]
            out.append((sens.conj() * self.gram(sens * x[s:s + self.bx, None])).sum(1))
        return torch.cat(out, 0)

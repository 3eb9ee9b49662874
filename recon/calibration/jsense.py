"""Joint refinement of coil maps and subspace images (JSENSE-like alternation, Ying & Sheng, MRM 2007).

Why: this sequence samples each (ky, kz) location at most once per T2-prep, at a random readout index n, and
the frames differ strongly (the inversion makes the contrast change sign along n). Averaging the lines of a
location over (tau, n) therefore mixes different contrasts at different k-space locations, which does *not*
cancel in coil ratios: on small matrices the ratio maps of :func:`estimate_coil_maps` are off by ~10 % (per
voxel, after phase alignment), enough to spoil a SENSE reconstruction. The remedy used here:

1. x-step: a few CG iterations of the unregularised subspace SENSE problem with the current maps;
2. s-step: with x fixed the model ``y = P F (s_c * U x)`` is linear in each coil map ``s_c``; the maps are
   parametrised by a low-resolution centred block of their 3-D k-space (``s = L sigma``, ``L`` = zero-pad +
   unitary IFFT) and ``sigma`` is updated by a few CG iterations on
   ``(L^H M^H M L + mu) sigma = L^H M^H y`` (all coils at once, they are independent);
3. repeat, then normalise the maps to unit root-sum-of-squares (the image absorbs the smooth scale).

Cost: the maps are smooth (a ``width`` k-space block), so the alternation runs on a low-resolution copy of the
problem — the lines inside a central (kz, ky) block of size ``crop`` with the central ``crop`` kx samples of
each readout (:func:`crop_kspace`), i.e. a coarser voxel grid over the same field of view — and the fitted
k-space block is zero-padded to the full matrix at the end. Its cost is then set by ``crop``, not by the
matrix; only the crop itself (one pass over the lines) and the final zero-padded FFT grow with the data.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from qmapinr.recon.kspace import Geometry, KSpace6D
from qmapinr.recon.optim.cg import conjugate_gradient
from qmapinr.recon.optim.power import power_iteration
from qmapinr.recon.physics.fft import fftc, ifftc, readout_ifft
from qmapinr.recon.physics.linop import LinearOperator
from qmapinr.recon.physics.product import product_lines
from qmapinr.recon.physics.sense import SenseSubspaceOp

log = logging.getLogger(__name__)


def _block(n: int, w: int) -> slice:
    w = min(max(w, 1), n)
    start = n // 2 - w // 2
    return slice(start, start + w)


class _LowRes(LinearOperator):
    """``sigma (C, wz, wy, wx)`` <-> maps ``(nx, C, nz, ny)`` through a centred k-space block (unitary)."""

    def __init__(self, shape_zyx: tuple[int, int, int], width: tuple[int, int, int]):
        self.shape = shape_zyx
        self.width = tuple(width)
        self.sl = tuple(_block(n, w) for n, w in zip(shape_zyx, width, strict=True))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        k = sigma.new_zeros((sigma.shape[0],) + self.shape)
        k[(slice(None),) + self.sl] = sigma
        return ifftc(k, dims=(-3, -2, -1)).permute(3, 0, 1, 2)  # (nx, C, nz, ny)

    def adjoint(self, maps: torch.Tensor) -> torch.Tensor:
        k = fftc(maps.permute(1, 2, 3, 0), dims=(-3, -2, -1))
        return k[(slice(None),) + self.sl].contiguous()


def crop_kspace(kspace: KSpace6D, shape_zyx: tuple[int, int, int]) -> KSpace6D:
    """The low-resolution copy of a measurement: lines inside the central ``(nz_c, ny_c)`` (kz, ky) block, each
    cut to its central ``nx_c`` kx samples; same field of view (coarser voxels), noise scan kept.

    Block ``b`` of size ``w`` out of ``n`` starts at ``n // 2 - w // 2``, so the k-space centre stays at index
    ``w // 2`` of the copy.
    """
    nx, ny, nz = kspace.geometry.matrix
    wz, wy, wx = (min(max(int(w), 1), n) for w, n in zip(shape_zyx, (nz, ny, nx), strict=True))
    sz, sy, sx = _block(nz, wz), _block(ny, wy), _block(nx, wx)
    ky, kz = np.asarray(kspace.ky), np.asarray(kspace.kz)
    keep = (ky >= sy.start) & (ky < sy.stop) & (kz >= sz.start) & (kz < sz.stop)
    g = kspace.geometry
    fov = g.fov_mm  # the crop keeps the field of view: same extent, coarser voxels
    geometry = Geometry(matrix=(wx, wy, wz), fov_mm=fov, position=g.position, read_dir=g.read_dir,
                        phase_dir=g.phase_dir, slice_dir=g.slice_dir, patient_table_position=g.patient_table_position)
    return dataclasses.replace(
        kspace, data=np.ascontiguousarray(kspace.data[:, :, keep, sx]), ky=ky[keep] - sy.start,
        kz=kz[keep] - sz.start, seg=np.asarray(kspace.seg)[keep], tau=np.asarray(kspace.tau)[keep],
        acq_order=None if kspace.acq_order is None else np.asarray(kspace.acq_order)[keep], geometry=geometry)


def _resample_block(maps: torch.Tensor, shape_zyx: tuple[int, int, int]) -> torch.Tensor:
    """Band-limited resampling of complex ``(C, nz, ny, nx)`` maps to ``shape_zyx`` (centred k-space crop or
    zero-pad; amplitudes kept)."""
    src = tuple(maps.shape[1:])
    k = fftc(maps, dims=(-3, -2, -1))
    out = k.new_zeros((k.shape[0],) + tuple(shape_zyx))
    common = tuple(min(a, b) for a, b in zip(src, shape_zyx, strict=True))
    out[(slice(None),) + tuple(_block(n, w) for n, w in zip(shape_zyx, common, strict=True))] = \
        k[(slice(None),) + tuple(_block(n, w) for n, w in zip(src, common, strict=True))]
    return ifftc(out, dims=(-3, -2, -1)) * float(np.sqrt(np.prod(shape_zyx) / np.prod(src)))


def refine_coil_maps(
    kspace: KSpace6D,
    sens: np.ndarray,
    basis: np.ndarray | torch.Tensor,
    outer_iters: int = 4,
    x_cg_iters: int = 8,
    s_cg_iters: int = 8,
    width: tuple[int, int, int] = (8, 10, 10),
    ridge: float = 1e-3,
    floor: float = 0.02,
    seed: int = 0,
    batch_bytes: int = 256 * 2**20,
    crop: tuple[int, int, int] | None = (2, 2, 2),
    coarse_to_fine: bool = True,
) -> tuple[np.ndarray, dict]:
    """Refine coil maps jointly with the subspace coefficient images.

    Parameters
    ----------
    kspace : sampled lines.
    sens : complex ``(C, nz, ny, nx)`` initial maps (e.g. :func:`estimate_coil_maps`).
    basis : real ``(ntau, nseg, K)`` temporal basis (a small rank, 3-6, is enough).
    outer_iters : alternations of x-step and s-step.
    x_cg_iters, s_cg_iters : CG iterations per step.
    width : (kz, ky, kx) size of the k-space block parametrising each map (its resolution).
    ridge : Tikhonov weight on ``sigma`` relative to the largest eigenvalue of the s-step normal operator.
    floor : RSS floor (relative to its maximum) of the final normalisation.
    crop : (kz, ky, kx) size of the low-resolution problem, as multiples of ``width`` (clipped to the matrix;
        None = solve at full resolution). The default (2, 2, 2) makes the cost independent of the matrix
        (16x64x64, 8 coils: median alignment with the true maps 0.9984 against 0.9985 at full resolution).
    coarse_to_fine : with ``outer_iters >= 4``, run the first quarter of the alternations with blocks of a quarter
        of ``width`` and the second quarter at half ``width`` (the alternation is not convex: without a
        calibration block the initial maps are poor, and few smooth coefficients are fitted first; 16x64x64,
        R = 8, no calibration block: alignment 0.97 against 0.91 in one stage).

    Returns
    -------
    complex64 ``(C, nz, ny, nx)`` maps with unit RSS (where above the floor) and an info dict with the
    relative data residual after every alternation.
    """
    full_zyx = tuple(sens.shape[1:])
    if crop is not None:
        shape_c = tuple(min(n, int(f * w)) for n, f, w in zip(full_zyx, crop, width, strict=True))
        if shape_c != full_zyx:
            kspace = crop_kspace(kspace, shape_c)
            sens = _resample_block(torch.from_numpy(np.asarray(sens, dtype=np.complex64)), shape_c).numpy()
            log.info("JSENSE on a %s low-resolution copy of the %s matrix (%d lines)", shape_c, full_zyx,
                     kspace.nlines)
    nx, ny, nz = kspace.geometry.matrix
    s_x = torch.from_numpy(np.ascontiguousarray(np.transpose(sens, (3, 0, 1, 2)), dtype=np.complex64))
    op = SenseSubspaceOp(torch.as_tensor(np.asarray(basis, dtype=np.float32)), kspace, s_x, batch_bytes)
    y = readout_ifft(kspace)
    ynorm = max(float(torch.linalg.vector_norm(y)), 1e-30)
    n_coarse = outer_iters // 4 if coarse_to_fine else 0
    stages = [0.25] * n_coarse + [0.5] * n_coarse + [1.0] * (outer_iters - 2 * n_coarse)
    lowres, sigma = None, None
    x = torch.zeros(op.shape, dtype=torch.complex64)
    history = []
    for it, frac in enumerate(stages):
        stage_width = tuple(max(1, round(w * frac)) for w in width)
        if lowres is None or stage_width != lowres.width:
            current = lowres.forward(sigma) if lowres is not None else s_x
            lowres = _LowRes((nz, ny, nx), stage_width)
            sigma = lowres.adjoint(current)
        op.sens = lowres.forward(sigma) if it else s_x
        x, _ = conjugate_gradient(op.normal, op.adjoint(y), x, x_cg_iters)

        def m_fwd(s: torch.Tensor, x=x) -> torch.Tensor:  # maps (nx, C, nz, ny) -> lines, batched over x
            return torch.cat([product_lines(op.op, s[b:b + op.bx, :, None, None], x[b:b + op.bx, None])
                              for b in range(0, s.shape[0], op.bx)], 0)

        def m_adj(r: torch.Tensor, x=x) -> torch.Tensor:  # lines -> maps, batched over x
            return torch.cat([(x[b:b + op.bx, None].conj() * op.op.adjoint(r[b:b + op.bx])).sum((2, 3))
                              for b in range(0, r.shape[0], op.bx)], 0)

        def normal(sg: torch.Tensor, x=x, lowres=lowres) -> torch.Tensor:  # L^H M^H M L through the temporal PSF
            s = lowres.forward(sg)
            out = []
            for b in range(0, s.shape[0], op.bx):
                xb = x[b:b + op.bx, None]
                out.append((xb.conj() * op.gram(s[b:b + op.bx, :, None, None] * xb)).sum((2, 3)))
            return lowres.adjoint(torch.cat(out, 0))

        lmax = power_iteration(normal, tuple(sigma.shape), iters=6, seed=seed + it)
        mu = ridge * lmax

        def regularised(sg: torch.Tensor, normal=normal, mu=mu) -> torch.Tensor:
            return normal(sg) + mu * sg

        sigma, _ = conjugate_gradient(regularised, lowres.adjoint(m_adj(y)), sigma, s_cg_iters)
        r = float(torch.linalg.vector_norm(m_fwd(lowres.forward(sigma)) - y)) / ynorm
        history.append(r)
        log.debug("JSENSE %d: relative residual %.4g", it, r)
    if lowres is None:  # no alternation: the initial maps projected onto the block
        lowres = _LowRes((nz, ny, nx), width)
        sigma = lowres.adjoint(s_x)
    maps = lowres.forward(sigma).permute(1, 2, 3, 0)  # (C, nz, ny, nx)
    if tuple(maps.shape[1:]) != full_zyx:
        maps = _resample_block(maps, full_zyx)  # exact: the maps are band-limited to the sigma block
    rss = (maps.real**2 + maps.imag**2).sum(0).sqrt()
    maps = maps / rss.clamp(min=floor * float(rss.max()))
    return maps.numpy().astype(np.complex64), {"jsense_residual": history}

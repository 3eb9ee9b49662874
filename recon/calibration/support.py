"""Data preparation shared by the solvers: readout IFFT, scaling, support mask, low-resolution subspace images.

Everything here is linear algebra on the measured lines; nothing is optimised.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.physics.fft import ifftc

log = logging.getLogger(__name__)


class _CentreFit:
    """Per k-space location inside the central ellipse, the regularised least-squares fit of the K basis
    coefficients to the samples taken there at different (tau, n).

    Attributes
    ----------
    locs : int64 ``(L,)`` flat locations ``kz * ny + ky`` with at least one sample inside the ellipse.
    gram : float64 ``(L, K, K)`` ``sum a a^T`` over the samples (``a`` = basis row of the sample's (tau, n)).
    solve : complex64 ``(L, K, K)`` the inverse of the regularised Gram matrix (one per location).
    """

    def __init__(self, kspace: KSpace6D, basis: torch.Tensor, width: float, ridge: float,
                 prior: torch.Tensor | None) -> None:
        nx, ny, nz = kspace.geometry.matrix
        k = basis.shape[-1]
        ky = torch.as_tensor(np.asarray(kspace.ky, dtype=np.int64))
        kz = torch.as_tensor(np.asarray(kspace.kz, dtype=np.int64))
        dy = (ky - ny // 2).double() / (ny * width)
        dz = (kz - nz // 2).double() / (nz * width)
        self.inside = dy**2 + dz**2 <= 1.0
        self.locs, self.slot = torch.unique(kz[self.inside] * ny + ky[self.inside], return_inverse=True)
        tau = torch.as_tensor(np.asarray(kspace.tau, dtype=np.int64))[self.inside]
        seg = torch.as_tensor(np.asarray(kspace.seg, dtype=np.int64))[self.inside]
        self.atoms = basis[tau, seg].double()  # (lines, K)
        nloc = self.locs.numel()
        self.gram = torch.zeros(nloc, k, k, dtype=torch.float64).index_add_(
            0, self.slot, self.atoms[:, :, None] * self.atoms[:, None, :])
        trace = self.gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12)
        w = torch.ones(k, dtype=torch.float64) if prior is None else prior.double()
        self.reg = self.gram + (ridge * trace / k)[:, None, None] * torch.diag_embed(w)
        self.solve = torch.linalg.inv(self.reg).to(torch.complex64)
        self.k, self.nloc = k, nloc

    def coefficients(self, ys: torch.Tensor) -> torch.Tensor:
        """``ys`` complex ``(M, nlines)`` (all lines) -> complex64 ``(M, L, K)`` fitted coefficients."""
        ys = ys[:, self.inside].to(torch.complex64)
        rhs = ys.new_zeros(ys.shape[0], self.nloc, self.k)
        for j in range(self.k):  # one (M, lines) temporary at a time
            rhs[..., j].index_add_(1, self.slot, ys * self.atoms[:, j].to(ys.dtype))
        return torch.einsum("lij,mlj->mli", self.solve, rhs)


def determined_locations(kspace: KSpace6D, basis: torch.Tensor, width: float = 0.25, block: int = 3
                         ) -> tuple[int, int, bool]:
    """``(determined, sampled, centre)``: central k-space locations (ellipse of relative half-width ``width``)
    sampled at enough distinct (tau, n) to determine all K basis coefficients, those sampled at all, and whether
    every location of the ``block x block`` (kz x ky, clipped to the matrix) block at the k-space centre is
    determined -- a calibration-like centre, not a few scattered locations that happen to be sampled often."""
    fit = _CentreFit(kspace, basis, width, 1e-3, None)
    rank = torch.linalg.matrix_rank(fit.gram, hermitian=True)
    _, ny, nz = kspace.geometry.matrix
    good = set(fit.locs[rank >= fit.k].tolist())
    h = block // 2
    centre = {z * ny + y for z in range(max(0, nz // 2 - h), min(nz, nz // 2 + h + 1))
              for y in range(max(0, ny // 2 - h), min(ny, ny // 2 + h + 1))}
    return len(good), fit.nloc, centre <= good


def lowres_subspace_images(
    hybrid: torch.Tensor, kspace: KSpace6D, basis: torch.Tensor, width: float = 0.25, ridge: float = 1e-3,
    prior: torch.Tensor | None = None, min_rank: int | None = None, sens: torch.Tensor | None = None,
    batch_x: int = 8,
) -> torch.Tensor:
    """Low-resolution coefficient images of a temporal basis from the k-space centre.

    At every (ky, kz) location inside an ellipse of relative half-width ``width``, the samples taken at the
    different (tau, n) are fitted by regularised least squares with the K basis atoms (the FFT is linear, so a
    location's coefficients are the k-space of the coefficient images); the coefficient k-space is
    Hann-windowed and transformed back. The K x K normal equations are inverted once per location and applied
    to every readout position, coil and echo (no broadcast of the small matrices), ``batch_x`` positions at a
    time, so memory stays bounded.

    Parameters
    ----------
    hybrid : complex ``(nx, C, nte, nlines)``.
    basis : real ``(ntau, nseg, K)``.
    width : relative half-width of the central ellipse (fraction of ny, nz).
    ridge : Tikhonov weight per location, relative to the mean diagonal of its Gram matrix.
    prior : float ``(K,)`` relative ridge weight per basis component (None = all 1). Small weights on the
        dominant components let a location with fewer than K samples be fitted by the components its samples
        determine (a Gaussian prior whose variance follows the dictionary's singular values).
    min_rank : locations whose Gram rank is below this are zeroed (None = K, the exact-fit condition; 1 = use
        every sampled location).
    sens : optional complex ``(C, nz, ny, nx)``: return the coil-combined images (:func:`coil_combine`).
    batch_x : readout positions per batch.

    Returns
    -------
    complex64 ``(nx, C, nte, K, nz, ny)``, or ``(nx, nte, K, nz, ny)`` when ``sens`` is given.
    """
    nx, ny, nz = kspace.geometry.matrix
    fit = _CentreFit(kspace, basis, width, ridge, prior)
    k = fit.k
    rank = torch.linalg.matrix_rank(fit.gram, hermitian=True)
    keep = rank >= (k if min_rank is None else min_rank)
    short = int((rank < k).sum())
    if short:
        log.info("low-res fit: %d of %d sampled central k-space locations have fewer than %d distinct (tau, n); "
                 "%s", short, fit.nloc, k, "dropped" if min_rank is None or min_rank >= k else
                 "fitted with the components their samples determine (ridge prior)")
    if not bool(keep.any()):
        log.warning("low-res fit: no central k-space location is usable (min_rank %s)", min_rank)
    gy = (fit.locs % ny - ny // 2).double() / (ny * width)
    gz = (fit.locs // ny - nz // 2).double() / (nz * width)
    win = ((0.5 + 0.5 * torch.cos(math.pi * torch.sqrt(gz**2 + gy**2).clamp(max=1.0))) * keep).float()
    out = []
    for b in range(0, nx, batch_x):
        hb = hybrid[b:b + batch_x]
        coef = fit.coefficients(hb.reshape(-1, hb.shape[-1])) * win[:, None]  # (M, L, K)
        full = coef.new_zeros(coef.shape[0], k, nz * ny)
        full[..., fit.locs] = coef.transpose(-1, -2)
        img = ifftc(full.reshape(hb.shape[:-1] + (k, nz, ny)), dims=(-2, -1))  # (bx, C, E, K, nz, ny)
        out.append(img if sens is None else coil_combine(img, sens[..., b:b + hb.shape[0]]))
    return torch.cat(out, 0).to(torch.complex64)


def coil_combine(images: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """SENSE-1 combination ``sum_c conj(s_c) x_c / sum_c |s_c|^2`` along dim 1 of ``images``.

    images : complex ``(nx, C, ...trailing, nz, ny)``; sens : complex ``(C, nz, ny, nx)``.
    """
    s = sens.permute(3, 0, 1, 2)  # (nx, C, nz, ny)
    extra = images.dim() - 4
    s = s.reshape(s.shape[:2] + (1,) * extra + s.shape[2:])
    num = (s.conj() * images).sum(1)
    den = (s.abs() ** 2).sum(1).clamp_min(1e-6)
    return num / den


def support_mask(magnitude: torch.Tensor, rel_threshold: float = 0.15, smooth_vox: float = 1.0) -> torch.Tensor:
    """bool ``(nz, ny, nx)`` object support from a magnitude image ``(nz, ny, nx)``.

    Gaussian smoothing (``smooth_vox`` voxels in y and x, none along the thin z axis), threshold at
    ``rel_threshold`` x the 99th percentile, keep the largest connected component and fill holes slice by slice.
    """
    from scipy import ndimage

    mag = ndimage.gaussian_filter(magnitude.float().numpy(), sigma=(0.0, smooth_vox, smooth_vox))
    m = mag > rel_threshold * np.percentile(mag, 99)
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, index=np.arange(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    m = np.stack([ndimage.binary_fill_holes(s) for s in m])
    return torch.from_numpy(m)

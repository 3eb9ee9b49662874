"""Data preparation shared by the solvers: readout IFFT, scaling, support mask, low-resolution subspace images.

Everything here is linear algebra on the measured lines; nothing is optimised.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.physics.fft import ifftc


def lowres_subspace_images(
    hybrid: torch.Tensor, kspace: KSpace6D, basis: torch.Tensor, width: float = 0.25, ridge: float = 1e-3
) -> torch.Tensor:
    """Low-resolution coefficient images of a temporal basis from the k-space centre.

    At every (ky, kz) location inside an ellipse of relative half-width ``width``, the samples taken at the
    different (tau, n) are fitted by least squares with the K basis atoms (a k-space location sampled at
    >= K distinct (tau, n) points determines the K coefficients exactly, because the FFT is linear); the
    coefficient k-space is Hann-windowed and transformed back.

    Parameters
    ----------
    hybrid : complex ``(nx, C, nte, nlines)``.
    basis : real ``(ntau, nseg, K)``.

    Returns
    -------
    complex64 ``(nx, C, nte, K, nz, ny)``.
    """
    nx, ny, nz = kspace.geometry.matrix
    k = basis.shape[-1]
    ky = torch.as_tensor(kspace.ky)
    kz = torch.as_tensor(kspace.kz)
    dy = (ky - ny // 2).float() / (ny * width)
    dz = (kz - nz // 2).float() / (nz * width)
    inside = dy**2 + dz**2 <= 1.0
    loc = (kz * ny + ky)[inside]
    atoms = basis[torch.as_tensor(kspace.tau)[inside], torch.as_tensor(kspace.seg)[inside]].double()  # (L, K)
    ys = hybrid[..., inside].to(torch.complex128)  # (nx, C, E, L)
    # Normal equations per location: G = sum a a^T (K x K), rhs = sum a y.
    nloc = nz * ny
    gram = torch.zeros(nloc, k, k, dtype=torch.float64)
    gram.index_add_(0, loc, atoms[:, :, None] * atoms[:, None, :])
    rhs = torch.zeros(ys.shape[:-1] + (nloc, k), dtype=torch.complex128)
    rhs.index_add_(-2, loc, ys[..., None] * atoms.to(ys.dtype))
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12)
    reg = gram + (ridge * trace / k)[:, None, None] * torch.eye(k, dtype=torch.float64)
    sampled = torch.linalg.matrix_rank(gram, hermitian=True) >= k
    coef = torch.linalg.solve(reg.to(torch.complex128), rhs[..., None]).squeeze(-1)  # (..., nloc, K)
    coef = coef * sampled[:, None].to(coef.dtype)
    # Hann window over the ellipse.
    gy = (torch.arange(ny) - ny // 2).double() / (ny * width)
    gz = (torch.arange(nz) - nz // 2).double() / (nz * width)
    r = torch.sqrt(gz[:, None] ** 2 + gy[None, :] ** 2).clamp(max=1.0)
    win = (0.5 + 0.5 * torch.cos(math.pi * r)).flatten()
    coef = coef * win[:, None]
    img = coef.movedim(-1, -2).unflatten(-1, (nz, ny))  # (nx, C, E, K, nz, ny)
    return ifftc(img, dims=(-2, -1)).to(torch.complex64)


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

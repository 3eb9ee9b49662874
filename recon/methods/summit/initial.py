"""Data-driven initial maps for the INR solvers (design.md: "initialise phase / off-resonance from the data").

Low-resolution temporal-subspace images are fitted at the k-space centre (:func:`lowres_subspace_images`),
coil-combined, and dictionary-matched. The result gives every voxel a starting A, T1, T2, T2*, B0 and Phase0
— including the sign of the inversion recovery, so the phase prior is not off by pi where the averaged
signal is negative (long T1), which would leave gradient descent at a saddle point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from qmapinr.recon.calibration.support import lowres_subspace_images, support_mask
from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.physics.dictionary import default_dictionary, match_coefficients

log = logging.getLogger(__name__)

PRIOR_RANGES = {"T1": (100.0, 5000.0), "T2": (10.0, 2500.0), "T2star": (5.0, 2000.0)}


@dataclass
class InitialMaps:
    """Starting point: ``maps`` name -> float32 ``(nz, ny, nx)``; ``mask`` bool ``(nz, ny, nx)``."""

    maps: dict[str, torch.Tensor]
    mask: torch.Tensor


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


def initial_maps(hybrid: torch.Tensor, kspace: KSpace6D, sens: torch.Tensor, rank: int = 4,
                 width: float = 0.25, mask_threshold: float = 0.15) -> InitialMaps:
    """Dictionary-matched low-resolution maps.

    Parameters
    ----------
    hybrid : complex ``(nx, C, nte, nlines)`` readout-transformed lines (scaled).
    sens : complex ``(C, nz, ny, nx)`` coil sensitivities.
    rank : temporal basis size of the low-resolution fit (<= distinct (tau, n) samples per central location).

    Returns
    -------
    :class:`InitialMaps` with A (data units), T1, T2, T2star (ms, clipped to :data:`PRIOR_RANGES`), B0 (Hz),
    Phase0 (rad), and the support mask; voxels outside the mask get the in-mask medians.
    """
    seq = kspace.seq
    dictionary = default_dictionary(seq, n_t1=50, n_t2=40)
    basis, emax, _ = dictionary.svd_basis(rank)
    log.info("init: rank-%d (tau, n) basis, worst dictionary projection error %.3g", rank, emax)
    coef = lowres_subspace_images(hybrid.cpu(), kspace, torch.from_numpy(basis), width=width)
    comb = coil_combine(coef, sens.cpu())  # (nx, E, K, nz, ny)
    comb = comb.permute(3, 4, 0, 1, 2)  # (nz, ny, nx, E, K)
    mask = support_mask(comb.abs().pow(2).sum((-1, -2)).sqrt(), mask_threshold, smooth_vox=0.0)
    fit = match_coefficients(comb[mask], basis, dictionary)
    nz, ny, nx = mask.shape
    maps = {}
    for name in ("A", "T1", "T2", "T2star", "B0", "Phase0"):
        v = torch.as_tensor(np.asarray(fit[name]), dtype=torch.float32)
        if name in PRIOR_RANGES:
            v = v.clamp(*PRIOR_RANGES[name])
        full = torch.full((nz, ny, nx), float(v.median()) if v.numel() else 0.0)
        full[mask] = v
        maps[name] = full
    return InitialMaps(maps=maps, mask=mask)

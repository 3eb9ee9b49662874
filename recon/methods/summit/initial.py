"""Data-driven initial maps for the INR solvers (docs/design.md: "initialise phase / off-resonance from the data").

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

from qmapinr.recon.calibration.support import determined_locations, lowres_subspace_images, support_mask
from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.physics.dictionary import default_dictionary, match_coefficients

log = logging.getLogger(__name__)

PRIOR_RANGES = {"T1": (100.0, 5000.0), "T2": (10.0, 2500.0), "T2star": (5.0, 2000.0)}


@dataclass
class InitialMaps:
    """Starting point: ``maps`` name -> float32 ``(nz, ny, nx)``; ``mask`` bool ``(nz, ny, nx)``."""

    maps: dict[str, torch.Tensor]
    mask: torch.Tensor


def initial_maps(hybrid: torch.Tensor, kspace: KSpace6D, sens: torch.Tensor, rank: int = 4,
                 width: float = 0.25, mask_threshold: float = 0.15, min_determined: int = 9) -> InitialMaps:
    """Dictionary-matched low-resolution maps.

    Parameters
    ----------
    hybrid : complex ``(nx, C, nte, nlines)`` readout-transformed lines (scaled).
    sens : complex ``(C, nz, ny, nx)`` coil sensitivities.
    rank : temporal basis size of the low-resolution fit. Central k-space locations sampled at >= ``rank``
        distinct (tau, n) determine the coefficients exactly and are used alone when there are at least
        ``min_determined`` of them; otherwise (pure variable-density sampling without a fully sampled centre)
        every sampled location is fitted with a ridge prior weighted by the dictionary's singular values, so
        the initialisation never needs a sampling condition the data may not meet (logged as a warning).
    min_determined : below this many fully determined central locations, or when the 3x3 block at the k-space
        centre is not among them (scattered locations sampled often by chance: at 16x64x64, R 4 without a
        calibration block 10 of 173 were determined, and fitting only those gave initial maps uncorrelated with
        the truth), the fallback is used.

    Returns
    -------
    :class:`InitialMaps` with A (data units), T1, T2, T2star (ms, clipped to :data:`PRIOR_RANGES`), B0 (Hz),
    Phase0 (rad), and the support mask; voxels outside the mask get the in-mask medians.
    """
    seq = kspace.seq
    dictionary = default_dictionary(seq, n_t1=50, n_t2=40)
    basis, emax, _ = dictionary.svd_basis(rank)
    log.info("init: rank-%d (tau, n) basis, worst dictionary projection error %.3g", rank, emax)
    tb = torch.from_numpy(basis)
    determined, sampled, centre = determined_locations(kspace, tb, width)
    prior, min_rank = None, None  # exact per-location fit, locations with fewer than `rank` samples dropped
    if determined < min_determined or not centre:
        # Fallback (no fully sampled centre): ridge weight per component ~ 1 / singular value^2 (largest weight 1
        # on the last component), so every sampled location is fitted by the components its samples determine.
        sv = dictionary.svd()[1][:rank]
        prior, min_rank = torch.from_numpy((sv[-1] / np.maximum(sv, 1e-12)) ** 2), 1
        log.warning("init: %d of %d sampled central k-space locations have >= %d distinct (tau, n)%s (no "
                    "calibration block?): fitting all %d with a singular-value ridge prior instead", determined,
                    sampled, rank, "" if centre else ", not the 3x3 centre", sampled)
    comb = lowres_subspace_images(hybrid.cpu(), kspace, tb, width=width, prior=prior, min_rank=min_rank,
                                  sens=sens.cpu())  # (nx, E, K, nz, ny)
    comb = comb.permute(3, 4, 0, 1, 2)  # (nz, ny, nx, E, K)
    mag = comb.abs().pow(2).sum((-1, -2)).sqrt()
    mask = support_mask(mag, mask_threshold, smooth_vox=0.0)
    if not bool(mask.any()):
        raise ValueError("initial maps: the support mask is empty (the low-resolution image from the k-space "
                         f"centre is zero; {int(torch.count_nonzero(mag))} non-zero voxels): no signal was "
                         "sampled inside the central k-space ellipse")
    fit = match_coefficients(comb[mask], basis, dictionary)
    nz, ny, nx = mask.shape
    maps = {}
    for name in ("A", "T1", "T2", "T2star", "B0", "Phase0"):
        v = torch.as_tensor(np.asarray(fit[name]), dtype=torch.float32)
        if name in PRIOR_RANGES:
            v = v.clamp(*PRIOR_RANGES[name])
        full = torch.full((nz, ny, nx), float(v.median()))
        full[mask] = v
        maps[name] = full
    return InitialMaps(maps=maps, mask=mask)

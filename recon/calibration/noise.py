"""Noise-level estimates: from a k-space noise pre-scan, and from a (parameter) map itself.

Convention used throughout the project's losses: ``sigma`` is the standard deviation of **each real
component** (real and imaginary part separately) of complex Gaussian noise, so ``E|n|^2 = 2 sigma^2`` per
complex sample.
Pass ``per="complex"`` to get the per-complex-sample value ``sqrt(E|n - mean|^2) = sqrt(2) sigma`` instead.
With the unitary FFTs of :mod:`qmapinr.recon.physics.fft` the same sigma holds per image voxel.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def estimate_sigma_from_noise_scan(noise: np.ndarray | torch.Tensor,
                                   per: Literal["component", "complex"] = "component",
                                   per_coil: bool = False) -> float | np.ndarray:
    """Noise standard deviation from a noise pre-scan.

    The per-coil complex mean is removed first (a DC offset is not noise), with ``ddof = 1``.

    Parameters
    ----------
    noise : complex ``(coils, nsamples)`` (``KSpace6D.noise``); a 1-D array is read as one coil.
    per : ``"component"`` (default): std of the real and of the imaginary part, pooled
        (``sqrt(sum |n - mean|^2 / (2 (N - 1)))``); ``"complex"``: std per complex sample (``sqrt(2)``
        larger).
    per_coil : if True return one value per coil ``(coils,)``; otherwise one float, the RMS over coils
        (``sqrt(mean_c sigma_c^2)``), i.e. the pooled value when all coils are equally noisy.

    Returns
    -------
    float, or float64 ``(coils,)`` if ``per_coil``; in k-space data units.
    """
    arr = noise.detach().cpu().numpy() if isinstance(noise, torch.Tensor) else np.asarray(noise)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"noise must be (coils, nsamples), got shape {arr.shape}")
    if arr.shape[1] < 2:
        raise ValueError("noise scan needs at least 2 samples per coil")
    if per not in ("component", "complex"):
        raise ValueError(f"per must be 'component' or 'complex', got {per!r}")
    arr = arr.astype(np.complex128)
    centred = arr - arr.mean(axis=1, keepdims=True)
    var_complex = (np.abs(centred) ** 2).sum(axis=1) / (arr.shape[1] - 1)  # E|n|^2 per coil
    var = var_complex if per == "complex" else var_complex / 2.0
    if per_coil:
        return np.sqrt(var)
    sigma = float(np.sqrt(var.mean()))
    logger.debug("noise scan: %d coils x %d samples, sigma (%s) = %.4g", arr.shape[0], arr.shape[1], per,
                 sigma)
    return sigma


def estimate_sigma_from_map(x: torch.Tensor) -> torch.Tensor:
    """Gaussian noise std of 2-D real images by Immerkaer's Laplacian-difference estimator.

    ``sigma = sqrt(pi / 2) / (6 (H - 2) (W - 2)) * sum |x * L|`` with the 3x3 mask
    ``L = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]`` (J. Immerkaer, CVIU 64:300, 1996). The mask annihilates
    constant and linear parts, so smooth structure barely contributes; edges bias the estimate upwards.
    Useful to set ``sigma_noise`` of :func:`qmapinr.recon.losses.wnnm.wnnm_loss` from the current maps.

    Parameters
    ----------
    x : real ``(..., H, W)`` with ``H, W >= 3``, any units.

    Returns
    -------
    ``(...)`` tensor, same units as ``x`` (no gradient).
    """
    if x.ndim < 2 or x.shape[-1] < 3 or x.shape[-2] < 3:
        raise ValueError(f"need (..., H, W) with H, W >= 3, got {tuple(x.shape)}")
    with torch.no_grad():
        lead = x.shape[:-2]
        img = x.reshape(-1, 1, *x.shape[-2:]).to(torch.float64)
        mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=img.dtype,
                            device=img.device)
        resp = F.conv2d(img, mask[None, None]).abs().sum(dim=(-3, -2, -1))
        h, w = x.shape[-2:]
        sigma = resp * math.sqrt(math.pi / 2.0) / (6.0 * (h - 2) * (w - 2))
        return sigma.reshape(lead).to(x.dtype)

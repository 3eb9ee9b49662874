"""Data-consistency losses on complex k-space lines.

Both losses take predicted and measured lines of any (broadcast-compatible) shape; in the solvers this is
``(bx, C, nte, nlines)`` complex64 (batch of readout positions, coils, echoes, sampled lines). Each complex
sample counts as one element. The losses are scale-dependent: their value is in the units of the k-space
data (L1) or its square (L2); divide by a noise level (see :mod:`qmapinr.recon.calibration.noise`) to make them
unit-free.
"""

from __future__ import annotations

import torch

#: Default smoothing of the L1 modulus, in data units. |d| = 1e-8 is far below any k-space noise level of the
#: project's data (simulated SNR 10-35 with unit-scale images, measured noise ~1e-6 and above), so the bias
#: (at most ``eps`` per element) is negligible.
DEFAULT_EPS = 1e-8


def _reduce(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over all elements of ``weight * values`` (weight broadcast to the values' shape)."""
    if weight is None:
        return values.mean()
    weight = torch.as_tensor(weight, dtype=values.dtype, device=values.device)
    weighted = values * weight
    return weighted.sum() / weighted.numel()


def l1_complex(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
               eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Smooth L1 data consistency: mean of ``sqrt(|pred - target|^2 + eps^2) - eps``.

    This is the complex modulus of the residual, smoothed (Charbonnier) so that the gradient at a zero
    residual is 0 instead of NaN, and shifted by ``-eps`` so that identical inputs give exactly 0. For
    ``|d| >> eps`` each term equals ``|d|`` up to less than ``eps``.

    Parameters
    ----------
    pred, target : complex (or real) tensors of broadcast-compatible shape, e.g. ``(bx, C, nte, nlines)``,
        in k-space data units.
    weight : optional real tensor broadcastable to the residual shape (e.g. ``(1, C, 1, 1)`` per-coil or
        ``(nlines,)`` per-line weights). The result is ``sum(weight * |d|) / N`` with ``N`` the number of
        residual elements (not ``sum(weight)``), so a 0/1 mask lowers the value in proportion to the masked
        part.
    eps : smoothing, in data units.

    Returns
    -------
    Real scalar tensor (data units).
    """
    d = pred - target
    sq = d.real.square() + d.imag.square() if d.is_complex() else d.square()
    values = torch.sqrt(sq + eps * eps) - eps
    return _reduce(values, weight)


def l2_complex(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Squared-modulus data consistency: mean of ``|pred - target|^2`` (no square root, smooth everywhere).

    Parameters and weighting as in :func:`l1_complex`. For complex Gaussian noise with standard deviation
    ``sigma`` per real component the expected value at the true solution is ``2 * sigma^2``.

    Returns
    -------
    Real scalar tensor (data units squared).
    """
    d = pred - target
    sq = d.real.square() + d.imag.square() if d.is_complex() else d.square()
    return _reduce(sq, weight)

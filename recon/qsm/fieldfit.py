"""Multi-echo field fit: complex echoes -> off-resonance (Hz), with spatial phase unwrapping.

Model per voxel: ``m_e = |m_e| exp(j (phi0 + 2 pi f TE_e))`` with ``TE`` in ms and ``f`` in kHz internally
(reported in Hz). Steps (the order MEDI's ``Fit_ppm_complex`` / SEPIA's "optimum weights" use, written out):

1. **Coarse field** from the first echo spacing, ``angle(m_2 conj(m_1)) / (2 pi dTE)``; it is wrapped where
   ``|f| > 1 / (2 dTE)`` (88 Hz at dTE = 5.7 ms), so its phase is unwrapped *spatially* by
   :func:`unwrap_phase`: weighted least squares on the wrapped finite differences (Ghiglia & Romero, JOSA A
   1994;11:107; the gradients of voxel pairs with both voxels in the mask, solved by the project's CG), then
   the congruence step ``psi + 2 pi round((phi_ls - psi) / 2 pi)`` that makes the result an exact 2 pi
   multiple away from the wrapped input. The one global 2 pi ambiguity is fixed by the weighted median field
   closest to 0 Hz (the centre frequency is set on the object).
2. **Weighted least-squares line** per voxel on the demodulated echoes ``m_e exp(-j 2 pi f_coarse TE_e)``
   (their phases are small, unwrapped along TE): ``phase_e = phi0 + 2 pi df TE_e`` with weights ``|m_e|^2``
   (the phase of echo e has variance ``sigma^2 / (2 |m_e|^2)``), so the fitted slope weights every echo by
   ``|m_e|^2 (TE_e - TE_w)^2``: magnitude x TE weights. ``f = f_coarse + df``.
3. The fit's **noise level** ``sigma_f = sigma / (2 pi sqrt(2 sum_e |m_e|^2 (TE_e - TE_w)^2))`` (Hz, for a
   complex noise of standard deviation ``sigma``) is returned as a relative data weight ``1 / sigma_f`` for a
   weighted dipole inversion.

Arrays: echoes complex ``(nte, nz, ny, nx)``; maps float ``(nz, ny, nx)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from qmapinr.recon.optim.cg import conjugate_gradient

__all__ = ["FieldFit", "wrap", "unwrap_phase", "fit_field"]

log = logging.getLogger(__name__)


def wrap(phi: np.ndarray) -> np.ndarray:
    """Wrap angles (rad) into ``[-pi, pi)``."""
    return (np.asarray(phi) + np.pi) % (2.0 * np.pi) - np.pi


def _pair_weights(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis, float weight of the forward pair (i, i+1): 1 where both voxels are in ``mask`` (last slab 0)."""
    out = []
    for ax in range(3):
        w = np.zeros(mask.shape)
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        w[tuple(a)] = (mask[tuple(a)] & mask[tuple(b)]).astype(np.float64)
        out.append(w)
    return out


def _grad(x: np.ndarray, ax: int) -> np.ndarray:
    g = np.zeros_like(x)
    a = [slice(None)] * 3
    b = [slice(None)] * 3
    a[ax], b[ax] = slice(0, -1), slice(1, None)
    g[tuple(a)] = x[tuple(b)] - x[tuple(a)]
    return g


def _grad_t(g: np.ndarray, ax: int) -> np.ndarray:
    """Adjoint of :func:`_grad` (negative divergence)."""
    x = np.zeros_like(g)
    a = [slice(None)] * 3
    b = [slice(None)] * 3
    a[ax], b[ax] = slice(0, -1), slice(1, None)
    x[tuple(a)] -= g[tuple(a)]
    x[tuple(b)] += g[tuple(a)]
    return x


def unwrap_phase(psi: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None, n_iter: int = 400,
                 tol: float = 1e-6) -> np.ndarray:
    """Spatially unwrap a wrapped phase ``psi`` (rad, ``(nz, ny, nx)``) inside ``mask``.

    Weighted least squares on wrapped differences (``min sum_pairs w (phi_i+1 - phi_i - W(psi_i+1 - psi_i))^2``,
    ``w`` = product of the two voxels' ``weight``, default 1, and 0 for pairs leaving the mask), then the
    congruence step, so the output differs from ``psi`` by exact multiples of 2 pi. Exact when the true phase
    changes by less than pi between neighbours. The result is defined up to one global 2 pi multiple (chosen so
    that the weighted median inside the mask lies in ``[-pi, pi)``); 0 outside ``mask``.
    """
    m = np.asarray(mask).astype(bool)
    if psi.shape != m.shape or psi.ndim != 3:
        raise ValueError(f"psi and mask must both be (nz, ny, nx); got {psi.shape} and {m.shape}")
    if not m.any():
        raise ValueError("unwrap_phase: mask is empty")
    v = np.ones(m.shape) if weight is None else np.asarray(weight, dtype=np.float64)
    vm = np.where(m, v, 0.0)
    pw = _pair_weights(m)
    w = []
    for ax in range(3):
        nb = np.roll(vm, -1, axis=ax)  # value of the forward neighbour (the roll's wrap pair has weight 0)
        w.append(pw[ax] * np.sqrt(vm * nb))
    psi = np.where(m, wrap(psi), 0.0)
    rhs = sum(_grad_t(w[ax] * wrap(_grad(psi, ax)), ax) for ax in range(3))
    reg = 1e-8  # pins the free constant of each connected component

    def normal(x: np.ndarray) -> np.ndarray:
        return sum(_grad_t(w[ax] * _grad(x, ax), ax) for ax in range(3)) + reg * m * x

    phi, it = conjugate_gradient(normal, rhs, x0=psi.copy(), n_iter=n_iter, tol=tol)
    out = psi + 2.0 * np.pi * np.round((phi - psi) / (2.0 * np.pi))
    k = np.round(_weighted_median(out[m], vm[m]) / (2.0 * np.pi))
    out = np.where(m, out - 2.0 * np.pi * k, 0.0)
    log.debug("unwrap_phase: %d CG iterations", it)
    return out


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    if cw[-1] <= 0:
        return float(np.median(x))
    return float(x[order][np.searchsorted(cw, 0.5 * cw[-1])])


@dataclass
class FieldFit:
    """Result of :func:`fit_field`; float32 ``(nz, ny, nx)`` maps, 0 outside ``mask``.

    Attributes
    ----------
    b0_hz : off-resonance (Hz), positive = higher field (the project's ``phase = Phase0 + 2 pi B0 TE``).
    phase0 : phase at TE = 0 (rad, wrapped).
    weight : ``1 / sigma_f`` up to the (unknown) noise level: ``sqrt(2 sum_e |m_e|^2 (TE_e - TE_w)^2)`` (1/Hz
        times the signal unit); use it relative (normalised to its in-mask median by :func:`fit_field`).
    residual : weighted rms phase residual of the line fit (rad).
    mask : bool.
    """

    b0_hz: np.ndarray
    phase0: np.ndarray
    weight: np.ndarray
    residual: np.ndarray
    mask: np.ndarray


def fit_field(echoes: np.ndarray, te_ms: np.ndarray | tuple[float, ...], mask: np.ndarray,
              unwrap: bool = True) -> FieldFit:
    """Multi-echo weighted least-squares field fit (module docstring).

    Parameters
    ----------
    echoes : complex ``(nte, nz, ny, nx)`` echo images (any complex scale), ``nte >= 2``.
    te_ms : ``(nte,)`` echo times in ms, increasing.
    mask : bool ``(nz, ny, nx)`` where the field is fitted.
    unwrap : spatially unwrap the first-spacing phase (False: assume ``|f| < 1 / (2 dTE)`` everywhere).
    """
    e = np.asarray(echoes, dtype=np.complex128)
    te = np.asarray(te_ms, dtype=np.float64).reshape(-1)
    m = np.asarray(mask).astype(bool)
    if e.ndim != 4 or e.shape[0] != te.size or e.shape[1:] != m.shape:
        raise ValueError(f"echoes must be (nte, nz, ny, nx) matching te_ms and mask; got {e.shape}, "
                         f"{te.size} TEs, mask {m.shape}")
    if te.size < 2 or np.any(np.diff(te) <= 0):
        raise ValueError(f"need >= 2 increasing echo times, got {tuple(te)}")
    if not m.any():
        raise ValueError("fit_field: mask is empty")
    if not np.all(np.isfinite(e[:, m])):
        raise ValueError("fit_field: non-finite echoes inside the mask")
    mag2 = np.abs(e) ** 2
    dte = te[1] - te[0]
    psi = np.angle(e[1] * np.conj(e[0]))  # wrapped 2 pi f dTE
    if unwrap:
        w0 = np.sqrt(mag2[0] * mag2[1])
        med = np.median(w0[m])
        psi = unwrap_phase(psi, m, weight=w0 / med if med > 0 else None)
    f_coarse = psi / (2.0 * np.pi * dte)  # kHz
    demod = e * np.exp(-2j * np.pi * f_coarse[None] * te[:, None, None, None])
    ph = np.unwrap(np.angle(demod), axis=0)
    wsum = mag2.sum(0) + 1e-300
    te_w = (mag2 * te[:, None, None, None]).sum(0) / wsum
    ph_w = (mag2 * ph).sum(0) / wsum
    dt = te[:, None, None, None] - te_w[None]
    sxx = (mag2 * dt**2).sum(0) + 1e-300
    slope = (mag2 * dt * (ph - ph_w[None])).sum(0) / sxx  # rad / ms
    icpt = ph_w - slope * te_w
    res = ph - (icpt[None] + slope[None] * te[:, None, None, None])
    rms = np.sqrt((mag2 * res**2).sum(0) / wsum)
    b0 = (f_coarse + slope / (2.0 * math.pi)) * 1e3  # kHz -> Hz
    weight = np.sqrt(2.0 * sxx) * 1e-3 * 2.0 * math.pi  # per Hz (TE in ms)
    med = float(np.median(weight[m]))
    weight = weight / med if med > 0 else weight

    def out(x: np.ndarray) -> np.ndarray:
        return np.where(m, x, 0.0).astype(np.float32)

    return FieldFit(b0_hz=out(b0), phase0=out(wrap(icpt)), weight=out(weight), residual=out(rms), mask=m.copy())

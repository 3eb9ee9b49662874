"""Closed-form signal of the T2IR-prepared multi-echo FLASH (design.md, "Signal model").

Per voxel::

    S(n, tau, TE) = h_TE * ss * [1 - c_tau * q**n]
    h_TE = A * sin(alpha) * exp(-TE / T2*) * exp(j * (phi0 + 2*pi*df*TE))
    ss   = (1 - E1) / (1 - E1 * cos(alpha)),   E1 = exp(-TR / T1),   q = E1 * cos(alpha)
    c_tau = 1 - B * exp(-tau / T2)                          (closed form, paper)

which equals the paper's ``A (1-E1)/(1-E1 cos a) sin a e^{-TE/T2*} e^{j phi} [1 + (B e^{-tau/T2} - 1)(E1 cos a)^n]``.
For a tau-outer loop (all shots of one tau before the next) the pre-preparation magnetisation is the
fixed point ``Mz_pre = Mss (1 - q^N') / (1 - B e^{-tau/T2} q^N')`` of one shot, which keeps the same
``1 - c_tau q^n`` form with ``c_tau = 1 - B e^{-tau/T2} Mz_pre / Mss`` (design.md); free recovery of
``RecoveryDelay_ms`` between shots is included in that fixed point.

All functions are written for torch tensors (autograd-friendly) and broadcast over leading voxel axes.
Times in ms, off-resonance in Hz, phases in rad.
"""

from __future__ import annotations

import math

import torch

from qmapinr.recon.kspace import SequenceParams


def steady_state_terms(t1_ms: torch.Tensor, seq: SequenceParams) -> tuple[torch.Tensor, torch.Tensor]:
    """FLASH steady-state factor ``ss`` and per-readout decay ``q = E1 cos(alpha)``; shapes as ``t1_ms``."""
    alpha = math.radians(seq.flip_deg)
    e1 = torch.exp(-seq.tr_ms / t1_ms)
    ss = (1.0 - e1) / (1.0 - e1 * math.cos(alpha))
    q = e1 * math.cos(alpha)
    return ss, q


def prep_coefficients(t1_ms: torch.Tensor, t2_ms: torch.Tensor, seq: SequenceParams) -> torch.Tensor:
    """``c_tau`` of ``1 - c_tau q^n``: shape ``(..., ntau)`` for voxel tensors of shape ``(...)``.

    ``prep_loop_order`` None -> closed form (steady state before each preparation); ``"tau-outer"`` ->
    the shot-to-shot fixed point including ``recovery_delay_ms``. ``"shot-outer"`` has no per-tau closed form
    and is rejected here (simulate it with :func:`qmapinr.recon.sim` sequential recursion instead).
    """
    tau = torch.as_tensor(seq.tau_ms, dtype=t2_ms.dtype, device=t2_ms.device)
    prep = seq.inversion_efficiency * torch.exp(-tau / t2_ms[..., None])  # B e^{-tau/T2}
    if seq.prep_loop_order in (None, ""):
        return 1.0 - prep
    if seq.prep_loop_order != "tau-outer":
        raise ValueError(
            f"prep_loop_order={seq.prep_loop_order!r} has no closed-form signal; use None or 'tau-outer'"
        )
    _, q = steady_state_terms(t1_ms, seq)
    qn = (q ** seq.nseg)[..., None]  # magnetisation left of (Mz0 - Mss) after one segment
    # Free recovery after the segment: Mz -> 1 - (1 - Mz) e^{-d/T1} (Mz in units of M0).
    er = torch.exp(-seq.recovery_delay_ms / t1_ms)[..., None]
    ss, _ = steady_state_terms(t1_ms, seq)
    ss = ss[..., None]
    # One shot maps Mz_pre -> Mz_end = ss + (prep*Mz_pre - ss) q^N -> Mz_next = 1 - (1 - Mz_end) er.
    # Fixed point: Mz_pre = [1 - er + er*ss*(1 - qN)] / (1 - er*prep*qN).
    mz_pre = (1.0 - er + er * ss * (1.0 - qn)) / (1.0 - er * prep * qn)
    return 1.0 - prep * mz_pre / ss


def echo_factors(
    a: torch.Tensor, t2s_ms: torch.Tensor, phi0_rad: torch.Tensor, df_hz: torch.Tensor, seq: SequenceParams
) -> torch.Tensor:
    """Complex ``h_TE``: shape ``(..., nte)`` = A sin(alpha) e^{-TE/T2*} e^{j(phi0 + 2 pi df TE)}."""
    te = torch.as_tensor(seq.te_ms, dtype=t2s_ms.dtype, device=t2s_ms.device)
    mag = a[..., None] * math.sin(math.radians(seq.flip_deg)) * torch.exp(-te / t2s_ms[..., None])
    phase = phi0_rad[..., None] + 2.0 * math.pi * df_hz[..., None] * te * 1e-3
    return torch.polar(mag, phase)


def signal(
    a: torch.Tensor,
    t1_ms: torch.Tensor,
    t2_ms: torch.Tensor,
    t2s_ms: torch.Tensor,
    phi0_rad: torch.Tensor,
    df_hz: torch.Tensor,
    seq: SequenceParams,
) -> torch.Tensor:
    """Exact signal, complex ``(..., nte, ntau, nseg)`` for voxel tensors of shape ``(...)``."""
    ss, q = steady_state_terms(t1_ms, seq)
    c = prep_coefficients(t1_ms, t2_ms, seq)  # (..., ntau)
    n = torch.arange(seq.nseg, dtype=t1_ms.dtype, device=t1_ms.device)
    qn = q[..., None] ** n  # (..., nseg)
    recovery = ss[..., None, None] * (1.0 - c[..., :, None] * qn[..., None, :])  # (..., ntau, nseg)
    h = echo_factors(a, t2s_ms, phi0_rad, df_hz, seq)  # (..., nte)
    return h[..., :, None, None] * recovery[..., None, :, :].to(h.dtype)

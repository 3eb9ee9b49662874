"""Signal of the T2IR-prepared multi-echo FLASH, with the sequence history of the preparation loop.

Per voxel (docs/design.md, "Signal model")::

    S(n, tau, TE) = h_TE * [a + b_tau * q**n] = h_TE * ss * [1 - c_tau * q**n]
    h_TE  = A * sin(alpha) * exp(-TE / T2*) * exp(j * (phi0 + 2*pi*df*TE))
    ss    = (1 - E1) / (1 - E1 * cos(alpha)),   E1 = exp(-TR / T1),   q = E1 * cos(alpha)
    a     = ss,   b_tau = B e^{-tau/T2} Mz_pre(tau) - ss,   c_tau = -b_tau / ss

``Mz_pre(tau)`` is the longitudinal magnetisation (units of M0) just before the preparation of ``tau``; the
preparation maps it to ``B e^{-tau/T2} Mz_pre`` and readout ``n`` (0-based) of the segment sees
``Mz_n = ss + (Mz_0 - ss) q^n`` (Mz before the n-th excitation; spoiled GRE).

Which ``Mz_pre`` (``SequenceParams.prep_loop_order``):

* ``None`` — the paper's closed form: the FLASH steady state before every preparation, ``Mz_pre = ss``,
  ``c_tau = 1 - B e^{-tau/T2}``.
* ``"tau-outer"`` — all shots of one tau, then the next: the fixed point of one shot of that tau,
  ``Mz_pre = d / (1 - g_tau)``.
* ``"shot-outer"`` — every shot cycles through all tau: the periodic fixed point of the affine map over one
  full cycle (the pre-prep Mz of tau_k is where the tau_{k-1} segment ended), solved in closed form.

One segment of tau_k (preparation, ``nseg`` readouts, ``recovery_delay_ms`` of free recovery) is the affine map
``Mz_pre -> g_k Mz_pre + d`` with ``g_k = er B e^{-tau_k/T2} q^N`` and ``d = 1 - er + er ss (1 - q^N)``,
``er = e^{-delay/T1}``. Every segment plays all ``nseg`` excitations (also a partial last shot and the dummy
preparations), so this map holds for every preparation.

The periodic steady state is what :func:`prep_coefficients` (and :func:`signal`, the dictionary, the structured
forward model) use: it is exact once the start-up transient has decayed (dummy preparations). The exact
magnetisation of a *finite* scan starting at thermal equilibrium (``Mz = 1``), including
``SequenceParams.prep_dummies`` dummy preparations, is :func:`history_prep_mz` over the list of preparations
from :func:`played_preparations`; the simulator uses it per shot.

All functions take torch tensors (autograd-friendly) and broadcast over leading voxel axes.
Times in ms, off-resonance in Hz, phases in rad.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qmapinr.recon.kspace import SequenceParams


def steady_state_terms(t1_ms: torch.Tensor, seq: SequenceParams) -> tuple[torch.Tensor, torch.Tensor]:
    """FLASH steady-state factor ``ss`` and per-readout decay ``q = E1 cos(alpha)``; shapes as ``t1_ms``."""
    alpha = math.radians(seq.flip_deg)
    e1 = torch.exp(-seq.tr_ms / t1_ms)
    ss = (1.0 - e1) / (1.0 - e1 * math.cos(alpha))
    q = e1 * math.cos(alpha)
    return ss, q


def _prep_factor(t2_ms: torch.Tensor, seq: SequenceParams) -> torch.Tensor:
    """``B e^{-tau/T2}``: shape ``(..., ntau)``."""
    tau = torch.as_tensor(seq.tau_ms, dtype=t2_ms.dtype, device=t2_ms.device)
    return seq.inversion_efficiency * torch.exp(-tau / t2_ms[..., None])


def segment_map(t1_ms: torch.Tensor, t2_ms: torch.Tensor, seq: SequenceParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine map of one segment ``Mz_pre -> g_tau Mz_pre + d`` (next preparation's Mz_pre).

    Returns ``g`` of shape ``(..., ntau)`` and ``d`` of shape ``(..., 1)`` for voxel tensors ``(...)``.
    """
    ss, q = steady_state_terms(t1_ms, seq)
    qn = (q ** seq.nseg)[..., None]
    er = torch.exp(-seq.recovery_delay_ms / t1_ms)[..., None]
    g = er * _prep_factor(t2_ms, seq) * qn
    d = 1.0 - er + er * ss[..., None] * (1.0 - qn)
    return g, d


def pre_prep_mz(t1_ms: torch.Tensor, t2_ms: torch.Tensor, seq: SequenceParams) -> torch.Tensor:
    """Periodic-steady-state ``Mz_pre`` (units of M0) before the preparation of each (physical) tau: ``(..., ntau)``."""
    if seq.prep_groups is not None:
        raise ValueError("pre_prep_mz needs the physical sequence (seq.physical()), not line groups")
    order = seq.prep_loop_order
    if order is None:
        ss, _ = steady_state_terms(t1_ms, seq)
        return ss[..., None].expand(*ss.shape, seq.ntau)
    g, d = segment_map(t1_ms, t2_ms, seq)
    if order == "tau-outer":
        return d / (1.0 - g)
    if order != "shot-outer":
        raise ValueError(f"prep_loop_order={order!r}; expected None, 'tau-outer' or 'shot-outer'")
    # One cycle tau_0 .. tau_{K-1}: M_0 -> G M_0 + D; periodic fixed point M_0 = D / (1 - G), then forward.
    big_g = torch.ones_like(d)
    big_d = torch.zeros_like(d)
    for k in range(seq.ntau):
        big_g, big_d = g[..., k: k + 1] * big_g, g[..., k: k + 1] * big_d + d
    m = big_d / (1.0 - big_g)
    out = [m]
    for k in range(seq.ntau - 1):
        m = g[..., k: k + 1] * m + d
        out.append(m)
    return torch.cat(out, dim=-1)


def prep_coefficients(t1_ms: torch.Tensor, t2_ms: torch.Tensor, seq: SequenceParams) -> torch.Tensor:
    """``c_tau`` of ``ss [1 - c_tau q^n]`` in the periodic steady state: shape ``(..., ntau)``.

    With ``seq.prep_groups`` (:mod:`qmapinr.recon.physics.history`): one ``c`` per line group, the periodic
    steady state of its physical tau or the exact coefficient of its transient shot.
    """
    groups = seq.prep_groups
    if groups is not None:
        phys = seq.physical()
        c = prep_coefficients(t1_ms, t2_ms, phys)  # (..., ntau physical)
        index = torch.as_tensor(groups.group_tau, device=t1_ms.device)
        shots = [i for i, s in enumerate(groups.group_shot) if s >= 0]
        if shots:
            c = torch.cat([c, shot_coefficients(t1_ms, t2_ms, phys, np.asarray(groups.shot_tau))], -1)
            index = torch.where(torch.as_tensor(groups.group_shot, device=t1_ms.device) >= 0,
                                phys.ntau + torch.as_tensor(groups.group_shot, device=t1_ms.device), index)
        return c.index_select(-1, index)
    if seq.prep_loop_order is None:
        return 1.0 - _prep_factor(t2_ms, seq)
    ss, _ = steady_state_terms(t1_ms, seq)
    return 1.0 - _prep_factor(t2_ms, seq) * pre_prep_mz(t1_ms, t2_ms, seq) / ss[..., None]


def recovery_ab(t1_ms: torch.Tensor, t2_ms: torch.Tensor, seq: SequenceParams) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b_tau`` of ``Mz_n = a + b_tau q^n`` (periodic steady state): both ``(..., ntau)``."""
    ss, _ = steady_state_terms(t1_ms, seq)
    a = ss[..., None].expand(*ss.shape, seq.ntau)
    return a, -a * prep_coefficients(t1_ms, t2_ms, seq)


def played_preparations(shot_tau: np.ndarray, seq: SequenceParams) -> tuple[np.ndarray, np.ndarray]:
    """Every preparation a scan plays, dummies included, in time order.

    Parameters
    ----------
    shot_tau : int ``(nshots,)`` tau index of every *acquired* shot, in acquisition order.
    seq : ``prep_loop_order`` and ``prep_dummies`` (dummy preparations: full segments without acquisition).
        ``"shot-outer"`` (and ``None``): ``prep_dummies`` dummies cycling tau_0, tau_1, ... before the first
        acquired shot. ``"tau-outer"``: ``prep_dummies`` dummies of that tau before every tau block.

    Returns
    -------
    prep_tau : int ``(nprep,)`` tau index of every preparation played.
    acquired : int ``(nshots,)`` position of each acquired shot in ``prep_tau``.
    """
    shot_tau = np.asarray(shot_tau, dtype=np.int64)
    nd = int(seq.prep_dummies)
    if seq.prep_loop_order == "tau-outer":
        prep, acq = [], []
        for i, t in enumerate(shot_tau):
            if i == 0 or t != shot_tau[i - 1]:
                prep.extend([int(t)] * nd)
            acq.append(len(prep))
            prep.append(int(t))
        return np.asarray(prep, dtype=np.int64), np.asarray(acq, dtype=np.int64)
    dummies = np.arange(nd, dtype=np.int64) % seq.ntau
    return np.concatenate([dummies, shot_tau]), np.arange(shot_tau.size, dtype=np.int64) + nd


def history_prep_mz(t1_ms: torch.Tensor, t2_ms: torch.Tensor, seq: SequenceParams,
                    prep_tau: np.ndarray) -> torch.Tensor:
    """Exact ``Mz_pre`` before every played preparation of a scan that starts at ``Mz = 1``: ``(..., nprep)``."""
    g, d = segment_map(t1_ms, t2_ms, seq)
    m = torch.ones_like(d)
    out = []
    for t in np.asarray(prep_tau, dtype=np.int64):
        out.append(m)
        m = g[..., int(t): int(t) + 1] * m + d
    return torch.cat(out, dim=-1) if out else d[..., :0]


def shot_coefficients(t1_ms: torch.Tensor, t2_ms: torch.Tensor, seq: SequenceParams,
                      shot_tau: np.ndarray) -> torch.Tensor:
    """Exact ``c`` of every acquired shot (``ss [1 - c q^n]``), start-up transient included: ``(..., nshots)``.

    With ``prep_loop_order=None`` (the closed form) every shot has the closed-form ``c_tau``.
    """
    shot_tau = np.asarray(shot_tau, dtype=np.int64)
    idx = torch.as_tensor(shot_tau, device=t1_ms.device)
    pf = _prep_factor(t2_ms, seq).index_select(-1, idx)
    if seq.prep_loop_order is None:
        return 1.0 - pf
    prep_tau, acquired = played_preparations(shot_tau, seq)
    mz = history_prep_mz(t1_ms, t2_ms, seq, prep_tau)
    mz = mz.index_select(-1, torch.as_tensor(acquired, device=t1_ms.device))
    ss, _ = steady_state_terms(t1_ms, seq)
    return 1.0 - pf * mz / ss[..., None]


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
    """Periodic-steady-state signal, complex ``(..., nte, ntau, nseg)`` for voxel tensors of shape ``(...)``."""
    ss, q = steady_state_terms(t1_ms, seq)
    c = prep_coefficients(t1_ms, t2_ms, seq)  # (..., ntau)
    n = torch.arange(seq.nseg, dtype=t1_ms.dtype, device=t1_ms.device)
    qn = q[..., None] ** n  # (..., nseg)
    recovery = ss[..., None, None] * (1.0 - c[..., :, None] * qn[..., None, :])  # (..., ntau, nseg)
    h = echo_factors(a, t2s_ms, phi0_rad, df_hz, seq)  # (..., nte)
    return h[..., :, None, None] * recovery[..., None, :, :].to(h.dtype)

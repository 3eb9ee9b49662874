"""Start-up transient of a finite scan: the acquired shots that are not yet in the periodic steady state.

The reconstruction's signal model (:mod:`qmapinr.recon.physics.signal`) uses the periodic steady state of the
declared preparation loop. A scan starts at thermal equilibrium, plays ``prep_dummies`` dummy preparations and
then its shots; while the transient has not decayed, a shot's pre-preparation magnetisation is not the steady
one. How long that takes grows with T1 and with fewer readouts per segment: on the demo protocol (32 readouts,
alpha 8 deg, two shots per tau at R = 4) the CSF coefficient ``c`` of every acquired shot still differs from its
steady value by 1.5-43 % (WM/GM by under 1 %), and fitting the steady-state model to such data leaves a 17 %
relative residual on noiseless data, dominated by the bright CSF -- wrong maps everywhere through aliasing.

:func:`with_shot_groups` makes the model exact: every acquired shot whose exact coefficient differs from the
steady one by more than ``tol`` anywhere on a T1 x T2 tissue grid becomes its own *line group* with its own
``c`` (from :func:`~qmapinr.recon.physics.signal.shot_coefficients`); the other shots keep one group per tau.
The signal keeps the form ``h_TE ss [1 - c_g q^n]``, so the structured rank-K forward, the dictionary, the
low-resolution fit and the subspace baseline all work unchanged with "tau" read as "group"
(:class:`~qmapinr.recon.kspace.PrepGroups`); the price in the structured forward is ``K`` more FFTs per
transient shot, or only ``K'`` (2-4) where its tau also has a steady group (:func:`transient_corrections`).

Which lines were one shot comes from the acquisition order (:attr:`KSpace6D.acq_order`, the order in which the
lines arrived, i.e. time order on a scanner): a new shot starts where the tau index changes or the readout
index ``n`` does not increase. Shots that were never acquired (an aborted scan's end) do not matter; a lost
shot in the middle would shift the history and is not detectable from the data.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from qmapinr.recon.kspace import KSpace6D, PrepGroups, SequenceParams
from qmapinr.recon.physics.signal import prep_coefficients, shot_coefficients, steady_state_terms

log = logging.getLogger(__name__)

#: |c_shot - c_tau| above which a shot gets its own group (c ~ 1-2; image noise at SNR 30 is ~3 %).
TRANSIENT_TOL = 1e-3
#: Tissue grid (ms) over which a shot's transient is judged: every T1 and T2 a brain or phantom may contain.
TISSUE_T1_MS = (100.0, 5000.0)
TISSUE_T2_MS = (10.0, 2500.0)
#: At most this many cycles of ntau shots get their own groups (:func:`with_shot_groups`).
MAX_TRANSIENT_CYCLES = 2


def shot_sequence(tau: np.ndarray, seg: np.ndarray, acq_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shots of a scan from its lines' acquisition order.

    Parameters
    ----------
    tau, seg : int ``(nlines,)`` tau index and readout index n of every line.
    acq_order : int ``(nlines,)`` acquisition rank of every line (any increasing time key).

    Returns
    -------
    shot : int64 ``(nlines,)`` shot index of every line (0 = first acquired shot).
    shot_tau : int64 ``(nshots,)`` tau index of every shot in acquisition order.
    """
    tau, seg = np.asarray(tau, dtype=np.int64), np.asarray(seg, dtype=np.int64)
    order = np.argsort(np.asarray(acq_order), kind="stable")
    t, s = tau[order], seg[order]
    new = np.ones(t.size, dtype=bool)
    new[1:] = (t[1:] != t[:-1]) | (s[1:] <= s[:-1])
    shot = np.empty(t.size, dtype=np.int64)
    shot[order] = np.cumsum(new) - 1
    return shot, t[new]


def tissue_grid(n_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 T1, T2 ``(n_grid**2,)`` (ms): the log-spaced :data:`TISSUE_T1_MS` x :data:`TISSUE_T2_MS` grid."""
    t1, t2 = np.meshgrid(np.geomspace(*TISSUE_T1_MS, n_grid), np.geomspace(*TISSUE_T2_MS, n_grid))
    return torch.from_numpy(t1.ravel()), torch.from_numpy(t2.ravel())


def transient_deviation(seq: SequenceParams, shot_tau: np.ndarray, n_grid: int = 16) -> np.ndarray:
    """float64 ``(nshots,)``: largest ``|c_shot - c_tau|`` of every shot over the log-spaced
    :data:`TISSUE_T1_MS` x :data:`TISSUE_T2_MS` grid (``n_grid`` per axis)."""
    shot_tau = np.asarray(shot_tau, dtype=np.int64)
    if seq.prep_loop_order is None or shot_tau.size == 0:
        return np.zeros(shot_tau.size)
    t1, t2 = tissue_grid(n_grid)
    steady = prep_coefficients(t1, t2, seq)[:, torch.from_numpy(shot_tau)]
    exact = shot_coefficients(t1, t2, seq, shot_tau)
    return (exact - steady).abs().amax(0).numpy()


def transient_shots(seq: SequenceParams, shot_tau: np.ndarray, tol: float = TRANSIENT_TOL) -> np.ndarray:
    """bool ``(nshots,)``: shots whose :func:`transient_deviation` exceeds ``tol``."""
    return transient_deviation(seq, shot_tau) > tol


def with_shot_groups(kspace: KSpace6D, tol: float = TRANSIENT_TOL, max_cycles: int = MAX_TRANSIENT_CYCLES
                     ) -> KSpace6D:
    """``kspace`` with its transient shots as their own line groups (module docstring), or ``kspace`` itself
    when the header declares no loop order, the acquisition order is unknown, no shot is transient, or the
    groups are already there.

    At most ``max_cycles * ntau`` shots (the earliest, whose transient is the largest) get their own group: each
    costs K (or K', :func:`transient_corrections`) more FFTs per coil and echo in the structured forward, and on
    a long scan the transient of a CSF-like T1 (~4.5 s) lasts ~8 cycles to 1e-3 while the later ones are a few
    per mille of the lines with a deviation of ~1 %; the largest deviation left is logged.
    """
    seq = kspace.seq
    if seq.prep_groups is not None or seq.prep_loop_order is None or kspace.acq_order is None:
        return kspace
    shot, shot_tau = shot_sequence(kspace.tau, kspace.seg, kspace.acq_order)
    deviation = transient_deviation(seq, shot_tau)
    trans = deviation > tol
    if not trans.any():
        return kspace
    trans_shots = np.flatnonzero(trans)
    limit = max(1, max_cycles) * seq.ntau
    if trans_shots.size > limit:
        left = deviation[trans_shots[limit:]].max()
        log.info("sequence history: %d transient shots; the first %d get their own groups, the rest keep the "
                 "steady-state model (largest |c - c_steady| left %.2g)", trans_shots.size, limit, left)
        trans[trans_shots[limit:]] = False
        trans_shots = trans_shots[:limit]
    line_trans = trans[shot]
    steady_taus = np.unique(np.asarray(kspace.tau)[~line_trans])
    group = np.empty(kspace.nlines, dtype=np.int64)
    lookup = np.full(seq.ntau, -1, dtype=np.int64)
    lookup[steady_taus] = np.arange(steady_taus.size)
    group[~line_trans] = lookup[np.asarray(kspace.tau)[~line_trans]]
    rank = np.full(shot_tau.size, -1, dtype=np.int64)
    rank[trans_shots] = steady_taus.size + np.arange(trans_shots.size)
    group[line_trans] = rank[shot[line_trans]]
    group_tau = np.concatenate([steady_taus, shot_tau[trans_shots]])
    groups = PrepGroups(tau_ms=seq.tau_ms, group_tau=tuple(int(t) for t in group_tau),
                        group_shot=(-1,) * steady_taus.size + tuple(int(s) for s in trans_shots),
                        shot_tau=tuple(int(t) for t in shot_tau[: trans_shots.max() + 1]))
    grouped = dataclasses.replace(seq, tau_ms=tuple(seq.tau_ms[t] for t in group_tau), prep_groups=groups)
    log.info("sequence history: %d of %d acquired shots are still in the start-up transient (|c - c_steady| > "
             "%g); modelled exactly as their own line groups (%d groups instead of %d taus)", trans_shots.size,
             shot_tau.size, tol, grouped.ntau, seq.ntau)
    return dataclasses.replace(kspace, tau=group, seq=grouped)


def display_groups(seq: SequenceParams) -> np.ndarray:
    """int64 ``(ntau physical,)``: for every physical tau, the group that stands for it in per-tau outputs -- its
    steady-state group, or else its last transient shot (the one closest to the steady state)."""
    if seq.prep_groups is None:
        return np.arange(seq.ntau, dtype=np.int64)
    g = seq.prep_groups
    out = np.zeros(len(g.tau_ms), dtype=np.int64)
    for t in range(len(g.tau_ms)):
        mine = [i for i, gt in enumerate(g.group_tau) if gt == t]
        steady = [i for i in mine if g.group_shot[i] < 0]
        out[t] = steady[0] if steady else (max(mine, key=lambda i: g.group_shot[i]) if mine else 0)
    return out


#: Largest absolute error (units of M0 of ``c q^n``, over the tissue grid) of a transient group's low-rank
#: correction in :func:`transient_corrections`; the structured forward's own q^n basis error is ~1e-3.
CORRECTION_TOL = 1e-5


def transient_corrections(seq: SequenceParams, max_rank: int, tol: float = CORRECTION_TOL, n_grid: int = 48
                          ) -> dict[int, tuple[int, torch.Tensor]]:
    """Low-rank corrections of the transient groups that have a steady-state group of the same physical tau.

    A transient shot's signal ``1 - c_g q^n = (1 - c_s q^n) - (c_g - c_s) q^n`` is its steady group's (atoms the
    structured forward computes anyway) plus a correction ``delta q^n`` whose magnitude is largest where T1 is
    long and ``q^n`` is smooth, so it needs far fewer temporal atoms than the group's own rank-K ``c_g q^n``: an
    orthonormal ``W_g (K', nseg)`` from the SVD of ``delta(T1, T2) q(T1)^n`` over the log-spaced
    :data:`TISSUE_T1_MS` x :data:`TISSUE_T2_MS` grid, ``K'`` the smallest rank whose largest absolute
    projection error is below ``tol`` (measured: K' = 2-3 at 1e-5 on the phantom and demo protocols, against
    K = 8). A group whose ``K'`` would reach ``max_rank`` keeps its own atoms.

    Returns ``{group: (steady group of its tau, W_g float32 (K', nseg))}``; empty without line groups.
    """
    groups = seq.prep_groups
    if groups is None:
        return {}
    steady = {t: i for i, (t, s) in enumerate(zip(groups.group_tau, groups.group_shot, strict=True)) if s < 0}
    t1, t2 = tissue_grid(n_grid)
    c = prep_coefficients(t1, t2, seq)  # (grid, groups)
    _, q = steady_state_terms(t1, seq)
    qn = q[:, None] ** torch.arange(seq.nseg, dtype=torch.float64)
    out = {}
    for g, (t, s) in enumerate(zip(groups.group_tau, groups.group_shot, strict=True)):
        if s < 0 or t not in steady:
            continue
        d = (c[:, g] - c[:, steady[t]])[:, None] * qn
        _, _, vh = torch.linalg.svd(d, full_matrices=False)
        for k in range(1, max_rank):
            w = vh[:k]
            if float((d - (d @ w.T) @ w).abs().max()) < tol:
                out[g] = (steady[t], w.to(torch.float32))
                break
    return out

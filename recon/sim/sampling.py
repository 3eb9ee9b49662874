"""Random variable-density Gaussian ky-kz sampling, distributed over the readouts of the T2IR segments.

For every T2-prep index tau an *independent* pattern of ``round(ny * nz / R)`` distinct (ky, kz) lines is
drawn: a small fully sampled centre (``calib``; ``(0, 0)`` = none, pure variable-density sampling as in the
paper) plus lines drawn without replacement with probability
``p(ky, kz) ~ exp(-(dky^2 / (2 sy^2) + dkz^2 / (2 sz^2)))``, ``dky = ky - ny // 2``, ``sy = sigma_frac * ny``
(likewise z). The selected lines are shuffled and dealt to the readouts of the segments: line ``i`` of tau
``t`` gets readout index ``n = i % nseg`` and shot ``i // nseg`` (within tau), so every n sees a different
random subset of the pattern. When ``nseg`` does not divide the line count the last shot of every tau is
*partial*: it stops after ``nlines_per_tau % nseg`` readouts (those n then have one line more than the
others).

Acquisition order of the shots (``order``):

* ``"shot-outer"`` (default): shot 0 of tau 0, shot 0 of tau 1, ..., shot 0 of tau ntau-1, shot 1 of
  tau 0, ... (every shot cycles through all tau); global shot counter ``s * ntau + t``.
* ``"tau-outer"``: all shots of tau 0, then all of tau 1, ...; global shot counter ``t * nshots + s``.

Within a shot the readouts are in n order. The order is the true time order of the acquisition: the
simulator's signal follows it (each shot starts where the previous segment ended, unless the closed form is
asked for; :mod:`qmapinr.recon.sim.simulate`), and the MRD writer writes the lines in it (``idx.user[0]`` =
shot).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

ORDERS = ("shot-outer", "tau-outer")


@dataclass(frozen=True)
class Lines:
    """Sampled lines in acquisition order; every array is int64 ``(nlines,)``.

    Attributes
    ----------
    ky, kz : phase-encoding indices (0..ny-1, 0..nz-1; k-space centre at ny // 2, nz // 2).
    seg : readout index n after the preparation (0..nseg-1).
    tau : T2-prep index (0..ntau-1).
    shot : global preparation (shot) counter, increasing in acquisition order, starting at 0.
    ny, nz, ntau, nseg : sizes the pattern was drawn for.
    order : ``"shot-outer"`` or ``"tau-outer"``.
    """

    ky: np.ndarray
    kz: np.ndarray
    seg: np.ndarray
    tau: np.ndarray
    shot: np.ndarray
    ny: int
    nz: int
    ntau: int
    nseg: int
    order: str

    @property
    def nlines(self) -> int:
        return int(self.ky.shape[0])

    @property
    def lines_per_tau(self) -> int:
        return self.nlines // self.ntau

    @property
    def acceleration(self) -> float:
        """R = ny * nz / (lines per tau)."""
        return self.ny * self.nz / self.lines_per_tau

    def mask(self) -> np.ndarray:
        """bool ``(ntau, nseg, nz, ny)`` (the layout of :attr:`KSpace6D.mask`)."""
        m = np.zeros((self.ntau, self.nseg, self.nz, self.ny), dtype=bool)
        m[self.tau, self.seg, self.kz, self.ky] = True
        return m


def gaussian_density(ny: int, nz: int, sigma_frac: float = 0.3) -> np.ndarray:
    """Unnormalised sampling density ``(nz, ny)``, 1 at the k-space centre (ny // 2, nz // 2)."""
    dky = np.arange(ny) - ny // 2
    dkz = np.arange(nz) - nz // 2
    sy, sz = sigma_frac * ny, sigma_frac * nz
    return np.exp(-(dkz[:, None] ** 2 / (2 * sz**2) + dky[None, :] ** 2 / (2 * sy**2)))


def _one_pattern(
    ny: int, nz: int, nsel: int, rng: np.random.Generator, sigma_frac: float, calib: tuple[int, int]
) -> np.ndarray:
    """Flat indices ``kz * ny + ky`` of ``nsel`` distinct lines (calibration centre first, then random)."""
    cy, cz = min(calib[0], ny), min(calib[1], nz)
    ys = np.arange(cy) - cy // 2 + ny // 2
    zs = np.arange(cz) - cz // 2 + nz // 2
    centre = (zs[:, None] * ny + ys[None, :]).ravel()
    if centre.size > nsel:  # the centre alone exceeds the budget: keep the lines closest to the centre
        dens = gaussian_density(ny, nz, sigma_frac).ravel()[centre]
        centre = centre[np.argsort(-dens, kind="stable")[:nsel]]
    p = gaussian_density(ny, nz, sigma_frac).ravel().copy()
    p[centre] = 0.0
    nrand = nsel - centre.size
    if nrand == 0:
        return centre
    rand = rng.choice(ny * nz, size=nrand, replace=False, p=p / p.sum())
    return np.concatenate([centre, rand])


def vd_gaussian_lines(
    ny: int,
    nz: int,
    ntau: int,
    nseg: int,
    R: float,
    seed: int | np.random.Generator,
    sigma_frac: float = 0.3,
    calib: tuple[int, int] = (3, 3),
    order: str = "shot-outer",
) -> Lines:
    """Draw the per-tau variable-density patterns and deal their lines to shots and readouts.

    Parameters
    ----------
    ny, nz : phase-encoding matrix sizes.
    ntau : number of T2-prep durations (independent pattern per tau).
    nseg : readouts per segment (shot).
    R : acceleration; each tau gets ``round(ny * nz / R)`` distinct lines (at least 1), so the realised
        acceleration is ``ny * nz / round(ny * nz / R)`` (exactly R when it divides ``ny * nz``).
    seed : int seed or a numpy Generator (all random choices come from it).
    sigma_frac : Gaussian width as a fraction of the matrix size, per axis.
    calib : fully sampled centre (ky size, kz size), clipped to the matrix and to the line budget;
        ``(0, 0)`` = no calibration block.
    order : ``"shot-outer"`` or ``"tau-outer"`` acquisition order of the shots (module docstring).

    Returns
    -------
    Lines, arrays ``(ntau * round(ny * nz / R),)`` in acquisition order.
    """
    if order not in ORDERS:
        raise ValueError(f"order={order!r}; expected one of {ORDERS}")
    if len(calib) != 2 or min(calib) < 0:
        raise ValueError(f"calib={calib} must be two sizes >= 0 (ky, kz); (0, 0) = no calibration block")
    if R < 1.0:
        raise ValueError(f"R={R} < 1: cannot sample more than ny*nz distinct lines per tau")
    if nseg < 1 or ntau < 1:
        raise ValueError(f"nseg={nseg} and ntau={ntau} must be >= 1")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    nsel = max(1, int(round(ny * nz / R)))
    nshots = -(-nsel // nseg)
    # per tau: shuffled flat indices; line i -> (shot i // nseg, n i % nseg)
    flat = np.stack(
        [rng.permutation(_one_pattern(ny, nz, nsel, rng, sigma_frac, calib)) for _ in range(ntau)]
    )
    i = np.arange(nsel)
    s_local, n_local = i // nseg, i % nseg
    t_idx = np.repeat(np.arange(ntau), nsel)
    s_idx = np.tile(s_local, ntau)
    n_idx = np.tile(n_local, ntau)
    f_idx = flat.ravel()
    if order == "shot-outer":
        shot = s_idx * ntau + t_idx
    else:
        shot = t_idx * nshots + s_idx
    acq = np.lexsort((n_idx, shot))  # by shot, then n
    if nsel % nseg:
        log.debug("partial last shot per tau: %d of %d readouts", nsel % nseg, nseg)
    return Lines(
        ky=(f_idx[acq] % ny).astype(np.int64),
        kz=(f_idx[acq] // ny).astype(np.int64),
        seg=n_idx[acq].astype(np.int64),
        tau=t_idx[acq].astype(np.int64),
        shot=shot[acq].astype(np.int64),
        ny=ny,
        nz=nz,
        ntau=ntau,
        nseg=nseg,
        order=order,
    )

"""SVD coil compression of the sampled lines: one matrix for the scan, or one per readout position (geometric).

* :func:`coil_compress` — one compression matrix for the whole scan: the coil covariance of all sampled lines
  (all echoes) is diagonalised and the strongest eigen-coils are kept (PCA coil compression; BART ``cc -S``).
* :func:`geometric_coil_compress` — after the inverse FFT along the fully sampled readout every position x is
  its own (kz, ky) problem, and the coil sensitivities vary far less within one x plane than over the volume,
  so a per-x SVD keeps much more energy with the same number of virtual coils (Zhang, Pauly, Vasanawala,
  Lustig, "Coil compression for accelerated imaging with Cartesian sampling", MRM 2013; BART ``cc -G``).
  Measured on the paper-size NIST scan (24 coils, docs/benchmarks/epoch.md, round 7): 8 virtual coils keep
  94.5 % of the energy with one matrix and 98.4 % per x. The per-x matrices are aligned along x (orthogonal
  Procrustes to the neighbour, from the strongest x outwards, as in the paper) so that the virtual
  sensitivities stay smooth along x; the result is transformed back along x, so it is an ordinary
  :class:`KSpace6D` with ``n_virtual`` coils and every later stage (coil maps, JSENSE, the coil INR) is unchanged.
  SUMMIT compresses data with more than 16 coils by default (geometric, 98 % energy, at least 8). With the coil
  INR free to trade amplitude against the A map, compression left the long-T2 bath at the T2 clamp and A ~10 %
  low at paper size (epoch.md, round 7); keeping the coil root-sum-of-squares fixed (``coil_keep_rss``, on by
  default for compressed data) removes that trade (round 8).
* :func:`compress_as_configured` — what a method config asks for (``virtual_coils``, ``coil_energy``,
  ``min_virtual_coils``, ``coil_compression``, ``compress_above_coils``); :func:`compression_rule` says which
  rule applies without the data.

The number of virtual coils is either given or the fewest that keep ``energy`` of the data energy (the
energy-weighted mean over x for the geometric mode), never fewer than ``min_virtual``. The noise pre-scan is
compressed with one matrix (the global one, or that of the strongest x): it serves the noise level only, which
an orthonormal compression keeps for white, uncorrelated (pre-whitened) coil noise.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.physics.fft import fftc, ifftc

log = logging.getLogger(__name__)


def _count(kept: torch.Tensor, n_virtual: int, energy: float, min_virtual: int, c: int) -> int:
    """The number of virtual coils: ``n_virtual`` if given, else the fewest with ``kept[n - 1] >= energy``."""
    if n_virtual == 0:
        if not 0 < energy <= 1:
            raise ValueError(f"coil compression: give n_virtual in 1..{c} or energy in (0, 1], got {n_virtual}, "
                             f"{energy}")
        n_virtual = int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1
        n_virtual = min(c, max(min_virtual, n_virtual))
    if not 1 <= n_virtual <= c:
        raise ValueError(f"n_virtual={n_virtual} must be in 1..{c}")
    return n_virtual


def _eigen(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at 0, descending) and the matching eigenvectors (columns) of Hermitian ``cov``;
    batched over leading dims."""
    w, v = torch.linalg.eigh(cov)  # ascending
    return w.clamp(min=0).flip(-1), v.flip(-1)


def coil_compress(kspace: KSpace6D, n_virtual: int = 0, energy: float = 0.0, min_virtual: int = 1
                  ) -> tuple[KSpace6D, np.ndarray]:
    """One SVD compression matrix for the scan.

    The ``n_virtual`` strongest eigen-coils of the coil covariance of all lines are kept, or, with
    ``n_virtual = 0`` and ``energy`` in (0, 1], the fewest that keep at least that fraction of the data energy
    (sum of the eigenvalues), but no fewer than ``min_virtual``.

    Returns
    -------
    The compressed :class:`KSpace6D` (noise compressed too) and the complex64 compression matrix
    ``(n_virtual, C)`` with orthonormal rows (``data_v = matrix @ data``).
    """
    c = kspace.ncoils
    d = torch.from_numpy(np.ascontiguousarray(kspace.data)).reshape(c, -1).to(torch.complex128)
    w, v = _eigen(d @ d.conj().T)
    del d
    kept = torch.cumsum(w, 0) / w.sum().clamp(min=1e-300)
    n_virtual = _count(kept, n_virtual, energy, min_virtual, c)
    mat = v[:, :n_virtual].conj().T.to(torch.complex64)  # (n_virtual, C)
    frac = float(kept[n_virtual - 1])
    log.info("coil compression %d -> %d keeps %.4f of the energy", c, n_virtual, frac)
    data = (mat @ torch.from_numpy(np.ascontiguousarray(kspace.data)).reshape(c, -1)).reshape(
        (n_virtual,) + kspace.data.shape[1:])
    return _replace(kspace, data.numpy(), mat, {"n_virtual": n_virtual, "energy_kept": frac, "mode": "global"}), \
        mat.numpy()


def _align(mats: torch.Tensor, start: int) -> torch.Tensor:
    """Per-x compression matrices ``(nx, N, C)`` rotated (``P_x`` unitary ``N x N``) so that each is closest
    to its already aligned neighbour, from ``start`` outwards: ``P_x = U V^H`` of ``A_prev A_x^H = U S V^H``."""
    out = mats.clone()
    nx = mats.shape[0]
    for order in (range(start + 1, nx), range(start - 1, -1, -1)):
        for x in order:
            prev = out[x - 1] if x > start else out[x + 1]
            u, _, vh = torch.linalg.svd(prev @ mats[x].conj().T)
            out[x] = (u @ vh) @ mats[x]
    return out


def geometric_coil_compress(kspace: KSpace6D, n_virtual: int = 0, energy: float = 0.0, min_virtual: int = 1
                            ) -> tuple[KSpace6D, np.ndarray]:
    """Per-readout-position SVD compression, aligned along x (module docstring).

    ``n_virtual`` / ``energy`` / ``min_virtual`` as in :func:`coil_compress`; with ``energy`` the kept fraction
    is the energy-weighted mean over x of each plane's kept fraction.

    Returns
    -------
    The compressed :class:`KSpace6D` (k-space again, ``n_virtual`` coils) and the aligned complex64 matrices
    ``(nx, n_virtual, C)`` (``hybrid_v[..., x] = mats[x] @ hybrid[..., x]`` after the readout IFFT).
    """
    c = kspace.ncoils
    hyb = ifftc(torch.from_numpy(np.ascontiguousarray(kspace.data, dtype=np.complex64)), dims=(-1,))
    nx = hyb.shape[-1]
    planes = hyb.reshape(c, -1, nx).permute(2, 0, 1)  # (nx, C, nte * nlines), a view
    cov = torch.stack([q @ q.conj().T for q in (p.to(torch.complex128) for p in planes)])  # (nx, C, C)
    w, v = _eigen(cov)
    e_x = w.sum(-1)
    kept = torch.cumsum(w, -1).sum(0) / e_x.sum().clamp(min=1e-300)  # energy-weighted kept fraction per count
    n_virtual = _count(kept, n_virtual, energy, min_virtual, c)
    start = int(torch.argmax(e_x))
    mats = _align(v[..., :n_virtual].conj().transpose(-2, -1), start).to(torch.complex64)  # (nx, N, C)
    comp = torch.einsum("xnc,cex->nex", mats, hyb.reshape(c, -1, nx)).reshape((n_virtual,) + hyb.shape[1:])
    data = fftc(comp, dims=(-1,)).numpy()
    frac = float(kept[n_virtual - 1])
    log.info("geometric coil compression %d -> %d keeps %.4f of the energy (per-x matrices, aligned along x)",
             c, n_virtual, frac)
    return _replace(kspace, data, mats[start], {"n_virtual": n_virtual, "energy_kept": frac,
                                                "mode": "geometric"}), mats.numpy()


def _replace(kspace: KSpace6D, data: np.ndarray, noise_mat: torch.Tensor, info: dict) -> KSpace6D:
    noise = None
    if kspace.noise is not None:
        noise = (noise_mat @ torch.from_numpy(kspace.noise.astype(np.complex64))).numpy()
    meta = dict(kspace.meta, coil_compression=info)
    return dataclasses.replace(kspace, data=np.ascontiguousarray(data, dtype=np.complex64), noise=noise, meta=meta)


def compress_as_configured(kspace: KSpace6D, n_virtual: int, energy: float, min_virtual: int,
                           mode: str = "global", above: int = 0) -> KSpace6D:
    """The coil compression a method config asks for (``virtual_coils``, ``coil_energy``, ``min_virtual_coils``,
    ``coil_compression``, ``compress_above_coils``): ``n_virtual`` virtual coils when ``0 < n_virtual < C``; else,
    with ``energy > 0`` and more than ``max(min_virtual, above)`` coils, the fewest keeping ``energy`` of the data
    energy (at least ``min_virtual``); else ``kspace`` itself. ``mode``: "global" (:func:`coil_compress`) or
    "geometric" (:func:`geometric_coil_compress`)."""
    fn = {"global": coil_compress, "geometric": geometric_coil_compress}.get(mode)
    if fn is None:
        raise ValueError(f"coil compression mode {mode!r}: use 'global' or 'geometric'")
    how = compression_rule(kspace.ncoils, n_virtual, energy, min_virtual, above)
    if how == "count":
        return fn(kspace, n_virtual)[0]
    if how == "energy":
        return fn(kspace, energy=energy, min_virtual=min_virtual)[0]
    return kspace


def compression_rule(ncoils: int, n_virtual: int, energy: float, min_virtual: int, above: int = 0) -> str | None:
    """Which rule of :func:`compress_as_configured` applies to data with ``ncoils`` coils: "count", "energy" or
    None (not compressed). The admission estimate (:mod:`qmapinr.recon.methods.budget`) asks the same."""
    if 0 < n_virtual < ncoils:
        return "count"
    if n_virtual == 0 and energy > 0 and ncoils > max(min_virtual, above):
        return "energy"
    return None

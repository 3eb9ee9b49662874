"""Complex echo images from the measured lines, given a reconstruction's maps: the input of a final field fit.

Why: an INR's B0 head is smooth by construction (hash grid + prior) and does not learn the few-Hz, voxel-scale
dipole detail QSM needs; its echo phase is ``Phase0 + 2 pi B0 TE`` exactly, so a field fit on its own echoes
returns its own B0. Here every echo gets a free complex *correction image* ``u_e`` on top of the
reconstruction's signal model and is fitted to the raw lines of that echo alone:

``y_e(line l, coil c) = P_l F [ S_c  s_e(r; group g_l, readout n_l)  u_e(r) ]``,
``s_e(r; g, n) = h_TE_e(r) ss(r) (1 - c_g(r) q(r)^n)``

with ``s_e`` the reconstruction's signal (A, T1, T2, T2*, Phase0, B0 through
:mod:`qmapinr.recon.physics.signal`, the start-up-transient line groups of
:func:`~qmapinr.recon.physics.history.with_shot_groups` included) and ``S_c`` coil maps. The problem is linear
in ``u_e``; every (tau, n) readout of that echo contributes, so at R = 4 the lines of one echo cover k-space
about once. Solved per echo by conjugate gradients on ``(A^H A + lam I) u = A^H y + lam u_0`` with ``u_0`` the
least-squares global scale (so ``lam`` only shrinks towards the model, never towards zero phase) and a
relative ``lam`` (times the mean diagonal of ``A^H A``). The echo images ``s_e(TE) u_e`` then carry the
measured per-echo phase; their multi-echo field fit (:func:`~qmapinr.recon.qsm.fieldfit.fit_field`) gives B0.
Errors of the model common to all echoes (coil phase, Phase0, the magnitude) cancel in the field, which only
reads phase differences between echoes.

Forward: the curves ``1 - c_g q^n`` of every (group, readout) of every voxel in one SVD basis of ``K`` atoms
(:func:`joint_temporal_basis`, relative error ``tol``), so each coil and echo needs ``K`` 3-D FFTs (centred
unitary; the shifts folded into the voxel scatter, the coil maps and the line indices) instead of one per group
and atom. Checked against :func:`~qmapinr.recon.physics.forward.synthesize_lines` in the tests (to 1e-4 with
a tight ``tol``, to the stated error with the default); the adjoint is the exact transpose (dot-product test).
Arrays ``(nz, ny, nx)``; lines ``(C, nlines, nx)``, kx centred.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.optim.cg import conjugate_gradient
from qmapinr.recon.physics.history import with_shot_groups
from qmapinr.recon.physics.signal import echo_factors, prep_coefficients, steady_state_terms

__all__ = ["EchoOp", "joint_temporal_basis", "echo_operators", "echo_images", "field_update"]

log = logging.getLogger(__name__)


class EchoOp:
    """Linear map ``u (nv,) complex -> lines (C, nlines, nx)`` of one echo (module docstring).

    ``y[c, l] = P_l F[S_c sum_k coef[l, k] hs_e U_k u]``: ``K`` coefficient volumes per coil, one 3-D FFT
    each, then one gather of the sampled (kz, ky) and the contraction with the line coefficients. Coils run in
    chunks so that the volumes and the gathered lines of one chunk stay within ``chunk_mb``.

    Parameters
    ----------
    hs_e : complex ``(nv,)`` ``h_TE ss`` of this echo over the voxels ``index`` (the signal at n -> infinity).
    atoms : float ``(nv, K)`` the voxels' temporal coefficients (:func:`joint_temporal_basis`).
    coef : float ``(nlines, K)`` the lines' temporal basis values.
    index : flat voxel indices into ``shape``; sens complex ``(C, nz, ny, nx)``.
    ky, kz : int ``(nlines,)`` (centre at n // 2).
    """

    def __init__(self, hs_e: torch.Tensor, atoms: torch.Tensor, coef: torch.Tensor, index: np.ndarray,
                 shape: tuple[int, int, int], sens: np.ndarray, ky: np.ndarray, kz: np.ndarray,
                 chunk_mb: float = 512.0):
        nz, ny, nx = shape
        self.shape, self.nvox = shape, nz * ny * nx
        zi, yi, xi = np.unravel_index(index, shape)
        self.idx = torch.from_numpy(np.ravel_multi_index(((zi - nz // 2) % nz, (yi - ny // 2) % ny,
                                                          (xi - nx // 2) % nx), shape))
        c = sens.shape[0]
        self.sens = torch.from_numpy(np.ascontiguousarray(np.fft.ifftshift(sens, axes=(-3, -2, -1)),
                                                          dtype=np.complex64)).reshape(c, 1, self.nvox)
        self.ncoils = c
        self.nlines = len(ky)
        self.hs = hs_e.to(torch.complex64)
        self.w = (hs_e[:, None] * atoms).T.to(torch.complex64).contiguous()  # (K, nv)
        self.coef = coef.to(torch.complex64)
        self.plane = torch.from_numpy(((np.asarray(kz) - nz // 2) % nz) * ny + (np.asarray(ky) - ny // 2) % ny)
        per_coil = 8 * self.w.shape[0] * (self.nvox + self.nlines * nx)  # bytes: volumes + gathered lines
        self.chunk = max(1, int(chunk_mb * 2 ** 20 // per_coil))

    def _grid(self, vals: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(vals.shape[:-1] + (self.nvox,), dtype=torch.complex64)
        out[..., self.idx] = vals
        return out

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """complex64 ``(nv,)`` -> ``(C, nlines, nx)`` (kx in FFT order, not centred)."""
        nz, ny, nx = self.shape
        natoms = self.w.shape[0]
        vol = self._grid(self.w * u[None])  # (K, nvox)
        out = torch.empty(self.ncoils, self.nlines, nx, dtype=torch.complex64)
        for c0 in range(0, self.ncoils, self.chunk):
            sens = self.sens[c0:c0 + self.chunk]
            img = (vol[None] * sens).reshape(-1, natoms, nz, ny, nx)
            k = torch.fft.fftn(img, dim=(-3, -2, -1), norm="ortho").reshape(-1, natoms, nz * ny, nx)
            out[c0:c0 + self.chunk] = torch.einsum("cald,la->cld", k[:, :, self.plane], self.coef)
        return out

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """complex64 ``(C, nlines, nx)`` -> ``(nv,)``, the exact transpose of :meth:`forward`."""
        nz, ny, nx = self.shape
        natoms = self.w.shape[0]
        vol = torch.zeros(natoms, self.nvox, dtype=torch.complex64)
        for c0 in range(0, self.ncoils, self.chunk):
            yc = y[c0:c0 + self.chunk]
            contrib = torch.einsum("cld,la->cald", yc, self.coef.conj())  # (c, K, L, nx)
            grid = torch.zeros(yc.shape[0], natoms, nz * ny, nx, dtype=torch.complex64)
            grid.index_add_(2, self.plane, contrib)
            img = torch.fft.ifftn(grid.view(-1, natoms, nz, ny, nx), dim=(-3, -2, -1), norm="ortho")
            vol += (img.reshape(-1, natoms, self.nvox) * self.sens[c0:c0 + self.chunk].conj()).sum(0)
        return (vol[:, self.idx] * self.w.conj()).sum(0)


def joint_temporal_basis(c: torch.Tensor, q: torch.Tensor, nseg: int, tol: float = 1e-3,
                         max_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One temporal basis for every (group, readout) of every voxel: ``1 - c_g q^n ~ sum_k U_k W_k(g, n)``.

    The per-group atoms of the SUMMIT forward (``1 + K`` per group, ``G (1 + K)`` coefficient volumes per coil
    and echo) are what the field fit needs least: it only refines a correction on top of the curves, so one
    SVD basis over all groups with a relative energy error ``tol`` (default 1e-3, under the 1/SNR of a scan)
    serves, and ``K_tot`` volumes replace ``G (1 + K)`` (paper size: 49 -> ~6). ``W`` is the SVD of at most
    ``max_rows`` voxels taken at a fixed stride (deterministic); ``U`` projects every voxel on it.

    Parameters
    ----------
    c : float64 ``(nv, G)`` preparation coefficients; q : float64 ``(nv,)`` readout decay per shot.
    Returns U float64 ``(nv, K)``, W float64 ``(K, G * nseg)`` (column ``g * nseg + n``) and the relative
    error ``||M - U W|| / ||M||`` over all voxels.
    """
    nv, ng = c.shape
    n = torch.arange(nseg, dtype=torch.float64)

    def curves(sl: slice | torch.Tensor) -> torch.Tensor:
        return (1.0 - c[sl][:, :, None] * (q[sl][:, None, None] ** n)).reshape(-1, ng * nseg)

    rows = torch.arange(0, nv, max(1, nv // max_rows))[:max_rows]
    _, sv, vh = torch.linalg.svd(curves(rows), full_matrices=False)
    tail = sv.square().flip(0).cumsum(0).flip(0) / sv.square().sum().clamp_min(1e-300)  # energy beyond rank k
    k = int((tail > tol ** 2).sum())
    w = vh[:max(1, k)]
    u = torch.empty(nv, w.shape[0], dtype=torch.float64)
    err2 = tot2 = 0.0
    for i in range(0, nv, 16384):
        m = curves(slice(i, i + 16384))
        u[i:i + 16384] = m @ w.T
        err2 += float((m - u[i:i + 16384] @ w).square().sum())
        tot2 += float(m.square().sum())
    return u, w, (err2 / max(tot2, 1e-300)) ** 0.5


def echo_operators(kspace: KSpace6D, maps: dict[str, np.ndarray], mask: np.ndarray, sens: np.ndarray,
                   tol: float = 1e-3) -> tuple[list[EchoOp], list[torch.Tensor], np.ndarray]:
    """One :class:`EchoOp` per echo from a reconstruction's maps, the measured lines per echo, and the voxels.

    ``maps`` needs 'A', 'T1', 'T2', 'T2star' (ms), 'Phase0' (rad), 'B0' (Hz), float ``(nz, ny, nx)``; ``mask``
    bool; ``sens`` complex ``(C, nz, ny, nx)``; ``tol`` the relative error of the temporal model
    (:func:`joint_temporal_basis`). Returns (ops, lines complex64 ``(C, nlines, nx)`` per echo with kx in FFT
    order, flat voxel indices).
    """
    ks = with_shot_groups(kspace)
    seq = ks.seq
    shape = tuple(int(s) for s in mask.shape)
    index = np.flatnonzero(np.asarray(mask).ravel())

    def get(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(maps[name], dtype=np.float64).ravel()[index])

    t1 = get("T1").clamp_min(1.0)
    t2 = get("T2").clamp_min(1.0)
    ss, q = steady_state_terms(t1, seq)
    c = prep_coefficients(t1, t2, seq)  # (nv, G)
    hs = echo_factors(get("A"), get("T2star").clamp_min(0.1), get("Phase0"), get("B0"), seq) * ss[:, None]
    u, w, err = joint_temporal_basis(c, q, seq.nseg, tol)
    log.info("field fit: joint temporal basis of %d atoms for %d groups x %d readouts (relative error %.2g)",
             w.shape[0], c.shape[1], seq.nseg, err)
    col = torch.from_numpy(np.asarray(ks.tau, dtype=np.int64) * seq.nseg + np.asarray(ks.seg, dtype=np.int64))
    coef = w[:, col].T.contiguous()  # (nlines, K)
    ops, lines = [], []
    for e in range(seq.nte):
        ops.append(EchoOp(hs[:, e], u, coef, index, shape, sens, ks.ky, ks.kz))
        lines.append(torch.from_numpy(np.ascontiguousarray(np.fft.ifftshift(ks.data[:, e], axes=-1),
                                                           dtype=np.complex64)))
    return ops, lines, index


def echo_images(kspace: KSpace6D, maps: dict[str, np.ndarray], mask: np.ndarray, sens: np.ndarray,
                lam: float = 1e-2, n_iter: int = 30) -> tuple[np.ndarray, dict]:
    """Per-echo complex images ``s_e(TE_e) u_e`` fitted to each echo's own lines (module docstring).

    Returns complex64 ``(nte, nz, ny, nx)`` (0 outside ``mask``; the signal at n -> infinity of the first
    group, i.e. ``h_TE ss u_e``) and info: per echo the relative data residual before/after and the CG
    iterations.
    """
    t0 = time.perf_counter()
    ops, lines, index = echo_operators(kspace, maps, mask, sens)
    shape = tuple(int(s) for s in mask.shape)
    out = np.zeros((len(ops),) + shape, dtype=np.complex64)
    info = {"residual_model": [], "residual_fit": [], "lam": lam, "cg_iters": n_iter}
    for e, (op, y) in enumerate(zip(ops, lines, strict=True)):
        one = torch.ones(index.size, dtype=torch.complex64)
        a1 = op.forward(one)
        scale = torch.vdot(a1.flatten(), y.flatten()) / torch.vdot(a1.flatten(), a1.flatten()).real.clamp_min(1e-30)
        u0 = one * scale
        diag = float(a1.abs().pow(2).sum()) / max(index.size, 1)  # ~ mean diagonal of A^H A
        lam_abs = lam * diag

        def normal(u: torch.Tensor, op: EchoOp = op, lam_abs: float = lam_abs) -> torch.Tensor:
            return op.adjoint(op.forward(u)) + lam_abs * u

        rhs = op.adjoint(y) + lam_abs * u0
        u, _ = conjugate_gradient(normal, rhs, x0=u0, n_iter=n_iter)
        ynorm = float(y.norm())
        info["residual_model"].append(float((scale * a1 - y).norm()) / ynorm)
        info["residual_fit"].append(float((op.forward(u) - y).norm()) / ynorm)
        flat = np.zeros(math.prod(shape), dtype=np.complex64)
        flat[index] = (op.hs * u).numpy()
        out[e] = flat.reshape(shape)
    info["seconds"] = time.perf_counter() - t0
    log.info("echo images: relative residual per echo %s (model) -> %s (fitted), %.1f s",
             [f"{r:.3g}" for r in info["residual_model"]], [f"{r:.3g}" for r in info["residual_fit"]],
             info["seconds"])
    return out, info


def field_update(kspace: KSpace6D, maps: dict[str, np.ndarray], mask: np.ndarray, sens: np.ndarray,
                       outer: int = 3, n_iter: int = 20, lam: float = 1e-2) -> tuple[np.ndarray, dict]:
    """Field correction ``df`` (Hz) shared by all echoes, fitted to the raw lines by Gauss-Newton.

    Model ``y_e = A_e [rho exp(j 2 pi df TE_e)]`` (``A_e`` the :class:`EchoOp` of echo ``e``) with a complex
    correction ``rho`` and the field correction ``df`` per voxel, both shared by the echoes, so at R = 8 the
    three echoes together still over-determine the voxels. Start ``rho`` = the least-squares global scale,
    ``df = 0``; each outer step solves the linearised problem (Tikhonov ``lam`` x the mean diagonal on both
    parts; ``df`` scaled to radians at the mean TE) by ``n_iter`` CG steps. ``lam`` trades noise for shrinkage
    towards the input B0: on the brain phantom (16x32x32, R = 4, SNR 30) ``lam`` 3e-3 / 1e-2 / 3e-2 gave field
    errors 0.87 / 0.79 / 0.64 Hz rms and QSM 57.2 / 53.6 / 53.3 % NRMSE, deep-GM slope 0.80 / 0.80 / 0.78
    (docs/benchmarks/qsm.md). Returns float32 ``(nz, ny, nx)`` df (0 outside ``mask``) and info (relative data
    residual per outer step, seconds).
    """
    t0 = time.perf_counter()
    ops, lines, index = echo_operators(kspace, maps, mask, sens)
    te_s = np.asarray(kspace.seq.te_ms, dtype=np.float64) * 1e-3
    te_mean = float(te_s.mean())
    nv = index.size
    one = torch.ones(nv, dtype=torch.complex64)
    a1 = [op.forward(one) for op in ops]
    num = sum(torch.vdot(a.flatten(), y.flatten()) for a, y in zip(a1, lines, strict=True))
    den = sum(float(a.abs().pow(2).sum()) for a in a1)
    rho = one * (num / max(den, 1e-30))
    phi = torch.zeros(nv, dtype=torch.float32)  # 2 pi df te_mean (rad)
    lam_abs = lam * den / max(nv, 1) / len(ops)
    ynorm = float(sum(float(y.norm()) ** 2 for y in lines)) ** 0.5
    ratio = [float(t / te_mean) for t in te_s]
    info = {"residual": []}

    def rotors(p: torch.Tensor) -> list[torch.Tensor]:
        return [torch.polar(torch.ones_like(p), p * r) for r in ratio]

    for _ in range(outer):
        z = rotors(phi)
        pred = [op.forward(rho * ze) for op, ze in zip(ops, z, strict=True)]
        res = [y - p for y, p in zip(lines, pred, strict=True)]
        info["residual"].append(float(sum(float(r.norm()) ** 2 for r in res)) ** 0.5 / ynorm)
        cols = [(ze, 1j * r * rho * ze) for ze, r in zip(z, ratio, strict=True)]  # d/d rho, d/d phi

        def jac(x: torch.Tensor, cols: list = cols) -> list[torch.Tensor]:
            drho = torch.complex(x[0], x[1])
            return [op.forward(cr * drho + cp * x[2]) for op, (cr, cp) in zip(ops, cols, strict=True)]

        def jac_t(r: list[torch.Tensor], cols: list = cols) -> torch.Tensor:
            out = torch.zeros(3, nv, dtype=torch.float32)
            for op, (cr, cp), re in zip(ops, cols, r, strict=True):
                b = op.adjoint(re)
                g = cr.conj() * b
                out[0] += g.real
                out[1] += g.imag
                out[2] += (cp.conj() * b).real
            return out

        def normal(x: torch.Tensor) -> torch.Tensor:
            return jac_t(jac(x)) + lam_abs * x

        step, _ = conjugate_gradient(normal, jac_t(res), n_iter=n_iter)
        rho = rho + torch.complex(step[0], step[1])
        phi = phi + step[2]
    z = rotors(phi)
    info["residual"].append(float(sum(float((y - op.forward(rho * ze)).norm()) ** 2
                                      for op, y, ze in zip(ops, lines, z, strict=True))) ** 0.5 / ynorm)
    shape = tuple(int(s) for s in mask.shape)
    df = np.zeros(math.prod(shape), dtype=np.float32)
    df[index] = (phi / (2.0 * math.pi * te_mean)).numpy()
    info["seconds"] = time.perf_counter() - t0
    log.info("joint field update: relative residual %s, %.1f s", [f"{r:.4g}" for r in info["residual"]],
             info["seconds"])
    return df.reshape(shape), info

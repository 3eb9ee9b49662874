"""Forward operators from parameter maps to sampled k-space lines (one batch of readout positions x).

After the 1-D IFFT along the fully sampled readout, every x position is an independent (kz, ky) problem.
All operators here work on a batch of ``bx`` x positions, with lines described by integer tensors
``ky, kz, seg, tau`` of shape ``(nlines,)``.

* :class:`LineSubspaceOp` — linear: coefficient images ``(..., natoms, nz, ny)`` -> lines ``(..., nlines)``
  through a temporal basis ``(ntau, nseg, natoms)``; FFT of every atom image, then per tau only the atoms
  that are non-zero at that tau are gathered and contracted. Adjoint provided (and tested).
* :func:`qn_basis` — SVD basis of q^n over a T1 range (docs/design.md, "Structure worth exploiting").
* :class:`StructuredForward` — the low-rank model: 1 + K * ntau FFTs per coil and echo.
* :class:`ExactForward` — the per-(n, tau, TE) model, Nseg * ntau FFTs per coil and echo (reference).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qmapinr.recon.kspace import SequenceParams
from qmapinr.recon.physics.fft import centred_line_phase, fftc
from qmapinr.recon.physics.history import transient_corrections
from qmapinr.recon.physics.linop import LinearOperator
from qmapinr.recon.physics.product import product_lines
from qmapinr.recon.physics.signal import echo_factors, prep_coefficients, signal, steady_state_terms


class LineSubspaceOp(LinearOperator):
    """Linear map ``coeff (..., natoms, nz, ny) -> lines (..., nlines)``.

    ``y_l = sum_a basis[tau_l, seg_l, a] * FFT2(coeff[..., a, :, :])[kz_l, ky_l]`` with the centred unitary FFT.

    Implementation (no rolls, no per-tau zero-fills): a plain FFT, then ONE flat gather of the ``A`` atoms that
    are active at each line's tau (``A`` = the most any tau has; padding entries have coefficient 0), and a
    contraction with ``coef (nlines, A)`` = the basis rows times the centring phase of
    :func:`~qmapinr.recon.physics.fft.centred_line_phase`. The gather's backward is one ``index_add`` into the
    dense k-space gradient the FFT's backward needs anyway. :meth:`reference_forward` is the straightforward
    per-tau version (centred FFT, gather, contract), kept for the equivalence tests.

    Parameters
    ----------
    basis : real or complex ``(ntau, nseg, natoms)``.
    ky, kz, seg, tau : int64 ``(nlines,)``.
    shape_zy : (nz, ny).
    """

    def __init__(self, basis: torch.Tensor, ky: torch.Tensor, kz: torch.Tensor, seg: torch.Tensor,
                 tau: torch.Tensor, shape_zy: tuple[int, int]) -> None:
        self.basis = basis
        self.nz, self.ny = shape_zy
        self.nlines = int(ky.shape[0])
        self.natoms = basis.shape[-1]
        self.lines = (ky, kz, seg, tau)
        jz, pz = centred_line_phase(kz, self.nz)
        jy, py = centred_line_phase(ky, self.ny)
        plain = jz * self.ny + jy  # (nlines,) index into the plain-FFT (nz*ny) plane
        active = [torch.nonzero(basis[t].abs().amax(dim=0) > 0).flatten() for t in range(basis.shape[0])]
        width = max(1, max(a.numel() for a in active))
        atoms = torch.zeros(basis.shape[0], width, dtype=torch.int64, device=ky.device)
        valid = torch.zeros(basis.shape[0], width, dtype=torch.bool, device=ky.device)
        for t, a in enumerate(active):
            atoms[t, : a.numel()], valid[t, : a.numel()] = a, True
        atom_l = atoms[tau]  # (nlines, A)
        rows = basis[tau, seg]  # (nlines, natoms)
        coef = torch.gather(rows, 1, atom_l).to(torch.complex128) * valid[tau]
        coef = coef * (pz * py).to(coef.device)[:, None]
        self.width = width
        self.flat = (atom_l * (self.nz * self.ny) + plain[:, None]).flatten()  # (nlines*A,)
        self.coef = coef.to(torch.complex64)  # (nlines, A)

    def forward(self, coeff: torch.Tensor) -> torch.Tensor:
        k = torch.fft.fftn(coeff, dim=(-2, -1), norm="ortho").flatten(-3)  # (..., natoms*nz*ny)
        idx = self.flat.expand(k.shape[:-1] + self.flat.shape)  # a view: no index copy per batch dim
        g = torch.gather(k, -1, idx).unflatten(-1, (self.nlines, self.width))  # (..., L, A); backward: scatter_add
        return (g * self.coef).sum(-1)

    def adjoint(self, lines: torch.Tensor) -> torch.Tensor:
        contrib = (lines[..., :, None] * self.coef.conj()).flatten(-2)  # (..., L*A)
        k = lines.new_zeros(lines.shape[:-1] + (self.natoms * self.nz * self.ny,))
        k.index_add_(-1, self.flat, contrib)
        return torch.fft.ifftn(k.unflatten(-1, (self.natoms, self.nz, self.ny)), dim=(-2, -1), norm="ortho")

    def reference_forward(self, coeff: torch.Tensor) -> torch.Tensor:
        """The straightforward evaluation (centred FFT of every atom, per-line gather and contraction)."""
        ky, kz, seg, tau = self.lines
        k = fftc(coeff, dims=(-2, -1))[..., kz, ky]  # (..., natoms, L)
        return (k * self.basis[tau, seg].T.to(k.dtype)).sum(-2)


def qn_basis(seq: SequenceParams, rank: int, t1_range_ms: tuple[float, float] = (50.0, 6000.0),
             n_atoms: int = 400) -> tuple[torch.Tensor, float]:
    """Orthonormal basis ``V (rank, nseg)`` of q^n = (e^{-TR/T1} cos a)^n over log-spaced T1.

    Returns the basis and the worst relative L2 error of projecting the dictionary onto it.
    """
    t1 = np.geomspace(*t1_range_ms, n_atoms)
    q = np.exp(-seq.tr_ms / t1) * math.cos(math.radians(seq.flip_deg))
    d = q[:, None] ** np.arange(seq.nseg)[None, :]  # (atoms, nseg)
    _, _, vh = np.linalg.svd(d, full_matrices=False)
    v = vh[:rank]
    err = np.linalg.norm(d - (d @ v.T) @ v, axis=1) / np.linalg.norm(d, axis=1)
    return torch.from_numpy(v.astype(np.float32)), float(err.max())


def structured_basis(v: torch.Tensor, ntau: int, corrections: dict[int, tuple[int, torch.Tensor]] | None = None
                     ) -> torch.Tensor:
    """Temporal basis ``(ntau, nseg, natoms)`` of ``1 - c_tau q^n``: atom 0 = 1, atom 1+i*K+k = -V_k(n) at the
    i-th group with its own atoms.

    ``corrections`` (:func:`~qmapinr.recon.physics.history.transient_corrections`): a transient group ``g``
    with an entry ``(s, W_g)`` has no atoms of its own; it uses the atoms of its steady group ``s`` plus
    ``-W_g`` (``K'`` atoms after all the per-group ones, in ascending ``g``), so
    ``1 - c_g q^n = 1 - c_s q^n - (c_g - c_s) q^n``.
    """
    corrections = corrections or {}
    k, nseg = v.shape
    full = [g for g in range(ntau) if g not in corrections]
    ncorr = sum(w.shape[0] for _, w in corrections.values())
    basis = torch.zeros(ntau, nseg, 1 + len(full) * k + ncorr, dtype=v.dtype)
    basis[:, :, 0] = 1.0
    slot = {g: 1 + i * k for i, g in enumerate(full)}
    for g in full:
        basis[g, :, slot[g]: slot[g] + k] = -v.T
    pos = 1 + len(full) * k
    for g in sorted(corrections):
        s, w = corrections[g]
        basis[g, :, slot[s]: slot[s] + k] = -v.T
        basis[g, :, pos: pos + w.shape[0]] = -w.T.to(v.dtype)
        pos += w.shape[0]
    return basis


class StructuredForward:
    """Low-rank physics forward: maps + coil sensitivities -> k-space lines, 1 + K*ntau FFTs per coil and echo
    (fewer with transient line groups: ``K'`` instead of ``K`` per corrected group, :func:`structured_basis`).

    ``S(n, tau) = h ss [1 - c_tau q^n]`` with ``q^n ~= sum_k alpha_k V_k(n)``, ``alpha = V q^n``.
    """

    def __init__(self, seq: SequenceParams, ky, kz, seg, tau, shape_zy: tuple[int, int], rank: int = 8,
                 device: torch.device | str = "cpu") -> None:
        self.seq = seq
        v, self.basis_error = qn_basis(seq, rank)
        self.v = v.to(device)
        corr = transient_corrections(seq, rank)
        self.full = torch.tensor([g for g in range(seq.ntau) if g not in corr], dtype=torch.int64, device=device)
        order = sorted(corr)
        self.corr = (torch.tensor(order, dtype=torch.int64, device=device),
                     torch.tensor([corr[g][0] for g in order], dtype=torch.int64, device=device),
                     torch.tensor([corr[g][1].shape[0] for g in order], dtype=torch.int64, device=device),
                     torch.cat([corr[g][1] for g in order]).to(device)) if corr else None
        basis = structured_basis(v, seq.ntau, corr).to(device)
        self.op = LineSubspaceOp(basis, *(torch.as_tensor(a, device=device) for a in (ky, kz, seg, tau)),
                                 shape_zy)
        self.n = torch.arange(seq.nseg, dtype=torch.float32, device=device)

    def coefficient_images(self, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-voxel ``(h*ss) (..., nte)`` and recovery coefficients ``(..., natoms)``; voxel dims ``(...)``."""
        ss, q = steady_state_terms(maps["T1"], self.seq)
        c = prep_coefficients(maps["T1"], maps["T2"], self.seq)  # (..., ntau)
        qn = q[..., None] ** self.n
        alpha = qn @ self.v.T  # (..., K)
        own = c if self.corr is None else c.index_select(-1, self.full)
        parts = [torch.ones_like(q)[..., None], (own[..., :, None] * alpha[..., None, :]).flatten(-2)]
        if self.corr is not None:  # transient groups: (c_g - c_s) times the projection of q^n on W_g
            groups, steady, counts, w = self.corr
            delta = c.index_select(-1, groups) - c.index_select(-1, steady)
            parts.append((qn @ w.T) * delta.repeat_interleave(counts, dim=-1))
        rec = torch.cat(parts, -1)
        h = echo_factors(maps["A"], maps["T2star"], maps["Phase0"], maps["B0"], self.seq) * ss[..., None]
        return h, rec

    def __call__(self, maps: dict[str, torch.Tensor], sens: torch.Tensor) -> torch.Tensor:
        """maps: each ``(bx, nz, ny)``; sens: complex ``(bx, C, nz, ny)`` -> lines ``(bx, C, nte, nlines)``."""
        h, rec = self.coefficient_images(maps)
        img = h.permute(0, 3, 1, 2)[:, None] * sens[:, :, None]  # (bx, C, nte, nz, ny)
        # lines of the coefficient volume img x rec (bx, C, E, atoms, nz, ny), never formed (physics.product)
        return product_lines(self.op, img[:, :, :, None], rec.permute(0, 3, 1, 2)[:, None, None])


class ExactForward:
    """Reference forward: the full (nte, ntau, nseg) series per voxel, one FFT per (coil, TE, tau, n)."""

    def __init__(self, seq: SequenceParams, ky, kz, seg, tau, shape_zy: tuple[int, int],
                 device: torch.device | str = "cpu") -> None:
        self.seq = seq
        nz, ny = shape_zy
        ky, kz, seg, tau = (torch.as_tensor(a, device=device) for a in (ky, kz, seg, tau))
        self.flat = ((tau * seq.nseg + seg) * nz + kz) * ny + ky

    def __call__(self, maps: dict[str, torch.Tensor], sens: torch.Tensor) -> torch.Tensor:
        s = signal(maps["A"], maps["T1"], maps["T2"], maps["T2star"], maps["Phase0"], maps["B0"], self.seq)
        s = s.permute(0, 3, 4, 5, 1, 2)  # (bx, nte, ntau, nseg, nz, ny)
        img = s[:, None] * sens[:, :, None, None, None]  # (bx, C, nte, ntau, nseg, nz, ny)
        k = fftc(img, dims=(-2, -1))
        return k.flatten(-4).index_select(-1, self.flat)


def voxel_qn_basis(q: torch.Tensor, nseg: int, tol: float = 1e-6, max_rows: int = 2048) -> tuple[torch.Tensor, float]:
    """Orthonormal float64 basis ``(K, nseg)`` of ``q^n`` (n = 0..nseg-1) for the given per-voxel ``q``.

    K is the smallest rank whose worst relative L2 projection error over the distinct ``q`` values (at most
    ``max_rows`` quantiles of them) is below ``tol``; returns the basis and that error.
    """
    u = torch.unique(q.to(torch.float64))
    if u.numel() > max_rows:
        u = torch.quantile(u, torch.linspace(0, 1, max_rows, dtype=torch.float64))
    d = u[:, None] ** torch.arange(nseg, dtype=torch.float64)
    _, _, vh = torch.linalg.svd(d, full_matrices=False)
    norm = d.norm(dim=1).clamp_min(1e-300)
    for k in range(1, vh.shape[0] + 1):
        v = vh[:k]
        err = float(((d - (d @ v.T) @ v).norm(dim=1) / norm).max())
        if err < tol:
            return v, err
    return vh, 0.0


def synthesize_lines(hs: torch.Tensor, a: torch.Tensor, b: torch.Tensor, q: torch.Tensor, index: np.ndarray,
                     shape: tuple[int, int, int], sens: np.ndarray, ky: np.ndarray, kz: np.ndarray, seg: np.ndarray,
                     tau: np.ndarray, nseg: int, tol: float = 1e-6, max_elements: int = 1 << 25) -> np.ndarray:
    """Sampled k-space lines of ``S(v, te, tau, n) = hs[v, te] (a[v, tau] + b[v, tau] q[v]^n)`` times coil maps.

    The same structured low-rank identity the forward uses, made exact to ``tol``: ``q^n = sum_k alpha_k V_k(n)``
    with a basis of the voxels' own ``q`` (:func:`voxel_qn_basis`), so per (tau, TE, coil) only ``1 + K``
    3-D FFTs of coefficient images are needed instead of one per readout ``n``; each line is the basis
    contraction at its (kz, ky). Centred unitary 3-D FFT; the shifts are folded into the voxel scatter, the coil
    maps and the line indices (no roll of any volume).

    Parameters
    ----------
    hs : complex ``(nv, nte)``; a, b : real or complex ``(nv, ntau)``; q : real ``(nv,)`` — over the voxels
        ``index`` (flat int indices into ``shape`` = (nz, ny, nx)); voxels not listed are 0.
    sens : complex ``(C, nz, ny, nx)`` coil maps.
    ky, kz, seg, tau : int ``(nlines,)`` sampled lines.
    max_elements : working-set bound (complex64 elements) of one coil chunk of coefficient volumes.

    Returns
    -------
    complex64 ``(C, nte, nlines, nx)``, kx centred.
    """
    nz, ny, nx = shape
    ncoils, nte, nvox = sens.shape[0], hs.shape[1], nz * ny * nx
    v, _ = voxel_qn_basis(q, nseg, tol)
    n = torch.arange(nseg, dtype=torch.float64)
    alpha = torch.cat([(q[i:i + 65536, None].to(torch.float64) ** n) @ v.T
                       for i in range(0, q.shape[0], 65536)]) if q.numel() else torch.zeros(0, v.shape[0])
    zi, yi, xi = np.unravel_index(index, shape)
    idx_sh = torch.from_numpy(np.ravel_multi_index(((zi - nz // 2) % nz, (yi - ny // 2) % ny,
                                                    (xi - nx // 2) % nx), shape))
    sens_sh = torch.from_numpy(np.ascontiguousarray(np.fft.ifftshift(sens, axes=(-3, -2, -1)),
                                                    dtype=np.complex64)).reshape(ncoils, 1, nvox)
    kz_sh = torch.from_numpy((np.asarray(kz) - nz // 2) % nz)
    ky_sh = torch.from_numpy((np.asarray(ky) - ny // 2) % ny)
    natoms = 1 + v.shape[0]
    cchunk = max(1, max_elements // (natoms * nvox))
    data = np.zeros((ncoils, nte, len(ky), nx), dtype=np.complex64)
    tau, seg = np.asarray(tau), np.asarray(seg)
    for t in range(a.shape[1]):
        pos = np.flatnonzero(tau == t)
        if pos.size == 0:
            continue
        w = torch.cat([a[:, t:t + 1], b[:, t:t + 1] * alpha], 1)  # (nv, natoms)
        coef = torch.cat([torch.ones(pos.size, 1, dtype=torch.float64), v[:, seg[pos]].T], 1)
        coef = coef.to(torch.complex64)  # (L_t, natoms)
        kz_t, ky_t = kz_sh[pos], ky_sh[pos]
        for e in range(nte):
            vol = torch.zeros(natoms, nvox, dtype=torch.complex64)
            vol[:, idx_sh] = (hs[:, e:e + 1] * w).T.to(torch.complex64)
            for c0 in range(0, ncoils, cchunk):
                img = (vol * sens_sh[c0:c0 + cchunk]).reshape(-1, natoms, nz, ny, nx)
                k = torch.fft.fftn(img, dim=(-3, -2, -1), norm="ortho")[:, :, kz_t, ky_t, :]  # (cc, A, L_t, nx)
                lines = torch.einsum("cald,la->cld", k, coef)
                data[c0:c0 + cchunk, e, pos, :] = np.fft.fftshift(lines.numpy(), axes=-1)
    return data

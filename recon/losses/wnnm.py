"""Weighted nuclear norm minimisation (WNNM) regulariser on 2-D patch groups of parameter maps (SUMMIT).

For every reference patch (``patch x patch`` pixels, on a ``stride`` grid that always includes the last row
and column of patch positions, so the whole slice is covered) the ``n_similar`` most similar patches (squared
L2 distance, the reference itself always first) are found within a ``window x window`` search window, i.e.
offsets in ``[-window//2, window//2]``. The matching runs without gradient on the current maps, vectorised:
all ``window^2`` offsets at once (shifted squared differences, separable box sum). The matched patches are
the columns of a group matrix ``Y`` of shape ``(D, Np)``, ``D = P * patch^2`` (jointly regularised
parameters are stacked along the patch vector), and the loss is the weighted nuclear norm
``sum_i w_i sigma_i(Y)`` with

    w_i = 1 / sqrt(max(sigma_i^2 - k * sigma_n^2, 0) + eps),      k = energy_factor (default Np),

computed without gradient from the current singular values: ``sqrt(max(sigma_i^2 - k sigma_n^2, 0))`` is the
estimate of the clean singular value, so large (signal) components get small weights and components at or
below the noise get ``1 / sqrt(eps)``. The value is differentiable w.r.t. the maps through
``torch.linalg.svdvals`` on all groups at once, shape ``(G, D, Np)``.

Conventions (documented choices):

* **Normalisation.** Map ``p`` is divided by a scale ``s_p`` (default: its median absolute value over the
  whole input, without gradient) before matching and SVD, and ``sigma_noise`` (given in map units, one value
  or one per parameter) is divided by the same scales; the effective per-entry noise variance of a joint
  group is ``mean_p (sigma_p / s_p)^2``. So T1 in ms and phase in rad are comparable, and ``eps`` is relative
  to the typical map value. The loss is unit-free; prefer fixed ``scale=(...)`` values in a solver (the
  median of a batch fluctuates, and is near 0 for phase or B0 maps centred on 0).
* **Centring** (``center=True``, default, as in common WNNM denoising code): the group mean patch is
  subtracted before the SVD and left unpenalised (the centred group has rank <= Np - 1, so only the first
  Np - 1 singular values are used). A constant or exactly repeated map then costs 0, and the regulariser never
  shrinks the map values themselves (no bias of T1/T2 towards 0). ``center=False`` penalises the raw group.
* **Noise energy.** ``k = Np`` is the SUMMIT/Gu formula, derived for groups with more patches than pixels.
  Here ``D > Np`` and a pure-noise (centred) singular value is about ``sqrt(D) sigma_n``, so with ``k = Np``
  the threshold is rarely reached while the noise is still there; ``energy_factor=D`` puts it at the expected
  noise energy and regularises more strongly.
* **Reduction.** ``"mean"`` averages ``sum_i w_i sigma_i`` over all groups (batch included), so the value is
  independent of batch and image size; ``"sum"`` adds them.
* **Round-off.** Singular values below ``8 * float_eps * sqrt(D * Np) * max|x_normalised|`` get weight 0:
  their singular vectors are arbitrary, and weighting them by ``1 / sqrt(eps)`` would inject random gradients
  into flat regions.
* **Value.** Because of the reweighting each component above the noise threshold contributes about 1 and
  each component below it ``sigma_i / sqrt(eps)``: the value is a smooth rank surrogate, not a noise meter,
  and jumps when components cross the threshold. Its gradient (``w_i u_i v_i^T`` per group) is what matters;
  it is stiff (weights up to ``1 / sqrt(eps)``): use Adam-type steps or :func:`wnnm_prox_step`.

* **Support.** With ``mask`` (bool, one per pixel) only patches lying entirely inside the mask take part: a
  reference patch that reaches outside is dropped (weight 0) and such candidates are never matched. Outside the
  object the maps are not determined by the data (no signal); patches that reach into it would tie the rim
  voxels to arbitrary background values (docs/benchmarks/guards.md). Rim voxels stay regularised through the
  patches inside the mask that cover them.

Volumes ``(nz, ny, nx)`` are regularised slice-wise: see :func:`volume_to_slices`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ScaleSpec = str | Sequence[float] | torch.Tensor | None


@dataclass(frozen=True)
class BlockMatch:
    """Result of :func:`block_match` for a ``(b, P, H, W)`` input.

    Attributes
    ----------
    index : int64 ``(b, G, Np)`` linear positions ``row * Wp + col`` of the matched patches' top-left corners
        in the ``(Hp, Wp) = (H - patch + 1, W - patch + 1)`` grid; column 0 is the reference patch itself.
    dist : ``(b, G, Np)`` squared L2 distances (sum over the ``D`` patch entries, normalised units),
        ascending; the reference's own distance is reported as 0.
    ref_rows, ref_cols : int64 ``(G,)`` top-left corners of the reference patches
        (G = len(rows) * len(cols)).
    grid : ``(Hp, Wp)``.
    valid : bool ``(b, G)``: the reference patch lies inside the mask (all True without a mask).
    """

    index: torch.Tensor
    dist: torch.Tensor
    ref_rows: torch.Tensor
    ref_cols: torch.Tensor
    grid: tuple[int, int]
    valid: torch.Tensor | None = None


def volume_to_slices(vol: torch.Tensor) -> torch.Tensor:
    """Volume ``(nz, ny, nx)`` -> ``(nx, nz, ny)``, or ``(P, nz, ny, nx)`` -> ``(nx, P, nz, ny)``.

    The project's maps are ``(nz, ny, nx)``; WNNM patches are 2-D in ``(z, y)`` and the readout positions x
    act as the batch, exactly as in the solvers. Explicit because ``(nz, ny, nx)`` and ``(b, nz, ny)`` are
    both 3-D.
    """
    if vol.ndim == 3:
        return vol.permute(2, 0, 1)
    if vol.ndim == 4:
        return vol.permute(3, 0, 1, 2)
    raise ValueError(f"volume must be (nz, ny, nx) or (P, nz, ny, nx), got {tuple(vol.shape)}")


def slices_to_volume(sl: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`volume_to_slices`."""
    if sl.ndim == 3:
        return sl.permute(1, 2, 0)
    if sl.ndim == 4:
        return sl.permute(1, 2, 3, 0)
    raise ValueError(f"slices must be (nx, nz, ny) or (nx, P, nz, ny), got {tuple(sl.shape)}")


def _as_bphw(maps: torch.Tensor) -> torch.Tensor:
    if maps.ndim == 3:
        return maps[:, None]
    if maps.ndim == 4:
        return maps
    raise ValueError(f"maps must be (b, nz, ny) or (b, P, nz, ny), got {tuple(maps.shape)}")


def map_scales(x: torch.Tensor, scale: ScaleSpec = "median") -> torch.Tensor:
    """Per-parameter normalisation scales ``(P,)`` for ``x (b, P, H, W)`` (no gradient).

    ``"median"``: median of ``|x_p|`` over batch and space (mean of ``|x_p|`` if that median is 0, 1 if the
    map is all zero); a sequence or tensor of P positive values: used as given; ``None``: ones.
    """
    n_par = x.shape[1]
    with torch.no_grad():
        if scale is None:
            return torch.ones(n_par, dtype=x.dtype, device=x.device)
        if isinstance(scale, str):
            if scale != "median":
                raise ValueError(f"scale must be 'median', None or P values, got {scale!r}")
            flat = x.detach().abs().transpose(0, 1).reshape(n_par, -1)
            s = flat.median(dim=1).values
            tiny = torch.finfo(x.dtype).tiny
            s = torch.where(s > tiny, s, flat.mean(dim=1))
            s = torch.where(s > tiny, s, torch.ones_like(s))
            return s
        s = torch.as_tensor(scale, dtype=x.dtype, device=x.device).reshape(-1)
        if s.numel() != n_par or bool((s <= 0).any()):
            raise ValueError(f"scale needs {n_par} positive values, got {s.tolist()}")
        return s


def _noise_var(sigma_noise: float | Sequence[float] | torch.Tensor, scales: torch.Tensor) -> float:
    """Per-entry noise variance of a normalised joint group: mean_p (sigma_p / s_p)^2."""
    sig = torch.as_tensor(sigma_noise, dtype=torch.float64).reshape(-1)
    if sig.numel() == 1:
        sig = sig.expand(scales.numel())
    if sig.numel() != scales.numel():
        raise ValueError(f"sigma_noise needs 1 or {scales.numel()} values, got {sig.numel()}")
    if bool((sig < 0).any()):
        raise ValueError("sigma_noise must be >= 0")
    return float((sig / scales.detach().cpu().to(torch.float64)).square().mean())


def _ref_positions(n_pos: int, stride: int) -> torch.Tensor:
    pos = list(range(0, n_pos, stride))
    if pos[-1] != n_pos - 1:
        pos.append(n_pos - 1)
    return torch.tensor(pos, dtype=torch.int64)


def _patches_inside(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """bool ``(b, Hp, Wp)``: the ``patch x patch`` patch at each top-left corner lies inside ``mask (b, H, W)``."""
    m = mask.to(torch.float32)
    cover = m.unfold(-1, patch, 1).sum(dim=-1).unfold(-2, patch, 1).sum(dim=-1)
    return cover > patch * patch - 0.5


def block_match(x: torch.Tensor, patch: int = 5, window: int = 7, n_similar: int = 3,
                stride: int = 2, mask: torch.Tensor | None = None) -> BlockMatch:
    """Find the ``n_similar`` most similar patches of every reference patch (no gradient).

    Parameters
    ----------
    x : real ``(b, P, H, W)`` (already normalised); distances sum over the P parameters.
    patch : patch size (pixels).
    window : odd search-window size (pixels); offsets in ``[-(window//2), window//2]``.
    n_similar : Np, number of patches per group including the reference (``<= window^2``).
    stride : reference grid step (pixels).
    mask : optional bool ``(b, H, W)``: only patches entirely inside it are matched (see the module docstring).

    Returns
    -------
    :class:`BlockMatch`. Candidates outside the image (or the mask) are never chosen; if fewer than Np candidates exist
    (tiny images) the reference is repeated.
    """
    b, n_par, h, w = x.shape
    if h < patch or w < patch:
        raise ValueError(f"slices ({h}x{w}) smaller than the patch ({patch})")
    if window % 2 != 1 or window < 1:
        raise ValueError(f"window must be odd, got {window}")
    if not 1 <= n_similar <= window * window:
        raise ValueError(f"n_similar must be in [1, {window * window}], got {n_similar}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    r = window // 2
    hp, wp = h - patch + 1, w - patch + 1
    rows, cols = _ref_positions(hp, stride).to(x.device), _ref_positions(wp, stride).to(x.device)
    with torch.no_grad():
        xd = x.detach()
        # sqdiff[:, o, i, j] = sum_p (x[p, i, j] - x[p, i + di_o, j + dj_o])^2 (0-padded outside), then a
        # separable patch x patch box sum gives all patch distances for all offsets (b, O, Hp, Wp).
        xp = F.pad(xd, (r, r, r, r))
        sqdiff = torch.stack([(xp[:, :, a:a + h, c:c + w] - xd).square().sum(dim=1)
                              for a in range(window) for c in range(window)], dim=1)
        dist = sqdiff.unfold(-1, patch, 1).sum(dim=-1).unfold(-2, patch, 1).sum(dim=-1)
        dist = dist[:, :, rows][:, :, :, cols]  # (b, O, Gr, Gc)
        off = torch.arange(-r, r + 1, device=x.device)
        di = off.repeat_interleave(window)  # (O,) row offset of flattened offset index
        dj = off.repeat(window)
        cand_r = rows[None, :, None] + di[:, None, None]  # (O, Gr, 1)
        cand_c = cols[None, None, :] + dj[:, None, None]  # (O, 1, Gc)
        valid = ((cand_r >= 0) & (cand_r < hp) & (cand_c >= 0) & (cand_c < wp))[None]  # (1, O, Gr, Gc)
        ref_ok = torch.ones(b, rows.numel(), cols.numel(), dtype=torch.bool, device=x.device)
        if mask is not None:
            if mask.shape != (b, h, w):
                raise ValueError(f"mask must be (b, H, W) = {(b, h, w)}, got {tuple(mask.shape)}")
            inside = _patches_inside(mask.to(x.device), patch)  # (b, Hp, Wp)
            cr, cc = cand_r.clamp(0, hp - 1), cand_c.clamp(0, wp - 1)
            valid = valid & inside[:, cr, cc]
            ref_ok = inside[:, rows][:, :, cols]
        centre = r * window + r
        dist = dist.masked_fill(~valid, math.inf)
        dist[:, centre] = -1.0  # the reference always comes first, even against exact duplicates
        best_d, best_o = torch.topk(dist, n_similar, dim=1, largest=False)  # (b, Np, Gr, Gc)
        bad = ~torch.isfinite(best_d)
        best_o = best_o.masked_fill(bad, centre)
        best_d = best_d.masked_fill(bad, 0.0).clamp_min(0.0)
        pos_r = rows[None, None, :, None] + di[best_o]
        pos_c = cols[None, None, None, :] + dj[best_o]
        index = (pos_r * wp + pos_c).permute(0, 2, 3, 1).reshape(b, -1, n_similar)
        best_d = best_d.permute(0, 2, 3, 1).reshape(b, -1, n_similar)
    g_r, g_c = torch.meshgrid(rows, cols, indexing="ij")
    return BlockMatch(index=index, dist=best_d, ref_rows=g_r.reshape(-1), ref_cols=g_c.reshape(-1),
                      grid=(hp, wp), valid=ref_ok.reshape(b, -1))


def extract_groups(x: torch.Tensor, index: torch.Tensor, patch: int) -> torch.Tensor:
    """Group matrices ``(b, G, D, Np)``, ``D = P * patch^2`` (parameter-major), differentiable w.r.t. ``x``.

    ``x (b, P, H, W)``; ``index (b, G, Np)`` as in :class:`BlockMatch`.
    """
    b = x.shape[0]
    cols = F.unfold(x, patch)  # (b, D, Hp*Wp)
    _, g, n_sim = index.shape
    flat = index.reshape(b, 1, g * n_sim).expand(b, cols.shape[1], g * n_sim)
    groups = torch.gather(cols, 2, flat).view(b, cols.shape[1], g, n_sim)
    return groups.permute(0, 2, 1, 3)


def wnnm_weights(sv: torch.Tensor, noise_var: float, energy_factor: float, eps: float = 1e-6) -> torch.Tensor:
    """``w_i = 1 / sqrt(max(sv_i^2 - energy_factor * noise_var, 0) + eps)`` (no gradient).

    Parameters
    ----------
    sv : singular values ``(..., k)`` (normalised units).
    noise_var : per-entry noise variance sigma_n^2 (normalised units).
    energy_factor : k of the threshold ``k sigma_n^2`` (Np in the SUMMIT/Gu formula).
    eps : floor of the clean-energy estimate; ``1 / sqrt(eps)`` is the largest weight.
    """
    with torch.no_grad():
        clean = (sv.detach().square() - energy_factor * noise_var).clamp_min(0.0)
        return torch.rsqrt(clean + eps)


def _prepare(maps: torch.Tensor, sigma_noise, scale: ScaleSpec):
    x = _as_bphw(maps)
    if not x.is_floating_point():
        raise TypeError(f"maps must be a real floating tensor, got {x.dtype}")
    scales = map_scales(x, scale)
    xn = x / scales.view(1, -1, 1, 1)
    return x, xn, scales, _noise_var(sigma_noise, scales)


def wnnm_loss(maps: torch.Tensor, sigma_noise: float | Sequence[float] | torch.Tensor, patch: int = 5,
              window: int = 7, n_similar: int = 3, stride: int = 2, eps: float = 1e-6, *,
              scale: ScaleSpec = "median", center: bool = True, energy_factor: float | None = None,
              reduction: str = "mean", mask: torch.Tensor | None = None) -> torch.Tensor:
    """WNNM regulariser of 2-D slices of parameter maps (see the module docstring).

    Parameters
    ----------
    maps : real ``(b, nz, ny)`` (one parameter) or ``(b, P, nz, ny)`` (P jointly regularised parameters),
        in map units (ms, rad, a.u.). For a volume use ``volume_to_slices(vol)``.
    sigma_noise : noise std of the maps, map units; one value, or one per parameter.
    patch, window, n_similar, stride : patch size, search window, Np, reference stride (pixels).
    eps : weight floor, normalised units squared.
    scale : ``"median"`` (default), P fixed positive values (recommended in solvers), or None (no scaling).
    center : subtract the group mean patch before the SVD (default True).
    energy_factor : k in ``max(sigma_i^2 - k sigma_n^2, 0)``; default Np (the SUMMIT/Gu formula). For
        ``D > Np`` a pure-noise singular value is about ``sqrt(D) sigma_n``; ``energy_factor=D`` makes the
        threshold reach it.
    reduction : ``"mean"`` over groups (default) or ``"sum"``; with ``mask`` over the groups inside it.
    mask : optional bool ``(b, nz, ny)``: only patches entirely inside it count (module docstring, Support).

    Returns
    -------
    Real scalar tensor (unit-free), differentiable w.r.t. ``maps``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    _, xn, _, noise_var = _prepare(maps, sigma_noise, scale)
    bm = block_match(xn, patch, window, n_similar, stride, mask=mask)
    groups = extract_groups(xn, bm.index, patch).flatten(0, 1)  # (G_all, D, Np)
    if center:
        groups = groups - groups.mean(dim=-1, keepdim=True)
    sv = torch.linalg.svdvals(groups)
    if center and n_similar > 1:
        sv = sv[..., : n_similar - 1]
    k = float(n_similar if energy_factor is None else energy_factor)
    weights = wnnm_weights(sv, noise_var, k, eps)
    with torch.no_grad():
        # Singular values at the float round-off level of the group carry no information and their singular
        # vectors are arbitrary: give them weight 0 (so a constant map has loss 0 and gradient exactly 0).
        tol = 8.0 * torch.finfo(xn.dtype).eps * math.sqrt(groups.shape[-2] * n_similar)
        tol = tol * xn.detach().abs().amax()
        weights = weights * (sv.detach() > tol)
    per_group = (weights * sv).sum(dim=-1)
    if mask is not None:
        keep = bm.valid.flatten().to(per_group.dtype)
        per_group = per_group * keep
        return per_group.sum() / keep.sum().clamp_min(1.0) if reduction == "mean" else per_group.sum()
    return per_group.mean() if reduction == "mean" else per_group.sum()


def wnnm_prox_step(x: torch.Tensor, sigma_noise: float | Sequence[float] | torch.Tensor, patch: int = 5,
                   window: int = 7, n_similar: int = 3, stride: int = 2, eps: float = 1e-6, *,
                   strength: float = 1.0, scale: ScaleSpec = "median", center: bool = True,
                   energy_factor: float | None = None) -> torch.Tensor:
    """One classical WNNM denoising pass (no gradient): shrink every group, average overlapping patches.

    Each group ``Y = U diag(s) V^T`` (centred by its mean patch if ``center``) becomes
    ``U diag(max(s_i - tau_i, 0)) V^T`` (+ mean) with ``tau_i = strength * D * sigma_n^2 * w_i``, ``w_i`` from
    :func:`wnnm_weights` (``D * sigma_n^2`` is the expected energy per singular value of a pure-noise centred
    group, so ``strength = 1`` sets ``tau`` near the typical noise singular value). Every pixel becomes the
    mean of all its estimates in all group members that cover it; pixels covered by no patch keep their value.
    Iterate (re-matching on the output, with a smaller ``sigma_noise``) as in Gu et al. for stronger
    denoising, or use it as an ADMM-style proximal step.

    Parameters
    ----------
    x : real ``(b, nz, ny)`` or ``(b, P, nz, ny)``, map units.
    sigma_noise, patch, window, n_similar, stride, eps, scale, center, energy_factor :
        as in :func:`wnnm_loss`.
    strength : multiplier of the threshold (>= 0; 0 returns the input, up to round-off).

    Returns
    -------
    Tensor of the same shape and units as ``x``.
    """
    with torch.no_grad():
        xb, xn, scales, noise_var = _prepare(x.detach(), sigma_noise, scale)
        b, n_par, h, w = xn.shape
        bm = block_match(xn, patch, window, n_similar, stride)
        groups = extract_groups(xn, bm.index, patch)  # (b, G, D, Np)
        mean = groups.mean(dim=-1, keepdim=True) if center else torch.zeros_like(groups[..., :1])
        u, s, vh = torch.linalg.svd(groups - mean, full_matrices=False)
        d = groups.shape[2]
        k = float(n_similar if energy_factor is None else energy_factor)
        tau = strength * d * noise_var * wnnm_weights(s, noise_var, k, eps)
        s_new = (s - tau).clamp_min(0.0)
        est = (u * s_new[..., None, :]) @ vh + mean  # (b, G, D, Np)
        hp, wp = bm.grid
        acc = xn.new_zeros(b, d, hp * wp)
        cnt = xn.new_zeros(b, 1, hp * wp)
        idx = bm.index.reshape(b, -1)  # (b, G*Np), matches est.permute(0, 2, 1, 3) flattening
        est_cols = est.permute(0, 2, 1, 3).reshape(b, d, -1)  # (b, D, G*Np)
        acc.scatter_add_(2, idx[:, None].expand(b, d, idx.shape[1]), est_cols)
        cnt.scatter_add_(2, idx[:, None], torch.ones_like(idx[:, None], dtype=xn.dtype))
        num = F.fold(acc, (h, w), patch)  # (b, P, H, W)
        den = F.fold(cnt.expand(b, patch * patch, hp * wp), (h, w), patch)  # (b, 1, H, W)
        out = torch.where(den > 0, num / den.clamp_min(1.0), xn) * scales.view(1, -1, 1, 1)
        logger.debug("wnnm_prox_step: %d groups, noise_var %.3g (normalised)", bm.index.shape[1], noise_var)
        return out.reshape(x.shape).to(x.dtype)

"""The SUMMIT field: (x, y, z) -> A, T1, T2, T2*, Phase0, B0 and coil sensitivities, evaluated per x batch.

The map INR (:class:`~qmapinr.recon.inr.heads.MapINR`: hash grid + one 3x64 ReLU MLP per parameter with exp
output, and a separate phase MLP) learns a residual around data-driven per-voxel priors
(:mod:`qmapinr.recon.methods.summit.initial`); coil sensitivities are either the fixed estimated maps
(``coil_mode='ratio'|'jsense'``) or a small coil INR started from them (``coil_mode='inr'``).

Phase prior along the readout: the data-driven B0 prior is a low-resolution fit in (y, z) but an independent
fit per readout position x (the readout is fully sampled, so every x is its own 2-D problem); its errors are
therefore smooth in (y, z) and white along x -- stripes along x in B0 and everything derived from it (QSM).
:func:`smooth_along_readout` gives the B0 prior the same resolution along x as in (y, z): an amplitude-weighted
Gaussian along x (sigma :data:`B0_PRIOR_SIGMA_X` voxels, the width of the low-resolution window's point
spread). The Phase0 prior is left per voxel: smoothing it too cost WM+GM T1 NRMSE 0.073 -> 0.11 on the demo
phantom (docs/benchmarks/qsm.md), smoothing B0 alone did not (0.073 -> 0.069).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import nn

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.inr.hashgrid import voxel_coordinates
from qmapinr.recon.inr.heads import MAG_PARAMS, CoilINR, MapINR

#: Gaussian sigma (voxels along x) of the B0 prior's readout smoothing; the low-resolution prior keeps the central
#: 25 % of (ky, kz), whose point spread has a FWHM of about 4 voxels, i.e. sigma ~ 1.5-1.7 voxels.
B0_PRIOR_SIGMA_X = 1.5


def smooth_along_readout(values: torch.Tensor, weight: torch.Tensor, sigma_vox: float = B0_PRIOR_SIGMA_X
                         ) -> torch.Tensor:
    """Weighted Gaussian smoothing along x (last axis) of a float ``(nz, ny, nx)`` map; ``weight`` >= 0 alike.

    ``out = G * (w v) / G * w`` (normalised convolution, reflecting borders), so voxels with little signal
    borrow from their neighbours along x. ``sigma_vox <= 0`` returns the input unchanged.
    """
    if sigma_vox <= 0:
        return values
    v = values.detach().cpu().numpy().astype(np.float64)
    w = np.clip(weight.detach().cpu().numpy().astype(np.float64), 0.0, None)
    num = gaussian_filter1d(w * v, sigma_vox, axis=-1, mode="reflect")
    den = gaussian_filter1d(w, sigma_vox, axis=-1, mode="reflect")
    out = np.where(den > 1e-12 * max(float(den.max()), 1e-30), num / np.maximum(den, 1e-300), v)
    return torch.from_numpy(out.astype(np.float32)).to(values.device)


class SummitField(nn.Module):
    """INR over the (nz, ny, nx) volume, queried one batch of readout positions at a time.

    Parameters
    ----------
    cfg : settings (grids, MLP size, coil mode, coarse-to-fine schedule).
    shape : (nz, ny, nx).
    voxel_mm : (x, y, z) voxel size; coordinates are isotropic in mm (largest extent -> 1).
    priors : name -> float32 ``(nz, ny, nx)`` for A, T1, T2, T2star (positive), Phase0 (rad), B0 (Hz).
    sens : complex64 ``(C, nz, ny, nx)`` estimated coil sensitivities.
    """

    def __init__(self, cfg: SummitConfig, shape: tuple[int, int, int], voxel_mm: tuple[float, float, float],
                 priors: dict[str, torch.Tensor], sens: torch.Tensor) -> None:
        super().__init__()
        nz, ny, nx = shape
        self.cfg = cfg
        coords = voxel_coordinates((nz, ny, nx), (voxel_mm[2], voxel_mm[1], voxel_mm[0]))
        self.register_buffer("coords", coords.permute(2, 0, 1, 3).contiguous())  # (nx, nz, ny, 3)
        self.register_buffer("log_prior", torch.stack(
            [priors[n].clamp_min(1e-6).log().permute(2, 0, 1) for n in MAG_PARAMS], -1))  # (nx, nz, ny, 4)
        b0_prior = smooth_along_readout(priors["B0"], priors["A"])  # no stripes along the readout (docstring)
        self.register_buffer("phase_prior", torch.stack(
            [p.permute(2, 0, 1) for p in (priors["Phase0"], b0_prior)], -1))  # (nx, nz, ny, 2)
        self.register_buffer("sens", sens.permute(3, 1, 2, 0).contiguous())  # (nx, nz, ny, C)
        self.maps = MapINR(cfg.map_grid, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
        keep_rss = cfg.coil_keep_rss == "on"  # "auto" is resolved by solver.resolve_keep_rss (compressed data)
        self.coil = (CoilINR(cfg.coil_grid, sens.shape[0], keep_rss=keep_rss, seed=cfg.seed + 10)
                     if cfg.coil_mode == "inr" else None)
        if cfg.coil_mode not in ("ratio", "jsense", "inr"):
            raise ValueError(f"SummitConfig.coil_mode must be 'ratio', 'jsense' or 'inr', got {cfg.coil_mode!r}")

    def param_groups(self, lr: float, coil_lr_scale: float) -> list[dict]:
        """Adam parameter groups: the map INR at ``lr``, the coil INR (if any) at ``lr * coil_lr_scale``."""
        groups = [{"params": list(self.maps.parameters()), "lr": lr}]
        if self.coil is not None:
            groups.append({"params": list(self.coil.parameters()), "lr": lr * coil_lr_scale})
        return groups

    def scale_amplitude(self, gain: float) -> None:
        """Multiply the A prior by ``gain`` (> 0)."""
        if gain > 0:
            self.log_prior[..., MAG_PARAMS.index("A")] += float(torch.log(torch.tensor(gain)))

    def set_epoch(self, epoch: int) -> None:
        """Coarse-to-fine hook (all levels active unless the config asks otherwise) and the T2* hold.

        T2* hold: for the first ``cfg.t2star_hold_epochs`` epochs the T2* head takes no steps, so T2* stays at
        its prior from the echo fit of the low-resolution image, which is within ~10 % on the phantoms, while the
        T1/T2 contrast (which starts flat) is learnt. Without it the first epochs moved T2* by up to 4 log units
        in 2-3 epochs towards its 3000 ms bound -- through the hash-grid features the heads share and through
        its own consistent-sign gradient while the recovery curves were still wrong -- and where the soft clamp
        saturates its gradient vanishes: 3 of 5 seeded x orders ended there on the demo (docs/benchmarks/history.md).
        """
        hold = epoch < getattr(self.cfg, "t2star_hold_epochs", 0)
        for p in self.maps.heads.mag["T2star"].parameters():
            p.requires_grad_(not hold)
        n_levels = self.cfg.map_grid.n_levels
        per = getattr(self.cfg, "coarse_to_fine_epochs", 0)
        if per > 0:
            self.maps.set_active_levels(min(n_levels, 1 + epoch // per))

    @torch.no_grad()
    def batches(self, batch_x: int, xs: torch.Tensor | None = None
                ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]]:
        """The one batched evaluation of the whole field: yields ``(xb, maps, coil)`` per batch of x positions.

        ``xb`` int64 ``(bx,)`` on the field's device; maps name -> ``(bx, nz, ny)``; coil ``(bx, C, nz, ny)``.
        ``xs``: int64 readout positions to evaluate (default all, in order; a distributed rank passes its own).
        """
        nx = self.coords.shape[0]
        xs = torch.arange(nx) if xs is None else xs
        for xb in xs.to(self.coords.device).split(batch_x):
            maps, coil = self(xb)
            yield xb, maps, coil

    @torch.no_grad()
    def volumes(self, names: tuple[str, ...], batch_x: int) -> dict[str, torch.Tensor]:
        """Maps ``names`` on the whole grid, float32 ``(nz, ny, nx)`` on the CPU (evaluated ``batch_x`` x at a time)."""
        nx, nz, ny = self.coords.shape[:3]
        out = {n: torch.zeros(nz, ny, nx) for n in names}
        for xb, maps, _ in self.batches(batch_x):
            for n in names:
                out[n][:, :, xb.cpu()] = maps[n].permute(1, 2, 0).float().cpu()
        return out

    def forward(self, xb: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """xb int64 ``(bx,)`` -> maps name -> ``(bx, nz, ny)`` and complex sensitivities ``(bx, C, nz, ny)``."""
        coords = self.coords[xb]  # (bx, nz, ny, 3)
        shape = coords.shape[:3]
        pts = coords.reshape(-1, 3)
        lp = self.log_prior[xb].reshape(-1, len(MAG_PARAMS)).exp()
        pp = self.phase_prior[xb].reshape(-1, 2)
        out = self.maps(pts, phase0_prior=pp[:, 0], b0_prior=pp[:, 1],
                        mag_prior={n: lp[:, i] for i, n in enumerate(MAG_PARAMS)})
        maps = {k: v.reshape(shape) for k, v in out.items()}
        prior = self.sens[xb].reshape(-1, self.sens.shape[-1])
        sens = prior if self.coil is None else self.coil(pts, prior)
        return maps, sens.reshape(shape + (-1,)).permute(0, 3, 1, 2)

"""SUMMIT reconstruction: fit the INR of :mod:`qmapinr.recon.methods.summit.model` to the sampled lines.

Loop (design.md, paper settings): per epoch a seeded permutation of the readout positions x is split into
batches of ``cfg.batch_x``; for each batch the INR gives the maps and coil maps of those x slices, the physics
forward (structured rank-K q^n model or the exact model) predicts the sampled lines, and the loss is
``L1 data consistency + lambda * WNNM`` on the maps; Adam with the learning rate halved every ``lr_step``
epochs. Timing per stage (encoding+heads, forward, loss/WNNM, backward+step) is recorded in ``info``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from qmapinr.recon.calibration.coilmaps import coil_compress, estimate_coil_maps
from qmapinr.recon.calibration.jsense import refine_coil_maps
from qmapinr.recon.calibration.noise import estimate_sigma_from_noise_scan
from qmapinr.recon.config import SummitConfig
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.losses.data_consistency import l1_complex
from qmapinr.recon.losses.wnnm import wnnm_loss
from qmapinr.recon.methods.summit.initial import initial_maps
from qmapinr.recon.methods.summit.model import SummitField
from qmapinr.recon.physics.dictionary import default_dictionary
from qmapinr.recon.physics.fft import readout_ifft
from qmapinr.recon.physics.forward import ExactForward, LineSubspaceOp, StructuredForward

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, float, "SummitField"], None]


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Timer:
    """Accumulates wall time per stage name (seconds)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._t = time.perf_counter()

    def restart(self) -> None:
        """Start the next interval now (time spent before is not attributed to any stage)."""
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - self._t
        self._t = now


WNNM_GROUPS = (("lambda_a", ("A",)), ("lambda_t1_phase", ("T1", "B0")), ("lambda_t2", ("T2", "T2star")))
"""SUMMIT's three jointly regularised groups: A; T1 + phase (the B0 map); T2 + T2*."""


def _wnnm_terms(maps: dict[str, torch.Tensor], cfg: SummitConfig, levels: dict[str, tuple[float, float]]
                ) -> torch.Tensor:
    """sum_g lambda_g WNNM(group g) on the (bx, nz, ny) slices of the batch, each map in units of its scale."""
    # weight floor eps = sigma^2 (normalised units): the largest weight is 1/sigma instead of 1/sqrt(1e-6), so
    # noise-level components are shrunk hard but the regulariser cannot out-vote the data everywhere.
    rel = max(levels["T1"][1] / levels["T1"][0], 1e-3)
    kw = dict(patch=cfg.wnnm_patch, window=cfg.wnnm_window, n_similar=cfg.wnnm_similar, eps=rel**2)
    total = maps["T1"].new_zeros(())
    for attr, names in WNNM_GROUPS:
        lam = getattr(cfg, attr)
        if lam > 0:
            stack = torch.stack([maps[n] for n in names], dim=1)
            total = total + lam * wnnm_loss(stack, [levels[n][1] for n in names],
                                            scale=[levels[n][0] for n in names], **kw)
    return total


def map_noise_levels(init: dict[str, torch.Tensor], mask: torch.Tensor, rel_noise: float
                     ) -> dict[str, tuple[float, float]]:
    """Per map ``(scale, sigma)`` in map units for the WNNM weights.

    scale = in-mask median of ``|map|`` of the initial estimate (10 Hz floor for B0, which is centred near 0);
    sigma = ``rel_noise`` x scale, with ``rel_noise`` the inverse image SNR estimated from the noise pre-scan.
    """
    out = {}
    for name, m in init.items():
        v = m[mask].abs()
        scale = float(v.median()) if v.numel() else 1.0
        if name == "B0":
            scale = max(scale, 10.0)
        out[name] = (max(scale, 1e-6), rel_noise * max(scale, 1e-6))
    return out


@torch.no_grad()
def _amplitude_gain(model: SummitField, fwd, hybrid: torch.Tensor, batch_x: int) -> float:
    """Real least-squares gain ``g = Re<F(m), y> / ||F(m)||^2`` of the initial model against the data.

    The low-resolution initial A is biased low where the k-space centre is under-determined; A enters the
    model linearly, so one global gain removes that bias before the first step.
    """
    num = den = 0.0
    for xb in torch.arange(hybrid.shape[0], device=hybrid.device).split(batch_x):
        pred = fwd(*model(xb))
        num += float(torch.vdot(pred.flatten(), hybrid[xb].flatten()).real)
        den += float(pred.abs().pow(2).sum())
    return num / den if den > 0 else 1.0


def estimate_sensitivities(kspace: KSpace6D, cfg: SummitConfig) -> torch.Tensor:
    """complex64 ``(C, nz, ny, nx)``: low-resolution ratio maps, refined JSENSE-style unless
    ``cfg.coil_mode == 'ratio'``.

    The refinement alternates a rank-2 temporal-subspace SENSE fit with a coil fit on an (8, 12, 12) k-space block.
    Rank 2 keeps the joint problem over-determined (at R = 4 with 4 coils a rank-4 subspace has as many unknowns
    as data and fits noise with wrong maps): on the demo phantom the median |<s_est, s_true>| per voxel rises
    from 0.68 (ratio) to 0.98 (rank 2), against 0.92 with rank 4 (BENCHMARKS.md).
    """
    sens = estimate_coil_maps(kspace)
    if cfg.coil_mode != "ratio":
        basis, _, _ = default_dictionary(kspace.seq, n_t1=40, n_t2=30).svd_basis(2)
        sens, info = refine_coil_maps(kspace, sens, basis, outer_iters=cfg.coil_refine_iters, width=(8, 12, 12),
                                      seed=cfg.seed)
        log.info("coil maps refined: relative data residual %s", [f"{r:.3g}" for r in info["jsense_residual"]])
    return torch.from_numpy(sens)


def summit_recon(kspace: KSpace6D, cfg: SummitConfig | None = None,
                 callback: EpochCallback | None = None) -> QuantMaps:
    """Reconstruct A, T1, T2, T2*, B0, Phase0 and a residual map with the SUMMIT INR.

    Parameters
    ----------
    kspace : the buffered measurement (lines, header timing, geometry, noise pre-scan).
    cfg : typed settings (defaults CPU-sized; see :class:`~qmapinr.recon.config.SummitConfig`).
    callback : called after every epoch as ``callback(epoch, seconds_so_far, model)`` (benchmarks use it to
        record convergence curves; its own time is excluded from the timings).

    Returns
    -------
    :class:`QuantMaps`: float32 ``(nz, ny, nx)`` maps (0 outside ``mask``), ``info`` with the loss history,
    stage timings, data scale and settings.
    """
    cfg = cfg or SummitConfig()
    device = pick_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    if cfg.virtual_coils and cfg.virtual_coils < kspace.ncoils:
        kspace, _ = coil_compress(kspace, cfg.virtual_coils)
    nx, ny, nz = kspace.geometry.matrix
    sens = estimate_sensitivities(kspace, cfg)  # (C, nz, ny, nx)
    timings["coil_maps_s"] = time.perf_counter() - t_start
    hybrid = readout_ifft(kspace)  # (nx, C, nte, nlines)
    scale = float(hybrid.abs().amax()) or 1.0
    hybrid = hybrid / scale
    sigma = estimate_sigma_from_noise_scan(kspace.noise) / scale if kspace.noise is not None else None
    init = initial_maps(hybrid, kspace, sens)
    flat = {"flat": ("T1", "T2", "T2star", "A"), "echo": ("T1", "T2"), "dictionary": ()}
    if cfg.init not in flat:
        raise ValueError(f"SummitConfig.init must be one of {sorted(flat)}, got {cfg.init!r}")
    for name in flat[cfg.init]:  # constant priors (in-mask median), the INR learns the spatial structure
        init.maps[name] = torch.full_like(init.maps[name], float(init.maps[name][init.mask].median()))
    timings["prepare_s"] = time.perf_counter() - t_start
    mask = init.mask

    model = SummitField(cfg, (nz, ny, nx), kspace.geometry.voxel_mm, init.maps, sens).to(device)
    lines = (kspace.ky, kspace.kz, kspace.seg, kspace.tau)
    if cfg.forward == "structured":
        fwd = StructuredForward(kspace.seq, *lines, (nz, ny), rank=cfg.rank, device=device)
        log.info("structured forward: rank %d, worst q^n basis error %.2g", cfg.rank, fwd.basis_error)
    elif cfg.forward == "exact":
        fwd = ExactForward(kspace.seq, *lines, (nz, ny), device=device)
    else:
        raise ValueError(f"SummitConfig.forward must be 'structured' or 'exact', got {cfg.forward!r}")
    hybrid = hybrid.to(device)
    gain = _amplitude_gain(model, fwd, hybrid, cfg.batch_x)
    model.scale_amplitude(gain)
    log.info("init: amplitude prior rescaled by %.3g (least-squares fit of the forward model to the data)", gain)
    # inverse SNR of the low-resolution image: noise std of the pre-scan over the median in-mask amplitude
    signal_level = float(init.maps["A"][mask].median()) * math.sin(math.radians(kspace.seq.flip_deg)) * 0.5
    rel_noise = min(max((sigma or 0.0) / max(signal_level, 1e-12), 0.005), 0.2)
    levels = map_noise_levels(init.maps, mask, rel_noise)
    wnnm_on = cfg.lambda_a > 0 or cfg.lambda_t1_phase > 0 or cfg.lambda_t2 > 0
    dc_ref = None

    opt = torch.optim.Adam(model.param_groups(cfg.lr, cfg.coil_lr_scale), lr=cfg.lr, fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    gen = torch.Generator().manual_seed(cfg.seed)
    timer = _Timer(device)
    history: list[float] = []
    t_loop = time.perf_counter()
    excluded = 0.0
    for epoch in range(cfg.epochs):
        model.set_epoch(epoch)
        order = torch.randperm(nx, generator=gen)
        epoch_dc = 0.0
        for xb in order.split(cfg.batch_x):
            timer.mark("other")
            maps, coil = model(xb.to(device))
            timer.mark("inr")
            pred = fwd(maps, coil)
            timer.mark("forward")
            dc = l1_complex(pred, hybrid[xb.to(device)])
            loss = dc
            if dc_ref is None:
                dc_ref = float(dc.detach())  # lambdas are relative to the initial data-consistency loss
            if wnnm_on and epoch >= cfg.wnnm_start_epoch:
                loss = loss + dc_ref * _wnnm_terms(maps, cfg, levels)
            timer.mark("loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            timer.mark("backward_step")
            epoch_dc += float(dc.detach()) * len(xb) / nx
        sched.step()
        history.append(epoch_dc)
        log.info("epoch %d/%d  DC L1 %.5g  lr %.2g", epoch + 1, cfg.epochs, epoch_dc, sched.get_last_lr()[0])
        if callback is not None:
            t_cb = time.perf_counter()
            callback(epoch, t_cb - t_loop - excluded, model)
            excluded += time.perf_counter() - t_cb
            timer.restart()
        if cfg.plateau_rel > 0 and len(history) > 5:
            prev = min(history[-6:-1])
            if prev - epoch_dc < cfg.plateau_rel * prev:
                log.info("data-consistency plateau after %d epochs: stopping", epoch + 1)
                break
    timings.update({f"{k}_s": v for k, v in timer.totals.items()})
    timings["epochs_run"] = len(history)
    timings["loop_s"] = time.perf_counter() - t_loop - excluded

    out = final_maps(model, hybrid, fwd, kspace, mask, scale, cfg.batch_x)
    timings["total_s"] = time.perf_counter() - t_start - excluded
    out.info.update({"history": history, "timings": timings, "scale": scale, "config": cfg,
                     "sigma_noise": sigma, "init": {k: v.numpy() for k, v in init.maps.items()}})
    return out


@torch.no_grad()
def final_maps(model: SummitField, hybrid: torch.Tensor, fwd, kspace: KSpace6D, mask: torch.Tensor,
               scale: float, batch_x: int) -> QuantMaps:
    """Evaluate the INR on every voxel; Residual = coil-combined zero-filled image of the line residual."""
    nx, ny, nz = kspace.geometry.matrix
    device = hybrid.device
    ones = torch.ones(kspace.seq.ntau, kspace.seq.nseg, 1, device=device)
    adj = LineSubspaceOp(ones, *(torch.as_tensor(a, device=device) for a in
                                 (kspace.ky, kspace.kz, kspace.seg, kspace.tau)), (nz, ny))
    names = ("A", "T1", "T2", "T2star", "B0", "Phase0")
    vols = {n: torch.zeros(nz, ny, nx) for n in names + ("Residual",)}
    for xb in torch.arange(nx).split(batch_x):
        maps, coil = model(xb.to(device))
        res = fwd(maps, coil) - hybrid[xb.to(device)]  # (bx, C, E, L)
        img = adj.adjoint(res)[..., 0, :, :]  # (bx, C, E, nz, ny)
        rimg = (coil.conj()[:, :, None] * img).sum(1).abs().pow(2).sum(1).sqrt()  # (bx, nz, ny)
        for n in names:
            vols[n][:, :, xb] = maps[n].permute(1, 2, 0).float().cpu()
        vols["Residual"][:, :, xb] = rimg.permute(1, 2, 0).float().cpu() * scale
    vols["A"] *= scale
    # The support comes from a blurred low-resolution image and includes a rim of background; voxels whose fitted
    # amplitude is below 10 % of the in-support median carry no signal and are dropped from the output maps.
    a = vols["A"].numpy()
    m = mask.numpy() & (a > 0.1 * float(np.median(a[mask.numpy()])))
    out = {n: np.where(m, v.numpy(), 0.0).astype(np.float32) for n, v in vols.items()}
    return QuantMaps(maps=out, mask=m)

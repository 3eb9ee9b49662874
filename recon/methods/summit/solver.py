"""SUMMIT reconstruction: fit the INR of :mod:`qmapinr.recon.methods.summit.model` to the sampled lines.

Loop (docs/design.md, paper settings): per epoch a seeded permutation of the readout positions x is split into
batches of ``cfg.batch_x``; for each batch the INR gives the maps and coil maps of those x slices, the physics
forward (structured rank-K q^n model or the exact model) predicts the sampled lines, and the loss is
``L1 data consistency + lambda * WNNM`` on the maps; Adam with the learning rate halved every ``lr_step``
epochs. Timing per stage (encoding+heads, forward, loss/WNNM, backward+step) is recorded in ``info``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qmapinr.recon.calibration.coilmaps import estimate_coil_maps
from qmapinr.recon.calibration.compression import compress_as_configured
from qmapinr.recon.calibration.jsense import refine_coil_maps
from qmapinr.recon.calibration.noise import estimate_sigma_from_noise_scan
from qmapinr.recon.config import SummitConfig
from qmapinr.recon.inr.heads import MAG_PARAMS
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.losses.data_consistency import l1_complex
from qmapinr.recon.losses.wnnm import wnnm_loss
from qmapinr.recon.methods.budget import batch_size, dims_from_kspace
from qmapinr.recon.methods.loop import (  # noqa: F401  (re-exported: the loop's public names)
    BatchLoss,
    DataParallel,
    EpochCallback,
    FitResult,
    _Timer,
    fit,
    pick_device,
)
from qmapinr.recon.methods.progress import Progress, ProgressCallback
from qmapinr.recon.methods.schedule import step_schedule
from qmapinr.recon.methods.summit.initial import InitialMaps, initial_maps
from qmapinr.recon.methods.summit.model import SummitField
from qmapinr.recon.methods.validate import check_maps, check_support, validate
from qmapinr.recon.physics.dictionary import default_dictionary
from qmapinr.recon.physics.fft import readout_ifft
from qmapinr.recon.physics.forward import ExactForward, LineSubspaceOp, StructuredForward
from qmapinr.recon.physics.history import with_shot_groups

log = logging.getLogger(__name__)

GAIN_MIN_CORRELATION = 0.2
"""Below this correlation of the initial model with the data the amplitude gain is an energy ratio."""

WNNM_GROUPS = (("lambda_a", ("A",)), ("lambda_t1_phase", ("T1", "B0")), ("lambda_t2", ("T2", "T2star")))
"""SUMMIT's three jointly regularised groups: A; T1 + phase (the B0 map); T2 + T2*."""


def _wnnm_terms(maps: dict[str, torch.Tensor], cfg: SummitConfig, levels: dict[str, tuple[float, float]],
                support: torch.Tensor | None = None) -> torch.Tensor:
    """sum_g lambda_g WNNM(group g) on the (bx, nz, ny) slices of the batch.

    ``support`` (bool ``(bx, nz, ny)``, used when ``cfg.wnnm_in_support``): only patches inside the support mask
    are regularised, so background voxels without signal never enter a patch group with the rim.

    ``cfg.wnnm_domain == 'log'``: A, T1, T2, T2* enter as ``log(map)`` (noise ``sigma / scale``, relative), the
    phase map B0 in units of its scale; ``'linear'``: every map in units of its scale.
    """
    # weight floor eps = sigma^2 (normalised units): the largest weight is 1/sigma instead of 1/sqrt(1e-6), so
    # noise-level components are shrunk hard but the regulariser cannot out-vote the data everywhere.
    rel = max(levels["T1"][1] / levels["T1"][0], 1e-3)
    kw = dict(patch=cfg.wnnm_patch, window=cfg.wnnm_window, n_similar=cfg.wnnm_similar, eps=rel**2,
              mask=support if cfg.wnnm_in_support else None)
    total = maps["T1"].new_zeros(())
    log_domain = cfg.wnnm_domain == "log"
    for attr, names in WNNM_GROUPS:
        lam = getattr(cfg, attr)
        if lam > 0:
            vals, sig, scale = [], [], []
            for n in names:
                if log_domain and n in MAG_PARAMS:  # relative units: sigma_log = sigma / value
                    vals.append(maps[n].clamp_min(1e-12).log())
                    sig.append(levels[n][1] / levels[n][0])
                    scale.append(1.0)
                else:
                    vals.append(maps[n])
                    sig.append(levels[n][1])
                    scale.append(levels[n][0])
            total = total + lam * wnnm_loss(torch.stack(vals, dim=1), sig, scale=scale, **kw)
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
def _amplitude_gain(model: SummitField, fwd, hybrid: torch.Tensor, batch_x: int, max_x: int = 16,
                    min_correlation: float = GAIN_MIN_CORRELATION) -> float:
    """Real least-squares gain ``g = Re<F(m), y> / ||F(m)||^2`` of the initial model against the data.

    The low-resolution initial A is biased low where the k-space centre is under-determined; A enters the
    model linearly, so one global gain removes that bias before the first step. The gain is one scalar, so it
    is estimated on at most ``max_x`` evenly spaced readout positions (all of them when ``nx <= max_x``): a
    fixed cost instead of a full pass of the forward model over the volume.

    When the initial model hardly explains the data (correlation ``Re<F(m), y> / (||F(m)|| ||y||)`` below
    ``min_correlation``, e.g. a wrong initial phase), the least-squares gain is near 0 or negative and would
    crush A (and with it every gradient); the energy ratio ``||y|| / ||F(m)||`` is used instead (logged).
    """
    nx = hybrid.shape[0]
    xs = torch.linspace(0, nx - 1, min(nx, max_x)).round().long().unique().to(hybrid.device)
    num = den = yy = 0.0
    for xb in xs.split(batch_x):
        maps, coil = model(xb)
        pred = fwd(maps, coil)
        num += float(torch.vdot(pred.flatten(), hybrid[xb].flatten()).real)
        den += float(pred.abs().pow(2).sum())
        yy += float(hybrid[xb].abs().pow(2).sum())
    if den <= 0:
        return 1.0
    rho = num / math.sqrt(den * yy) if yy > 0 else 0.0
    if rho < min_correlation:
        log.warning("init: the initial model explains the data poorly (correlation %.2g < %g): amplitude set by "
                    "the energy ratio instead of least squares", rho, min_correlation)
        return math.sqrt(yy / den)
    return num / den


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


@dataclass
class Prepared:
    """Everything the fit needs, computed once before the first epoch (all tensors on ``device``).

    Attributes
    ----------
    kspace : the measurement (coil-compressed when ``cfg.virtual_coils`` / ``cfg.coil_energy`` ask for it).
    hybrid : complex64 ``(nx, C, nte, nlines)`` lines after the readout IFFT, divided by ``scale``.
    scale : data scale (max |hybrid| before normalisation).
    sigma : noise std of the pre-scan in normalised units, or None.
    sens : complex64 ``(C, nz, ny, nx)`` estimated coil maps.
    init : the initial maps (name -> float32 ``(nz, ny, nx)``) and the support ``mask``.
    fwd : the physics forward model (structured or exact).
    levels : per map ``(scale, sigma)`` for the WNNM weights.
    timings : seconds per preparation stage.
    """

    kspace: KSpace6D
    hybrid: torch.Tensor
    scale: float
    sigma: float | None
    sens: torch.Tensor
    init: InitialMaps
    fwd: StructuredForward | ExactForward
    levels: dict[str, tuple[float, float]]
    device: torch.device
    timings: dict[str, float]

    @property
    def mask(self) -> torch.Tensor:
        return self.init.mask


def build_forward(kspace: KSpace6D, cfg: SummitConfig, device: torch.device) -> StructuredForward | ExactForward:
    """The forward model that ``cfg.forward`` names, on the sampled lines of ``kspace``."""
    nx, ny, nz = kspace.geometry.matrix
    lines = (kspace.ky, kspace.kz, kspace.seg, kspace.tau)
    if cfg.forward == "structured":
        fwd = StructuredForward(kspace.seq, *lines, (nz, ny), rank=cfg.rank, device=device)
        log.info("structured forward: rank %d, worst q^n basis error %.2g", cfg.rank, fwd.basis_error)
        return fwd
    if cfg.forward == "exact":
        return ExactForward(kspace.seq, *lines, (nz, ny), device=device)
    raise ValueError(f"SummitConfig.forward must be 'structured' or 'exact', got {cfg.forward!r}")


def prepare(kspace: KSpace6D, cfg: SummitConfig) -> Prepared:
    """Coil maps, normalised hybrid data, noise level, initial maps and the forward model (before any epoch)."""
    device = pick_device(cfg.device)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    kspace = compress_as_configured(kspace, cfg.virtual_coils, cfg.coil_energy, cfg.min_virtual_coils,
                                    cfg.coil_compression, cfg.compress_above_coils)
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
    fwd = build_forward(kspace, cfg, device)
    mask = init.mask
    # inverse SNR of the low-resolution image: noise std of the pre-scan over the median in-mask amplitude
    signal_level = float(init.maps["A"][mask].median()) * math.sin(math.radians(kspace.seq.flip_deg)) * 0.5
    rel_noise = min(max((sigma or 0.0) / max(signal_level, 1e-12), 0.005), 0.2)
    levels = map_noise_levels(init.maps, mask, rel_noise)
    return Prepared(kspace, hybrid.to(device), scale, sigma, sens, init, fwd, levels, device, timings)


class SummitLoss:
    """SUMMIT's batch loss: L1 data consistency of the predicted lines + lambda-weighted WNNM on the maps.

    The lambdas are relative to the data-consistency loss of the very first batch (``dc_ref``); WNNM is on from
    ``cfg.wnnm_start_epoch``.
    """

    def __init__(self, prep: Prepared, cfg: SummitConfig) -> None:
        self.prep, self.cfg = prep, cfg
        self.wnnm_on = cfg.lambda_a > 0 or cfg.lambda_t1_phase > 0 or cfg.lambda_t2 > 0
        self.dc_ref: float | None = None

    def __call__(self, model: nn.Module, xb: torch.Tensor, epoch: int, timer: _Timer
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        maps, coil = model(xb)
        timer.mark("inr")
        return self.terms(maps, coil, xb, epoch, timer)

    def terms(self, maps: dict[str, torch.Tensor], coil: torch.Tensor, xb: torch.Tensor, epoch: int, timer: _Timer
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, data consistency) of already evaluated maps and coils of the batch ``xb`` (LoREIN's PMR part)."""
        pred = self.prep.fwd(maps, coil)
        timer.mark("forward")
        dc = l1_complex(pred, self.prep.hybrid[xb])
        loss = dc
        if self.dc_ref is None:
            self.dc_ref = float(dc.detach())  # lambdas are relative to the initial data-consistency loss
        if self.wnnm_on and epoch >= self.cfg.wnnm_start_epoch:
            support = self.prep.mask.to(xb.device).permute(2, 0, 1)[xb]  # (bx, nz, ny)
            loss = loss + self.dc_ref * _wnnm_terms(maps, self.cfg, self.prep.levels, support)
        timer.mark("loss")
        return loss, dc


def resolve_keep_rss(cfg: SummitConfig, prep: Prepared) -> SummitConfig:
    """``cfg`` with ``coil_keep_rss`` "auto" resolved: "on" when ``prep.kspace`` was coil-compressed, else "off"."""
    if cfg.coil_keep_rss != "auto":
        return cfg
    return dataclasses.replace(cfg, coil_keep_rss="on" if prep.kspace.meta.get("coil_compression") else "off")


def build_field(prep: Prepared, cfg: SummitConfig) -> SummitField:
    """The SUMMIT field started from the initial maps, its amplitude prior rescaled by the least-squares gain
    (``coil_keep_rss`` "auto" resolved by :func:`resolve_keep_rss`)."""
    cfg = resolve_keep_rss(cfg, prep)
    nx, ny, nz = prep.kspace.geometry.matrix
    model = SummitField(cfg, (nz, ny, nx), prep.kspace.geometry.voxel_mm, prep.init.maps, prep.sens).to(prep.device)
    gain = _amplitude_gain(model, prep.fwd, prep.hybrid, cfg.batch_x)
    model.scale_amplitude(gain)
    log.info("init: amplitude prior rescaled by %.3g (least-squares fit of the forward model to the data)", gain)
    return model


def resolve_batch_x(kspace: KSpace6D, cfg: SummitConfig) -> int:
    """``cfg.batch_x`` capped so that one batch's working set fits ``cfg.memory_budget_mb`` (0 = no cap).

    Uses :func:`~qmapinr.recon.methods.budget.batch_size` (the estimate the server uses for admission).
    """
    bx = batch_size(dims_from_kspace(kspace), cfg)
    if bx < cfg.batch_x:
        log.info("batch_x %d -> %d to keep a batch within memory_budget_mb=%g", cfg.batch_x, bx,
                 cfg.memory_budget_mb)
    return bx


@dataclass
class InrRun:
    """What :func:`run_inr` leaves for the method to add to its output: the prepared data, the trained model and
    its loss (the settings actually used are ``out.info['config']``)."""

    prep: Prepared
    model: nn.Module
    loss: BatchLoss


def run_inr(kspace: KSpace6D, cfg: SummitConfig, method: str,
            make_model: Callable[[Prepared, SummitConfig], nn.Module],
            make_loss: Callable[[Prepared, SummitConfig, nn.Module], BatchLoss],
            field: Callable[[nn.Module], SummitField] = lambda model: model,
            callback: EpochCallback | None = None, progress: ProgressCallback | None = None,
            extras: Callable[[InrRun, SummitConfig, QuantMaps], None] | None = None,
            parallel: DataParallel | None = None) -> QuantMaps:
    """The run every INR method shares: validate, prepare, check the support, cap the batch by the memory
    budget, build the model and its loss, :func:`fit`, evaluate the maps of ``field(model)``, check them.

    ``extras(run, cfg, out)`` adds method-specific outputs to ``out.info`` before the total time is taken.
    ``parallel``: this process is one rank of a data-parallel run (:class:`DataParallel`; prepare is replicated).
    """
    cfg, warnings = validate(cfg, kspace)  # before any work; idempotent
    kspace = with_shot_groups(kspace)  # transient shots of a short scan modelled exactly (physics.history)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    report = progress or (lambda p: None)
    report(Progress("prepare", 0.0))
    prep = prepare(kspace, cfg)
    check_support(prep.mask, prep.kspace)
    cfg = dataclasses.replace(resolve_keep_rss(cfg, prep), batch_x=resolve_batch_x(prep.kspace, cfg))
    cfg, note = step_schedule(cfg, prep.kspace.geometry.matrix[0], cfg.batch_x)
    if note:
        log.info("%s: %s", method, note)
        warnings = warnings + [note]
    model = make_model(prep, cfg)
    loss = make_loss(prep, cfg, model)
    if parallel is not None:
        parallel.shard(InrRun(prep, model, loss), cfg)
    report(Progress("fit", time.perf_counter() - t_start, 0, cfg.epochs))
    result = fit(model, loss, prep.kspace.geometry.matrix[0], cfg, prep.device, callback, progress,
                 parallel=parallel)
    timings = dict(prep.timings, **result.timings)
    report(Progress("maps", time.perf_counter() - t_start - timings["callback_s"]))
    out = final_maps(field(model), prep.hybrid, prep.fwd, prep.kspace, prep.mask, prep.scale, cfg.batch_x,
                     parallel)
    if extras is not None:
        extras(InrRun(prep, model, loss), cfg, out)
    timings["total_s"] = time.perf_counter() - t_start - timings.pop("callback_s")
    out.info.update({"history": result.history, "timings": timings, "scale": prep.scale, "config": cfg,
                     "sigma_noise": prep.sigma, "warnings": warnings,
                     "coil_compression": prep.kspace.meta.get("coil_compression")})
    check_maps(out, method)
    report(Progress("done", timings["total_s"]))
    return out


def summit_recon(kspace: KSpace6D, cfg: SummitConfig | None = None,
                 callback: EpochCallback | None = None, progress: ProgressCallback | None = None,
                 parallel: DataParallel | None = None) -> QuantMaps:
    """Reconstruct A, T1, T2, T2*, B0, Phase0 and a residual map with the SUMMIT INR: prepare, fit, evaluate.

    Parameters
    ----------
    kspace : the buffered measurement (lines, header timing, geometry, noise pre-scan).
    cfg : typed settings (defaults CPU-sized; see :class:`~qmapinr.recon.config.SummitConfig`).
    callback : called after every epoch as ``callback(epoch, seconds_so_far, model)`` (benchmarks use it to
        record convergence curves; its own time is excluded from the timings).
    parallel : this process is one rank of a data-parallel run over x-slabs
        (:func:`qmapinr.recon.methods.distributed.distributed_recon`); None = one process.
    progress : receives :class:`~qmapinr.recon.methods.progress.Progress` reports (stage changes, every epoch).

    Returns
    -------
    :class:`QuantMaps`: float32 ``(nz, ny, nx)`` maps (0 outside ``mask``), ``info`` with the loss history,
    stage timings, data scale, the settings used and ``warnings``.

    Raises
    ------
    ConfigError : a setting that cannot work on this data, before any work
        (:func:`~qmapinr.recon.methods.validate.validate`; a WNNM patch larger than a thin slab is clipped to
        ``min(wnnm_patch, nz, ny)`` with a warning instead, so the default chain runs on 4 slices).
    ReconstructionError : data without signal or corrupt, an empty support mask, a non-finite loss, or maps
        that are not finite.
    """
    def initial(run: InrRun, _cfg: SummitConfig, out: QuantMaps) -> None:
        out.info["init"] = {k: v.numpy() for k, v in run.prep.init.maps.items()}

    return run_inr(kspace, cfg or SummitConfig(), "summit", build_field, lambda prep, c, _m: SummitLoss(prep, c),
                   callback=callback, progress=progress, extras=initial, parallel=parallel)


@torch.no_grad()
def final_maps(model: SummitField, hybrid: torch.Tensor, fwd, kspace: KSpace6D, mask: torch.Tensor,
               scale: float, batch_x: int, parallel: DataParallel | None = None) -> QuantMaps:
    """Evaluate the INR on every voxel; Residual = coil-combined zero-filled image of the line residual.

    With ``parallel`` each rank evaluates its owned x (``hybrid`` holds only those) and the volumes are summed.
    """
    nx, ny, nz = kspace.geometry.matrix
    device = hybrid.device
    ones = torch.ones(kspace.seq.ntau, kspace.seq.nseg, 1, device=device)
    adj = LineSubspaceOp(ones, *(torch.as_tensor(a, device=device) for a in
                                 (kspace.ky, kspace.kz, kspace.seg, kspace.tau)), (nz, ny))
    names = ("A", "T1", "T2", "T2star", "B0", "Phase0")
    vols = {n: torch.zeros(nz, ny, nx) for n in names + ("Residual",)}
    for xb, maps, coil in model.batches(batch_x) if parallel is None else model.batches(batch_x, parallel.owned):
        res = fwd(maps, coil) - hybrid[xb]  # (bx, C, E, L)
        xb = xb.cpu()
        img = adj.adjoint(res)[..., 0, :, :]  # (bx, C, E, nz, ny)
        rimg = (coil.conj()[:, :, None] * img).sum(1).abs().pow(2).sum(1).sqrt()  # (bx, nz, ny)
        for n in names:
            vols[n][:, :, xb] = maps[n].permute(1, 2, 0).float().cpu()
        vols["Residual"][:, :, xb] = rimg.permute(1, 2, 0).float().cpu() * scale
    if parallel is not None:
        parallel.reduce_volumes(vols)
    vols["A"] *= scale
    # The support comes from a blurred low-resolution image and includes a rim of background; voxels whose fitted
    # amplitude is below 10 % of the in-support median carry no signal and are dropped from the output maps.
    a = vols["A"].numpy()
    m = mask.numpy() & (a > 0.1 * float(np.median(a[mask.numpy()])))
    out = {n: np.where(m, v.numpy(), 0.0).astype(np.float32) for n, v in vols.items()}
    return QuantMaps(maps=out, mask=m)

"""LoREIN reconstruction: SUMMIT's preparation, field and training loop with a low-rank (LRR) block added.

Per batch of readout positions (:class:`LoreinLoss`)::

    loss = lambda_pmr_dc * DC(F_pmr(maps, coil))                 # SUMMIT's data consistency of the PMR signal
         + WNNM(maps)                                            # SUMMIT's regulariser, unchanged
         + lambda_lrr_dc * DC(F_V(coil * U))                     # data consistency of the LRR series
         + lambda_cons * dc_0 * mean_support |U - P_V S_pmr(maps)|^2 / (sigma_rel^2 mean_support |U_0|^2)

``F_V`` is :class:`~qmapinr.recon.physics.forward.LineSubspaceOp` with the temporal basis V: K FFTs per coil and
echo. The consistency is a squared error in noise units (``sigma_rel`` = the inverse image SNR that ``prepare``
estimates from the noise pre-scan, the same as SUMMIT's WNNM uses; 1 = the blocks disagree at the noise level),
times the initial data-consistency loss ``dc_0`` like SUMMIT's lambdas. Decision, measured: an L1 consistency (first
tried) has full-strength gradients at zero disagreement; since both blocks start in agreement it locked them
together and the maps did not move from their initial values (docs/benchmarks/lorein.md). ``cons_grad`` detaches one
side of the consistency ("pmr": only the maps follow the LRR series, "lrr": only the series follows the maps,
"both"). Decisions and their measurements: docs/benchmarks/lorein.md.

Everything else is SUMMIT's: :func:`~qmapinr.recon.methods.summit.solver.prepare` (coil maps, data scale, noise
level, initial maps, forward model), :func:`~qmapinr.recon.methods.summit.solver.build_field` (the PMR field and
its amplitude gain), :func:`~qmapinr.recon.methods.summit.solver.fit` (the one training loop) and
:func:`~qmapinr.recon.methods.summit.solver.final_maps` (the maps come from the PMR block).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from qmapinr.recon.kspace import KSpace6D, QuantMaps, SequenceParams
from qmapinr.recon.losses.data_consistency import l1_complex
from qmapinr.recon.methods.lorein.config import LoreinConfig
from qmapinr.recon.methods.lorein.model import (
    LoreinField,
    LRRBlock,
    initial_coefficients,
    pmr_coefficients,
    temporal_basis,
)
from qmapinr.recon.methods.progress import ProgressCallback
from qmapinr.recon.methods.summit.solver import EpochCallback, InrRun, Prepared, SummitLoss, build_field, run_inr
from qmapinr.recon.physics.forward import LineSubspaceOp
from qmapinr.recon.physics.history import display_groups
from qmapinr.recon.physics.product import product_lines

log = logging.getLogger(__name__)

CONS_GRAD = ("both", "pmr", "lrr")


def lrr_operator(prep: Prepared, basis: torch.Tensor) -> LineSubspaceOp:
    """``coeff (..., K, nz, ny) -> lines (..., nlines)`` through V on the measurement's sampled lines."""
    ks = prep.kspace
    nx, ny, nz = ks.geometry.matrix
    lines = (torch.as_tensor(a, device=prep.device) for a in (ks.ky, ks.kz, ks.seg, ks.tau))
    return LineSubspaceOp(basis.to(prep.device), *lines, (nz, ny))


def lrr_lines(op: LineSubspaceOp, u: torch.Tensor, coil: torch.Tensor) -> torch.Tensor:
    """U ``(bx, nz, ny, nte, K)`` x coils ``(bx, C, nz, ny)`` -> predicted lines ``(bx, C, nte, nlines)``."""
    # the coefficient volume coil x U (bx, C, nte, K, nz, ny) in cache-sized chunks (physics.product)
    return product_lines(op, coil[:, :, None, None], u.permute(0, 3, 4, 1, 2)[:, None])


class LoreinLoss:
    """The joint batch loss (module docstring); ``terms`` keeps the per-epoch mean of each part.

    ``terms``: list (one entry per epoch) of dicts ``pmr_dc``, ``lrr_dc`` (data units) and ``cons`` (noise units).
    Returns ``(loss, pmr_dc)`` to :func:`fit`, so the loop's history is comparable with SUMMIT's.
    """

    def __init__(self, prep: Prepared, cfg: LoreinConfig, model: LoreinField) -> None:
        if cfg.cons_grad not in CONS_GRAD:
            raise ValueError(f"LoreinConfig.cons_grad must be one of {CONS_GRAD}, got {cfg.cons_grad!r}")
        self.prep, self.cfg = prep, cfg
        self.summit = SummitLoss(prep, cfg)
        self.op = lrr_operator(prep, model.basis)
        self.basis = model.basis
        self.support = prep.mask.permute(2, 0, 1).to(prep.device)  # (nx, nz, ny)
        if not bool(self.support.any()):
            raise ValueError("LoREIN: the support mask is empty; nothing to reconstruct")
        with torch.no_grad():
            u0 = model.lrr(torch.arange(self.support.shape[0], device=prep.device))
            a_scale, a_sigma = prep.levels["A"]
            power = float(u0[self.support].abs().pow(2).mean())
            self.cons_scale = 1.0 / max((a_sigma / a_scale) ** 2 * power, 1e-30)
        self.nx = self.support.shape[0]
        self.terms: list[dict[str, float]] = []

    def __call__(self, model: nn.Module, xb: torch.Tensor, epoch: int, timer) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        maps, coil, u = model(xb)
        timer.mark("inr")
        pmr_loss, pmr_dc = self.summit.terms(maps, coil, xb, epoch, timer)
        lrr_coil = coil if cfg.lrr_coil_grad else coil.detach()  # U x coil has a per-voxel scale ambiguity
        lrr_dc = l1_complex(lrr_lines(self.op, u, lrr_coil), self.prep.hybrid[xb])
        timer.mark("lrr_forward")
        up = pmr_coefficients(maps, self.basis, self.prep.kspace.seq)
        ul = u.detach() if cfg.cons_grad == "pmr" else u
        up = up.detach() if cfg.cons_grad == "lrr" else up
        m = self.support[xb]
        if bool(m.any()):
            cons = (ul[m] - up[m].to(ul.dtype)).abs().pow(2).mean() * self.cons_scale
        else:
            cons = u.real.new_zeros(())
        loss = (cfg.lambda_pmr_dc * pmr_dc + (pmr_loss - pmr_dc) + cfg.lambda_lrr_dc * lrr_dc
                + cfg.lambda_cons * self.summit.dc_ref * cons)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"LoREIN loss is not finite at epoch {epoch} (pmr_dc={float(pmr_dc):.3g}, "
                                     f"lrr_dc={float(lrr_dc):.3g}, cons={float(cons):.3g})")
        timer.mark("loss")
        if len(self.terms) <= epoch:
            self.terms.append({"pmr_dc": 0.0, "lrr_dc": 0.0, "cons": 0.0})
        w = len(xb) / self.nx
        for name, v in (("pmr_dc", pmr_dc), ("lrr_dc", lrr_dc), ("cons", cons)):
            self.terms[epoch][name] += float(v.detach()) * w
        return loss, pmr_dc


def build_lorein(prep: Prepared, cfg: LoreinConfig) -> tuple[LoreinField, dict[str, float]]:
    """SUMMIT's PMR field (with its amplitude gain) + the LRR block started at the projected PMR signal."""
    pmr = build_field(prep, cfg)
    basis, emax, emean = temporal_basis(prep.kspace.seq, cfg.lrr_rank)
    basis = basis.to(prep.device)
    log.info("LRR temporal basis: rank %d, dictionary projection error max %.2g mean %.2g", cfg.lrr_rank, emax,
             emean)
    u0 = initial_coefficients(pmr, basis, prep.kspace.seq, cfg.batch_x)
    lrr = LRRBlock(cfg.lrr_mode, u0, pmr.coords, cfg).to(prep.device)
    return LoreinField(pmr, lrr, basis, cfg.lrr_lr_scale), {"basis_error_max": emax, "basis_error_mean": emean}


@torch.no_grad()
def lrr_series(model: LoreinField, n_readouts: int, scale: float, batch_x: int,
               seq: SequenceParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """|x_e(tau, n)| of the LRR block at ``n_readouts`` evenly spaced readouts n per tau.

    With line groups (``seq.prep_groups``, transient shots) each physical tau shows the group of
    :func:`~qmapinr.recon.physics.history.display_groups`.

    Returns float32 ``(nte, ntau, n_readouts, nz, ny, nx)`` in data units and the int64 readout indices ``(n,)``.
    """
    basis = model.basis
    if seq is not None and seq.prep_groups is not None:
        basis = basis[torch.as_tensor(display_groups(seq), device=basis.device)]
    ntau, nseg, _ = basis.shape
    n_idx = np.unique(np.linspace(0, nseg - 1, max(1, n_readouts)).round().astype(np.int64))
    v = basis[:, torch.as_tensor(n_idx, device=basis.device)]  # (ntau, npick, K)
    nx, nz, ny = model.pmr.coords.shape[:3]
    nte = model.lrr(torch.zeros(1, dtype=torch.int64, device=basis.device)).shape[-2]
    out = np.zeros((nte, ntau, len(n_idx), nz, ny, nx), np.float32)
    for xb in torch.arange(nx, device=basis.device).split(batch_x):
        x = torch.einsum("bzyek,tpk->etpzyb", model.lrr(xb), v.to(torch.complex64))
        out[..., xb.cpu().numpy()] = (x.abs() * scale).cpu().numpy()
    return out, n_idx


def lorein_recon(kspace: KSpace6D, cfg: LoreinConfig | None = None,
                 callback: EpochCallback | None = None, progress: ProgressCallback | None = None) -> QuantMaps:
    """Reconstruct the SUMMIT maps with LoREIN's joint LRR + PMR fit.

    Parameters
    ----------
    kspace : the buffered measurement.
    cfg : :class:`LoreinConfig` (SUMMIT's settings + the LRR block).
    callback : ``callback(epoch, seconds_so_far, model)`` after every epoch (as SUMMIT's).
    progress : stage / epoch reports (as SUMMIT's).

    Returns
    -------
    :class:`QuantMaps` from the PMR block (float32 ``(nz, ny, nx)``); ``info`` adds ``lorein_terms`` (per-epoch
    pmr_dc / lrr_dc / cons), the basis error and, with ``cfg.lrr_output``, ``lrr_series`` (see :func:`lrr_series`)
    and ``lrr_readouts``.
    """
    cfg = cfg or LoreinConfig()
    if not isinstance(cfg, LoreinConfig):
        raise TypeError(f"lorein_recon needs a LoreinConfig, got {type(cfg).__name__}")
    basis_info: dict[str, float] = {}

    def make_model(prep: Prepared, c: LoreinConfig) -> LoreinField:
        model, info = build_lorein(prep, c)
        basis_info.update(info)
        return model

    def extras(run: InrRun, c: LoreinConfig, out: QuantMaps) -> None:
        if c.lrr_output:
            out.info["lrr_series"], out.info["lrr_readouts"] = lrr_series(run.model, c.lrr_output_readouts,
                                                                          run.prep.scale, c.batch_x,
                                                                          run.prep.kspace.seq)
        out.info.update({"lorein_terms": run.loss.terms, **basis_info})

    return run_inr(kspace, cfg, "lorein", make_model, LoreinLoss, field=lambda model: model.pmr,
                   callback=callback, progress=progress, extras=extras)

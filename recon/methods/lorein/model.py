"""LoREIN's fields: the LRR block (coefficient images U over temporal bases V) and its composition with SUMMIT's PMR.

Low-rank representation (LRR) of the weighted-image series, per echo ``e``::

    x_e(r, tau, n) = sum_k U_{e,k}(r) V_k(tau, n),      k = 0..K-1

Decisions (the paper's text beyond its summary is not at hand; each is measured in docs/benchmarks/lorein.md):

* **One V for all echoes.** The signal is ``h_TE(r) * r(tau, n; T1, T2)`` with a real recovery curve that does not
  depend on TE, so the echoes share the temporal subspace exactly; a per-echo V would only add unknowns.
* **V from the SVD of the signal-model dictionary** (:func:`~qmapinr.recon.physics.dictionary.default_dictionary`,
  40 x 30 atoms, T1 100-5000 ms, T2 10-2500 ms). The dictionary is simulated with
  :func:`~qmapinr.recon.physics.signal.signal`, which follows the header's ``PrepLoopOrder`` (closed form or the
  tau-outer fixed point), so V is history-exact wherever the signal module is.
* **Real V, complex U.** The recovery curves are real; the phase (B0, coil-independent Phase0) lives in U.
* **U from a hash-grid INR (default) or an explicit tensor.** The INR gives the LRR block a continuity prior of its
  own (at R >= 16 an explicit tensor has far more unknowns per x position than sampled lines). Both start from the
  projection of the initial PMR signal onto V, so the two blocks agree at epoch 0; the INR learns a residual.
* **The same coil model as SUMMIT**: the LRR series is multiplied by the PMR field's coil sensitivities (the fixed
  estimate or the coil INR), so both blocks see one set of coils.
* **The PMR signal projected onto V exactly** (:func:`pmr_coefficients`): ``P_V S = h_e ss (sum V_k - sum_tau c_tau
  sum_n V_k(tau, n) q^n)`` with the full q^n, no second low-rank approximation.

Shapes: ``U`` complex ``(bx, nz, ny, nte, K)``; V float32 ``(ntau, nseg, K)`` with orthonormal columns over the
flattened ``(tau, n)`` index.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from qmapinr.recon.inr.hashgrid import make_encoding
from qmapinr.recon.inr.heads import MLP
from qmapinr.recon.kspace import SequenceParams
from qmapinr.recon.methods.lorein.config import LoreinConfig
from qmapinr.recon.methods.summit.model import SummitField
from qmapinr.recon.physics.dictionary import default_dictionary
from qmapinr.recon.physics.signal import echo_factors, prep_coefficients, steady_state_terms


def temporal_basis(seq: SequenceParams, rank: int) -> tuple[torch.Tensor, float, float]:
    """V float32 ``(ntau, nseg, rank)`` and its (max, mean) relative projection error over the dictionary."""
    if not 1 <= rank <= seq.ntau * seq.nseg:
        raise ValueError(f"lrr_rank must be in 1..{seq.ntau * seq.nseg} (ntau * nseg), got {rank}")
    v, emax, emean = default_dictionary(seq, n_t1=40, n_t2=30).svd_basis(rank)
    return torch.from_numpy(v), emax, emean


def pmr_coefficients(maps: dict[str, torch.Tensor], basis: torch.Tensor, seq: SequenceParams) -> torch.Tensor:
    """Coefficients ``(..., nte, K)`` complex of the PMR signal projected onto V; maps each ``(...)``.

    ``<V_k, S_e> = h_e ss (sum_{tau,n} V_k - sum_tau c_tau sum_n V_k(tau, n) q^n)`` (V real, orthonormal).
    """
    ss, q = steady_state_terms(maps["T1"], seq)
    c = prep_coefficients(maps["T1"], maps["T2"], seq)  # (..., ntau)
    n = torch.arange(seq.nseg, dtype=q.dtype, device=q.device)
    qn = q[..., None] ** n  # (..., nseg)
    vq = torch.einsum("...n,tnk->...tk", qn, basis)  # (..., ntau, K)
    rec = ss[..., None] * (basis.sum(dim=(0, 1)) - (c[..., None] * vq).sum(-2))  # (..., K)
    h = echo_factors(maps["A"], maps["T2star"], maps["Phase0"], maps["B0"], seq)  # (..., nte)
    return h[..., :, None] * rec[..., None, :].to(h.dtype)


class LRRBlock(nn.Module):
    """Coefficient images ``U (nx, nz, ny, nte, K)`` as a residual INR around ``u0`` or as an explicit tensor.

    Parameters
    ----------
    mode : "inr" or "tensor".
    u0 : complex64 ``(nx, nz, ny, nte, K)`` initial coefficients (the projected initial PMR signal).
    coords : float32 ``(nx, nz, ny, 3)`` normalised coordinates (SUMMIT's).
    cfg : grid and MLP sizes, seed.
    """

    def __init__(self, mode: str, u0: torch.Tensor, coords: torch.Tensor, cfg: LoreinConfig) -> None:
        super().__init__()
        if mode not in ("inr", "tensor"):
            raise ValueError(f"LoreinConfig.lrr_mode must be 'inr' or 'tensor', got {mode!r}")
        self.mode = mode
        self.out_shape = tuple(u0.shape[-2:])  # (nte, K)
        self.register_buffer("coords", coords)
        if mode == "tensor":
            self.u = nn.Parameter(torch.view_as_real(u0.clone()).contiguous())
            return
        self.register_buffer("u0", u0)
        # residual scale: the rms coefficient of each (echo, basis) over the volume, so a unit MLP output is a
        # change of one typical coefficient (the later bases are orders of magnitude smaller than the first)
        self.register_buffer("res_scale", u0.abs().pow(2).mean(dim=(0, 1, 2)).sqrt().clamp_min(1e-12))
        self.encoding = make_encoding(cfg.lrr_grid, 3, seed=cfg.seed + 20)
        n_out = 2 * self.out_shape[0] * self.out_shape[1]
        width = cfg.lrr_grid.n_levels * cfg.lrr_grid.n_features_per_level
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 21)
            self.mlp = MLP(width, n_out, hidden=cfg.lrr_hidden, layers=cfg.lrr_layers, out_init_scale=1e-4)

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        """xb int64 ``(bx,)`` -> U complex64 ``(bx, nz, ny, nte, K)``."""
        if self.mode == "tensor":
            return torch.view_as_complex(self.u[xb])
        coords = self.coords[xb]
        raw = self.mlp(self.encoding(coords.reshape(-1, 3)).float())
        raw = torch.view_as_complex(raw.reshape(*coords.shape[:3], *self.out_shape, 2).contiguous())
        return self.u0[xb] + self.res_scale * raw


class LoreinField(nn.Module):
    """The PMR block (SUMMIT's field) and the LRR block, trained by SUMMIT's ``fit``.

    ``forward(xb) -> (maps, coil, U)``: maps name -> ``(bx, nz, ny)``, coil complex ``(bx, C, nz, ny)``, U complex
    ``(bx, nz, ny, nte, K)``. ``batches`` is the PMR field's (maps and coils for ``final_maps``).
    """

    def __init__(self, pmr: SummitField, lrr: LRRBlock, basis: torch.Tensor, lrr_lr_scale: float) -> None:
        super().__init__()
        self.pmr, self.lrr, self.lrr_lr_scale = pmr, lrr, lrr_lr_scale
        self.register_buffer("basis", basis)  # V (ntau, nseg, K)

    def param_groups(self, lr: float, coil_lr_scale: float) -> list[dict]:
        """SUMMIT's groups (map INR, coil INR) + the LRR block at ``lr * lrr_lr_scale``."""
        return self.pmr.param_groups(lr, coil_lr_scale) + [
            {"params": list(self.lrr.parameters()), "lr": lr * self.lrr_lr_scale}]

    def set_epoch(self, epoch: int) -> None:
        self.pmr.set_epoch(epoch)

    def batches(self, batch_x: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]]:
        return self.pmr.batches(batch_x)

    def volumes(self, names: tuple[str, ...], batch_x: int) -> dict[str, torch.Tensor]:
        return self.pmr.volumes(names, batch_x)

    def forward(self, xb: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        maps, coil = self.pmr(xb)
        return maps, coil, self.lrr(xb)


@torch.no_grad()
def initial_coefficients(pmr: SummitField, basis: torch.Tensor, seq: SequenceParams, batch_x: int) -> torch.Tensor:
    """``P_V`` of the PMR field's signal on the whole grid: complex64 ``(nx, nz, ny, nte, K)``."""
    nx, nz, ny = pmr.coords.shape[:3]
    out = torch.zeros(nx, nz, ny, seq.nte, basis.shape[-1], dtype=torch.complex64, device=pmr.coords.device)
    for xb, maps, _ in pmr.batches(batch_x):
        out[xb] = pmr_coefficients(maps, basis, seq).to(out.dtype)
    return out

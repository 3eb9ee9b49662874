"""LoREIN's LRR block and the PMR projection: the pieces are exact and the block alone fits a rank-K series."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import TINY_SEQ, smooth_coils
from torch import nn

from qmapinr.recon.config import HashGridConfig
from qmapinr.recon.inr.hashgrid import voxel_coordinates
from qmapinr.recon.losses.data_consistency import l1_complex
from qmapinr.recon.methods.lorein.config import LoreinConfig
from qmapinr.recon.methods.lorein.model import LRRBlock, pmr_coefficients, temporal_basis
from qmapinr.recon.methods.lorein.solver import lrr_lines
from qmapinr.recon.methods.summit.solver import fit
from qmapinr.recon.physics.forward import LineSubspaceOp
from qmapinr.recon.physics.signal import signal

NX, NZ, NY, K = 2, 4, 6, 3


class _LRROnly(nn.Module):
    """The LRR block as a model of the shared loop (no PMR block)."""

    def __init__(self, block: LRRBlock) -> None:
        super().__init__()
        self.block = block

    def param_groups(self, lr: float, coil_lr_scale: float) -> list[dict]:
        return [{"params": list(self.block.parameters()), "lr": lr}]

    def set_epoch(self, epoch: int) -> None:
        pass

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        return self.block(xb)


def _rank_k_problem(seed: int = 0):
    """A smooth complex rank-K series (true U) over V, 2 coils, every (ky, kz) sampled twice per tau."""
    rng = np.random.default_rng(seed)
    basis, _, _ = temporal_basis(TINY_SEQ, K)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (NZ, NY, NX)), indexing="ij")
    u = np.zeros((NX, NZ, NY, TINY_SEQ.nte, K), np.complex64)
    for e in range(TINY_SEQ.nte):
        for k in range(K):
            c = rng.normal(size=4) + 1j * rng.normal(size=4)
            img = (c[0] + c[1] * x + c[2] * y + c[3] * z) * np.exp(-(x**2 + y**2 + z**2)) / (1 + k)
            u[..., e, k] = np.moveaxis(img, 2, 0)
    sens = torch.from_numpy(np.ascontiguousarray(np.moveaxis(smooth_coils((NZ, NY, NX), 2), 3, 0)))
    ky, kz = np.meshgrid(np.arange(NY), np.arange(NZ))
    cols = []
    for t in range(TINY_SEQ.ntau):
        for _ in range(2):
            seg = rng.integers(0, TINY_SEQ.nseg, ky.size)
            cols.append(np.stack([ky.ravel(), kz.ravel(), seg, np.full(ky.size, t)]))
    lines = [torch.from_numpy(a) for a in np.concatenate(cols, axis=1)]
    op = LineSubspaceOp(basis, *lines, (NZ, NY))
    u_true = torch.from_numpy(u)
    y_true = lrr_lines(op, u_true, sens)
    return basis, op, sens, u_true, y_true


def _fit_block(mode: str, epochs: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    basis, op, sens, u_true, y_true = _rank_k_problem()
    coords = voxel_coordinates((NZ, NY, NX)).permute(2, 0, 1, 3).contiguous()
    cfg = LoreinConfig(epochs=epochs, lr=lr, lr_step=max(epochs // 6, 1), batch_x=NX, seed=0,
                       lrr_grid=HashGridConfig(n_levels=4, log2_hashmap_size=10, implementation="torch"))
    u_start = 0.5 * u_true.mean(dim=(0, 1, 2), keepdim=True).expand_as(u_true).contiguous()
    model = _LRROnly(LRRBlock(mode, u_start, coords, cfg))

    def loss_fn(m, xb, epoch, timer):
        dc = l1_complex(lrr_lines(op, m(xb), sens[xb]), y_true[xb])
        return dc, dc

    fit(model, loss_fn, NX, cfg, torch.device("cpu"))
    with torch.no_grad():
        return model(torch.arange(NX)), u_true


def test_tensor_lrr_block_alone_fits_a_rank_k_series_to_1e_3():
    u, u_true = _fit_block("tensor", epochs=600, lr=2e-2)
    basis = temporal_basis(TINY_SEQ, K)[0]
    series = torch.einsum("xzyek,tnk->xzyetn", u, basis.to(u.dtype))
    true = torch.einsum("xzyek,tnk->xzyetn", u_true, basis.to(u.dtype))
    rel = float((series - true).norm() / true.norm())
    assert rel < 1e-3, rel


def test_pmr_coefficients_are_the_projection_of_the_exact_signal():
    basis, emax, _ = temporal_basis(TINY_SEQ, 8)
    assert emax < 0.05
    gen = torch.Generator().manual_seed(0)
    maps = {"A": torch.rand(50, generator=gen) + 0.5, "T1": 300 + 3000 * torch.rand(50, generator=gen),
            "T2": 30 + 200 * torch.rand(50, generator=gen), "T2star": 20 + 80 * torch.rand(50, generator=gen),
            "Phase0": torch.rand(50, generator=gen), "B0": 20 * torch.rand(50, generator=gen)}
    s = signal(*(maps[n] for n in ("A", "T1", "T2", "T2star", "Phase0", "B0")), TINY_SEQ)  # (50, E, ntau, nseg)
    direct = torch.einsum("metn,tnk->mek", s, basis.to(s.dtype))
    got = pmr_coefficients(maps, basis, TINY_SEQ)
    assert float((got - direct).abs().max() / direct.abs().max()) < 1e-5


def test_bad_rank_and_mode_are_rejected():
    with pytest.raises(ValueError, match="lrr_rank"):
        temporal_basis(TINY_SEQ, 0)
    with pytest.raises(ValueError, match="lrr_mode"):
        LRRBlock("dense", torch.zeros(1, 1, 1, 1, 1, dtype=torch.complex64), torch.zeros(1, 1, 1, 3),
                 LoreinConfig())

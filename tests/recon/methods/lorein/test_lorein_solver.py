"""LoREIN's joint fit on a tiny simulated case: both blocks fit the data, the gradient switch is honoured."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qmapinr.recon.config import HashGridConfig
from qmapinr.recon.methods.lorein.config import LoreinConfig
from qmapinr.recon.methods.lorein.solver import build_lorein, lorein_recon
from qmapinr.recon.methods.summit.solver import SummitLoss, prepare
from qmapinr.recon.sim.simulate import SimulationConfig, simulate

GRID = HashGridConfig(n_levels=4, log2_hashmap_size=12, implementation="torch")
TINY = LoreinConfig(epochs=6, lr=5e-3, batch_x=4, coil_refine_iters=2, map_grid=GRID, lrr_grid=GRID, threads=1)


@pytest.fixture(scope="module")
def tiny_kspace():
    torch.set_num_threads(1)
    ks, ph = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=4, snr=30, seed=1, nseg=8))
    return ks, ph


def test_joint_fit_lowers_the_lrr_and_the_pmr_losses(tiny_kspace):
    ks, _ = tiny_kspace
    # 12 epochs: with the exact per-shot history (16 transient shots of 8 readouts) the first epochs start closer
    # to the data and both losses fall slowly before they fall fast
    out = lorein_recon(ks, dataclasses.replace(TINY, epochs=12, lrr_output=True, lrr_output_readouts=2))
    terms = out.info["lorein_terms"]
    assert len(terms) == 12
    assert terms[-1]["lrr_dc"] < 0.99 * terms[0]["lrr_dc"], terms
    assert terms[-1]["pmr_dc"] < 0.995 * terms[0]["pmr_dc"], terms
    assert all(np.isfinite(v).all() for v in out.maps.values())
    series = out.info["lrr_series"]  # (nte, ntau, 2, nz, ny, nx)
    assert series.shape == (ks.seq.nte, ks.seq.ntau, 2, 4, 16, 16) and np.isfinite(series).all()
    assert list(out.info["lrr_readouts"]) == [0, ks.seq.nseg - 1]


def test_pmr_only_consistency_leaves_the_lrr_block_untouched(tiny_kspace):
    """cons_grad='pmr' with no LRR data term: nothing updates the LRR block (the gradient switch works)."""
    ks, _ = tiny_kspace
    cfg = dataclasses.replace(TINY, epochs=1, cons_grad="pmr", lambda_lrr_dc=0.0, lrr_mode="tensor")
    torch.manual_seed(0)
    prep = prepare(ks, cfg)
    model, _ = build_lorein(prep, cfg)
    from qmapinr.recon.methods.lorein.solver import LoreinLoss
    from qmapinr.recon.methods.summit.solver import fit

    loss = LoreinLoss(prep, cfg, model)
    before = model.lrr.u.detach().clone()
    pmr_before = [p.detach().clone() for p in model.pmr.maps.parameters()]
    fit(model, loss, ks.geometry.matrix[0], cfg, prep.device)
    assert torch.equal(model.lrr.u.detach(), before)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(pmr_before, model.pmr.maps.parameters(), strict=True))


def test_lrr_consistency_starts_at_zero_and_summit_terms_match(tiny_kspace):
    """At epoch 0 the LRR block is the projected PMR signal, and LoREIN's PMR term is SUMMIT's loss."""
    ks, _ = tiny_kspace
    cfg = dataclasses.replace(TINY, lrr_mode="tensor")
    torch.manual_seed(0)
    prep = prepare(ks, cfg)
    model, info = build_lorein(prep, cfg)
    from qmapinr.recon.methods.lorein.model import pmr_coefficients

    xb = torch.arange(4)
    with torch.no_grad():
        maps, coil, u = model(xb)
        assert torch.allclose(u, pmr_coefficients(maps, model.basis, ks.seq).to(u.dtype), atol=1e-6)
        ref, _ = SummitLoss(prep, cfg)(model.pmr, xb, 0, _NoTimer())
        _, dc = SummitLoss(prep, cfg).terms(maps, coil, xb, 0, _NoTimer())
    assert float(ref) == pytest.approx(float(dc))
    assert info["basis_error_max"] < 0.1


def test_bad_gradient_switch_is_rejected(tiny_kspace):
    ks, _ = tiny_kspace
    with pytest.raises(ValueError, match="cons_grad"):
        lorein_recon(ks, dataclasses.replace(TINY, epochs=1, cons_grad="sideways"))


class _NoTimer:
    def mark(self, name: str) -> None:
        pass

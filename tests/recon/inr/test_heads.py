"""Tests of the parameter / phase / coil heads (recon/inr/heads.py)."""

from __future__ import annotations

import math

import pytest
import torch

from qmapinr.recon.config import HashGridConfig
from qmapinr.recon.inr.hashgrid import HashEncoding
from qmapinr.recon.inr.heads import (
    DEFAULT_RANGES,
    MAG_PARAMS,
    MLP,
    CoilINR,
    MapINR,
    ParameterHeads,
    soft_clamp_log,
)

torch.set_num_threads(1)

GRID = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                      per_level_scale=1.5, implementation="torch")
COIL_GRID = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=2,
                           per_level_scale=1.5, implementation="torch")
INIT = {"A": 0.3, "T1": 1000.0, "T2": 80.0, "T2star": 50.0}


def _coords(n: int = 300, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed))


def test_mlp_structure_and_output_init():
    mlp = MLP(8, 3, hidden=16, layers=3, out_init_scale=0.0)
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 16), (16, 3)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in mlp) == 3
    assert (mlp(torch.randn(5, 8)) == 0).all()
    assert MLP(8, 2, layers=0)(torch.randn(4, 8)).shape == (4, 2)


def test_heads_start_at_init_values_and_are_positive():
    enc = HashEncoding(GRID, seed=0)
    heads = ParameterHeads(enc.n_output_dims, init=INIT)
    out = heads(enc(_coords()))
    assert set(out) == {"A", "T1", "T2", "T2star", "Phase0", "B0"}
    for name in MAG_PARAMS:
        assert out[name].shape == (300,)
        assert (out[name] > 0).all()
        assert torch.allclose(out[name], torch.full_like(out[name], INIT[name]), rtol=1e-2)
    assert out["Phase0"].abs().max() < 1e-2 and out["B0"].abs().max() < 1e-1


def test_heads_are_seeded_without_touching_global_rng():
    state = torch.get_rng_state()
    a, b = ParameterHeads(8, seed=1), ParameterHeads(8, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    x = torch.randn(10, 8)
    assert torch.equal(a(x)["T1"], b(x)["T1"])
    assert not torch.equal(a(x)["T1"], ParameterHeads(8, seed=2)(x)["T1"])


def test_phase_head_adds_priors_and_mag_prior_replaces_init():
    enc = HashEncoding(GRID, seed=0)
    heads = ParameterHeads(enc.n_output_dims, init=INIT)
    feats = enc(_coords(50))
    p0 = torch.linspace(-3.0, 3.0, 50)
    b0 = torch.linspace(-80.0, 120.0, 50)
    a_map = torch.linspace(0.1, 2.0, 50)
    base = heads(feats)
    out = heads(feats, phase0_prior=p0, b0_prior=b0, mag_prior={"A": a_map})
    assert torch.allclose(out["Phase0"] - base["Phase0"], p0, atol=1e-6)
    assert torch.allclose(out["B0"] - base["B0"], b0, atol=1e-4)
    assert torch.allclose(out["A"], a_map, rtol=1e-2)
    assert torch.equal(out["T1"], base["T1"])
    with pytest.raises(ValueError, match="mag_prior"):
        heads(feats, mag_prior={"B0": b0})


def test_soft_clamp_keeps_range_and_gradient():
    u = torch.linspace(-20.0, 20.0, 401, requires_grad=True)
    v = soft_clamp_log(u, 20.0, 8000.0, 20.0)
    assert v.min() >= math.log(20.0) - 1e-6 and v.max() <= math.log(8000.0) + 1e-6
    inside = (u > math.log(40.0)) & (u < math.log(4000.0))
    assert torch.allclose(v[inside], u[inside], atol=1e-6)
    v.sum().backward()
    near = (u > math.log(20.0) - 0.5) & (u < math.log(8000.0) + 0.5)  # within half a log unit of the range
    assert (u.grad[near] > 0).all() and (u.grad <= 1 + 1e-6).all()


def test_heads_clamp_extreme_raw_outputs():
    heads = ParameterHeads(4, init=INIT, out_init_scale=None)
    with torch.no_grad():
        for mlp in heads.mag.values():
            mlp[-1].bias.fill_(50.0)  # raw = +50 -> exp would overflow the range
    out = heads(torch.zeros(3, 4))
    for name in ("T1", "T2", "T2star"):
        lo, hi = DEFAULT_RANGES[name]
        assert (out[name] <= hi * 1.0001).all() and (out[name] >= lo).all()
        assert torch.allclose(out[name], torch.full_like(out[name], hi), rtol=1e-3)
    assert torch.isfinite(out["A"]).all()


def test_heads_invalid_init_and_names():
    with pytest.raises(ValueError, match="inside range"):
        ParameterHeads(4, init={"T1": 10.0})
    with pytest.raises(ValueError, match="unknown"):
        ParameterHeads(4, init={"T3": 10.0})


def test_separate_phase_encoding_and_active_levels():
    model = MapINR(GRID, phase_grid=HashGridConfig(2, 2, 8, 2, 2.0, "torch"), init=INIT)
    assert model.heads.phase[0].in_features == 4
    x = _coords(40)
    out = model(x, b0_prior=torch.full((40,), 5.0))
    assert all(v.shape == (40,) for v in out.values())
    assert torch.allclose(out["B0"], torch.full((40,), 5.0), atol=0.1)
    model.set_active_levels(1)
    assert model.encoding.active_levels == 1 and model.phase_encoding.active_levels == 1
    assert (model.encoding(x)[:, 2:] == 0).all()


def test_map_inr_learns_t1_residual():
    torch.manual_seed(0)
    model = MapINR(GRID, init=INIT, seed=0, hidden=32, layers=2)
    x = _coords(500)
    target = 1000.0 + 600.0 * x[:, 0]  # T1 from 1000 to 1600 ms along axis 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = ((torch.log(model(x)["T1"]) - torch.log(target)) ** 2).mean()
        loss.backward()
        opt.step()
    err = (model(x)["T1"] / target - 1).abs().median()
    assert err < 0.02  # measured 0.5 % after 60 steps (starts at up to 37 %)


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_coil_inr_starts_at_prior(mode):
    coil = CoilINR(COIL_GRID, n_coils=4, prior_mode=mode)
    x = _coords(100)
    g = torch.Generator().manual_seed(3)
    prior = torch.complex(torch.randn(100, 4, generator=g), torch.randn(100, 4, generator=g))
    sens = coil(x, prior)
    assert sens.shape == (100, 4) and sens.dtype == torch.complex64
    assert (sens - prior).abs().max() < 1e-2 * prior.abs().max()
    assert not torch.equal(sens, prior)
    (sens.abs() ** 2).sum().backward()
    assert coil.mlp[-1].weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="shape"):
        coil(x, prior[:, :2])


def test_coil_inr_keep_rss_changes_profiles_not_their_magnitude():
    torch.manual_seed(0)
    coil = CoilINR(COIL_GRID, n_coils=3, out_init_scale=None, keep_rss=True, seed=0)  # large corrections
    x = _coords(100)
    g = torch.Generator().manual_seed(4)
    prior = torch.complex(torch.randn(100, 3, generator=g), torch.randn(100, 3, generator=g))
    sens = coil(x, prior)
    rss = lambda s: s.abs().square().sum(-1).sqrt()  # noqa: E731
    assert torch.allclose(rss(sens), rss(prior), rtol=1e-5)
    assert (sens - prior).abs().max() > 0.02 * prior.abs().max()  # the profiles did change
    free = CoilINR(COIL_GRID, n_coils=3, out_init_scale=None, keep_rss=False, seed=0)(x, prior)
    assert not torch.allclose(rss(free), rss(prior), rtol=1e-2)


def test_coil_inr_without_prior_fits_smooth_maps():
    torch.manual_seed(0)
    coil = CoilINR(COIL_GRID, n_coils=2, out_init_scale=None, seed=0)
    x = _coords(400)
    target = torch.stack([torch.exp(1j * 2.0 * x[:, 1]) * (1 - 0.5 * x[:, 0]),
                          torch.exp(-1j * x[:, 2]) * (0.5 + 0.5 * x[:, 0])], 1).to(torch.complex64)
    init = coil(x)
    assert init.abs().max() > 1e-3  # default init: not identically ~0
    opt = torch.optim.Adam(coil.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = (coil(x) - target).abs().pow(2).mean()
        loss.backward()
        opt.step()
    assert loss < 1e-2 * target.abs().pow(2).mean()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_map_inr_runs_on_cuda():
    model = MapINR(GRID, init=INIT).cuda()  # GRID is the pure-torch backend
    out = model(_coords(64).cuda(), b0_prior=torch.zeros(64, device="cuda"))
    out["T1"].sum().backward()
    assert out["T1"].is_cuda and model.encoding.table.grad.is_cuda


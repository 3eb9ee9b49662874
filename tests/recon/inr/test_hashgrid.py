"""Tests of the pure-PyTorch hash encoding (recon/inr/hashgrid.py) against a slow loop reference."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from qmapinr.recon.config import HashGridConfig
from qmapinr.recon.inr.hashgrid import (
    PRIMES,
    HashEncoding,
    TcnnEncoding,
    make_encoding,
    split_parameters,
    tcnn_available,
    voxel_coordinates,
)
from qmapinr.recon.inr.heads import MLP

torch.set_num_threads(1)

# 5 levels, cells 2, 4, 8, 16, 32; table 2^9 = 512 rows: levels 0-1 dense (27, 125 vertices), 2-4 hashed
SMALL = HashGridConfig(n_levels=5, n_features_per_level=2, log2_hashmap_size=9, base_resolution=2,
                       per_level_scale=2.0, implementation="torch")
TCNN_OK, TCNN_WHY = tcnn_available()


def _reference(enc: HashEncoding, x: torch.Tensor) -> torch.Tensor:
    """Per-point, per-level, per-corner loop with Python-int (uint32, as tiny-cuda-nn) hashing."""
    table = enc.table.detach().double()
    nf = enc.n_features_per_level
    d = x.shape[1]
    out = torch.zeros(x.shape[0], enc.n_levels * nf, dtype=torch.float64)
    offset = 0
    for lv, cells in enumerate(enc.cells):
        verts = cells + 1
        dense = verts**d <= enc.hashmap_size
        for p in range(x.shape[0]):
            pos = [float(x[p, k]) * cells for k in range(d)]
            base = [min(int(v // 1), cells - 1) for v in pos]
            frac = [pos[k] - base[k] for k in range(d)]
            for bits in itertools.product((0, 1), repeat=d):
                c = [base[k] + bits[k] for k in range(d)]
                if dense:
                    row = sum(c[k] * verts**k for k in range(d))
                else:
                    h = 0
                    for k in range(d):
                        h ^= (c[k] * PRIMES[k]) % 2**32
                    row = h & (enc.hashmap_size - 1)
                wt = 1.0
                for k in range(d):
                    wt *= frac[k] if bits[k] else 1.0 - frac[k]
                out[p, lv * nf:(lv + 1) * nf] += wt * table[offset + row]
        offset += verts**d if dense else enc.hashmap_size
    return out


def test_layout_shape_and_seeded_determinism():
    enc = HashEncoding(SMALL, seed=3)
    assert enc.cells == [2, 4, 8, 16, 32]
    assert enc.dense_levels == 2
    assert enc.table.shape == (27 + 125 + 3 * 512, 2)
    assert enc.table.abs().max() <= 1e-4 and enc.table.std() > 1e-5
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    y = enc(x)
    assert y.shape == (50, 10) and y.dtype == torch.float32
    assert torch.equal(y, HashEncoding(SMALL, seed=3)(x))
    assert not torch.equal(y, HashEncoding(SMALL, seed=4)(x))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("nf", [1, 2, 4])
def test_matches_loop_reference_including_boundaries(nf, fast):
    enc = HashEncoding(dataclasses.replace(SMALL, n_features_per_level=nf), seed=0)
    enc.fast_gather = fast
    with torch.no_grad():
        enc.table.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.rand(20, 3, generator=torch.Generator().manual_seed(2))
    x[0] = 0.0
    x[1] = 1.0
    x[2] = torch.tensor([0.5, 0.25, 1.0])  # exactly on vertices of every level
    x[3] = torch.tensor([1.5, -0.2, 0.3])  # outside: clamped
    got = enc(x).double()
    assert got.shape == (20, 5 * nf)
    ref = _reference(enc, x.clamp(0, 1))
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_two_dimensional_input_matches_reference():
    cfg = HashGridConfig(4, 2, 6, 2, 2.0, "torch")  # 2-D: levels with (cells+1)^2 <= 64 are dense
    enc = HashEncoding(cfg, n_input_dims=2, seed=0)
    assert enc.dense_levels == 2
    with torch.no_grad():
        enc.table.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.rand(10, 2, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(enc(x).double(), _reference(enc, x), atol=1e-5, rtol=1e-5)


def test_vertex_value_and_continuity():
    enc = HashEncoding(SMALL, seed=0)
    with torch.no_grad():
        enc.table.normal_(generator=torch.Generator().manual_seed(1))
    # at a vertex of level 0 (cells=2) the output of level 0 is exactly that vertex's table row
    x = torch.tensor([[0.5, 0.0, 1.0]])
    row = 1 + 0 * 3 + 2 * 9
    assert torch.allclose(enc(x)[0, :2], enc.table[row].detach(), atol=1e-7)
    # crossing cell boundaries continuously: tiny steps give tiny changes
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(5))
    for eps in (1e-3, 1e-4):
        dx = eps * torch.randn(200, 3, generator=torch.Generator().manual_seed(6))
        x2 = (x + dx).clamp(0, 1)
        change = (enc(x2) - enc(x)).abs().max()
        # Lipschitz bound: 3 axes * finest cells (32) * max table jump (2*max|table|) * |dx|_inf
        bound = 3 * 32 * 2 * enc.table.abs().max() * dx.abs().max()
        assert change <= bound and change > 0


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_touches_only_corner_rows(sparse, fast):
    enc = HashEncoding(SMALL, sparse_grad=sparse, seed=0)
    enc.fast_gather = fast
    x = torch.tensor([[0.31, 0.62, 0.17]])
    idx, w = enc.level_indices(x)
    enc(x).sum().backward()
    grad = enc.table.grad.to_dense() if sparse else enc.table.grad
    touched = torch.zeros(enc.table.shape[0], dtype=torch.bool)
    touched[idx.reshape(-1)] = True
    assert (grad[~touched] == 0).all()
    assert (grad[touched] != 0).any(dim=1).all()
    # d(sum)/d(row) = sum of its corner weights; every feature column sees the same
    expect = torch.zeros(enc.table.shape[0]).index_add_(0, idx.reshape(-1), w.reshape(-1))
    assert torch.allclose(grad[:, 0], expect) and torch.allclose(grad[:, 1], expect)


def test_sparse_dense_fast_slow_gradients_agree_and_split_parameters():
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(0))
    grads = []
    for sparse, fast in itertools.product((False, True), (False, True)):
        enc = HashEncoding(SMALL, sparse_grad=sparse, seed=0)
        enc.fast_gather = fast
        (enc(x) ** 2).sum().backward()
        grads.append(enc.table.grad.to_dense())
        sp, de = split_parameters(torch.nn.Sequential(enc, torch.nn.Linear(10, 1)))
        assert len(sp) == int(sparse) and len(de) == 2 + int(not sparse)
    for g in grads[1:]:
        assert torch.allclose(grads[0], g, atol=1e-12, rtol=1e-5)
    assert grads[0].abs().max() > 0


@pytest.mark.parametrize(("nf", "fast"), [(1, True), (2, True), (4, True), (2, False)])
def test_gradcheck_table_and_coordinates(nf, fast):
    cfg = HashGridConfig(3, nf, 6, 2, 2.0, "torch")  # level 0 dense (27 <= 64 rows), levels 1-2 hashed
    enc = HashEncoding(cfg, seed=0).double()
    enc.fast_gather = fast
    assert enc.dense_levels == 1
    x = torch.tensor([[0.13, 0.41, 0.77], [0.66, 0.09, 0.35]], dtype=torch.float64, requires_grad=True)

    def f(table, coords):
        return torch.func.functional_call(enc, {"table": table}, (coords,))

    table = enc.table.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (table, x), eps=1e-6, atol=1e-6, fast_mode=True)


def test_coordinate_gradients_fast_and_slow_agree():
    grads = []
    for fast in (True, False):
        enc = HashEncoding(SMALL, seed=0)
        enc.fast_gather = fast
        x = torch.rand(32, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        (enc(x) ** 2).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-12)


def test_dense_levels_collision_free_and_hashed_in_range():
    enc = HashEncoding(SMALL, seed=0)
    offsets = [0]
    for r in enc.level_rows:
        offsets.append(offsets[-1] + r)
    for lv, cells in enumerate(enc.cells):
        g = torch.arange(cells + 1, dtype=torch.float32) / cells
        verts = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        idx, w = enc.level_indices(verts)
        rows = idx[:, lv].reshape(-1)
        assert rows.min() >= offsets[lv] and rows.max() < offsets[lv + 1]
        if lv < enc.dense_levels:
            assert enc.level_rows[lv] == (cells + 1) ** 3
            # each vertex's own row (its weight-1 corner): distinct vertices -> distinct rows
            own = idx[:, lv].gather(0, w[:, lv].argmax(0, keepdim=True))
            assert torch.allclose(w[:, lv].max(0).values, torch.ones(()))
            assert torch.unique(own).numel() == (cells + 1) ** 3
        else:
            assert enc.level_rows[lv] == enc.hashmap_size


def test_active_levels_zeroes_inactive_levels():
    enc = HashEncoding(SMALL, seed=0)
    x = torch.rand(30, 3, generator=torch.Generator().manual_seed(0))
    full = enc(x)
    part = enc(x, active_levels=3)
    assert torch.allclose(part[:, :6], full[:, :6], rtol=1e-6, atol=1e-12)
    assert (part[:, 6:] == 0).all() and (full[:, 6:] != 0).any()
    enc.set_active_levels(1)
    assert (enc(x)[:, 2:] == 0).all()
    enc.set_active_levels(0)
    assert (enc(x) == 0).all()


def test_voxel_coordinates_anisotropic():
    c = voxel_coordinates((4, 8, 8), (5.0, 2.0, 2.0))  # z extent 20 mm, y/x 16 mm
    assert c.shape == (4, 8, 8, 3)
    assert c.min() > 0 and c.max() < 1
    assert torch.isclose(c[1, 0, 0, 0] - c[0, 0, 0, 0], torch.tensor(5.0 / 20))
    assert torch.isclose(c[0, 1, 0, 1] - c[0, 0, 0, 1], torch.tensor(2.0 / 20))
    assert c[..., 1].max() < 16 / 20


def test_make_encoding_dispatch():
    assert isinstance(make_encoding(SMALL), HashEncoding)
    auto = make_encoding(HashGridConfig(implementation="auto"))
    assert isinstance(auto, TcnnEncoding if TCNN_OK else HashEncoding)
    with pytest.raises(ValueError, match="implementation"):
        make_encoding(HashGridConfig(implementation="cuda"))
    if not TCNN_OK:
        with pytest.raises(RuntimeError, match="tiny-cuda-nn"):
            make_encoding(HashGridConfig(implementation="tcnn"))


def test_fits_smooth_function():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 3, generator=gen)
    xt = torch.rand(500, 3, generator=gen)

    def f(p):
        return (torch.sin(2 * torch.pi * p[:, 0]) * torch.cos(torch.pi * p[:, 1])
                + 0.5 * torch.sin(3 * p[:, 2]))

    enc = HashEncoding(HashGridConfig(5, 2, 10, 4, 1.5, "torch"), seed=0)  # 3 dense + 2 hashed levels
    assert enc.dense_levels == 3
    mlp = MLP(enc.n_output_dims, 1, hidden=32, layers=2)
    opt = torch.optim.Adam([*enc.parameters(), *mlp.parameters()], lr=1e-2)
    y = f(x)
    for _ in range(200):
        opt.zero_grad()
        loss = ((mlp(enc(x)).squeeze(-1) - y) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test_mse = ((mlp(enc(xt)).squeeze(-1) - f(xt)) ** 2).mean()
    assert loss < 1e-3 * y.var()  # seen points (measured 1.3e-4)
    assert test_mse < 2e-2 * y.var()  # held-out points (measured 6.6e-3)


@pytest.mark.skipif(not TCNN_OK, reason=f"tiny-cuda-nn backend unavailable: {TCNN_WHY}")
def test_tcnn_backend_matches_interface():
    cfg = HashGridConfig(4, 2, 12, 4, 1.5, "tcnn")
    enc = make_encoding(cfg)
    x = torch.rand(100, 3, device="cuda")
    y = enc(x)
    assert y.shape == (100, 8) and y.dtype == torch.float32
    enc.set_active_levels(2)
    assert (enc(x)[:, 4:] == 0).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_torch_encoding_runs_on_cuda():
    enc = HashEncoding(SMALL, seed=0)
    x = torch.rand(100, 3, generator=torch.Generator().manual_seed(0))
    cpu = enc(x)
    enc = enc.cuda()
    y = enc(x.cuda())
    y.sum().backward()
    assert torch.allclose(y.cpu(), cpu, atol=1e-6)
    assert enc.table.grad.is_cuda

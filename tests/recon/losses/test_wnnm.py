"""Tests of the WNNM regulariser, block matching and the WNNM proximal (denoising) step."""

from __future__ import annotations

import math

import pytest
import torch

from qmapinr.recon.losses.wnnm import (
    block_match,
    extract_groups,
    slices_to_volume,
    volume_to_slices,
    wnnm_loss,
    wnnm_prox_step,
    wnnm_weights,
)


def _piecewise_map(b: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    """T1-like map in ms: background with a ramp, a disc and a band (piecewise smooth), (b, h, w)."""
    zz, yy = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    disc = (((zz - 16) ** 2 + (yy - 14) ** 2) < 81).float()
    img = 1000.0 + 2.0 * zz + 300.0 * disc + 200.0 * (yy > 24).float()
    return img[None].repeat(b, 1, 1)


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


# (a) WNNM lowers the error to the clean map


def test_prox_step_denoises_piecewise_map():
    g = torch.Generator().manual_seed(0)
    clean = _piecewise_map()
    sigma = 40.0
    noisy = clean + sigma * torch.randn(clean.shape, generator=g)
    den = wnnm_prox_step(noisy, sigma)
    assert den.shape == noisy.shape
    assert _rmse(den, clean) < 0.7 * _rmse(noisy, clean)  # measured 0.56
    den2 = wnnm_prox_step(den, 0.5 * sigma)  # a second pass (re-matched) helps further
    assert _rmse(den2, clean) < _rmse(den, clean)


def test_prox_step_with_zero_threshold_is_identity():
    g = torch.Generator().manual_seed(11)
    x = 1000 + 50 * torch.randn(2, 2, 13, 17, generator=g)  # odd sizes: the border patches must be covered
    assert torch.allclose(wnnm_prox_step(x, 50.0, strength=0.0, stride=3), x, rtol=1e-6)


def test_gradient_steps_on_wnnm_loss_denoise():
    g = torch.Generator().manual_seed(1)
    clean = _piecewise_map()
    sigma = 40.0
    noisy = clean + sigma * torch.randn(clean.shape, generator=g)
    x = noisy.clone().requires_grad_(True)
    # Plain Adam, inline (torch.optim imports torch._dynamo: seconds on a loaded machine). Plain gradient
    # descent is unstable here: the weights reach 1/sqrt(eps), the regulariser is stiff; Adam is scale-free.
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    lr, b1, b2 = 5.0, 0.9, 0.999
    for t in range(1, 16):
        loss = 0.5 * ((x - noisy) / sigma).square().mean() + 0.1 * wnnm_loss(x, sigma)
        (grad,) = torch.autograd.grad(loss, x)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad.square()
        with torch.no_grad():
            x -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)
    assert _rmse(x.detach(), clean) < 0.8 * _rmse(noisy, clean)  # measured 0.57 (15 steps)


def test_joint_parameters_denoise_both():
    g = torch.Generator().manual_seed(2)
    t1 = _piecewise_map()
    phase = 0.002 * (t1 - 1000.0)  # same edges, rad
    clean = torch.stack([t1, phase], dim=1)  # (b, P=2, nz, ny)
    sig = torch.tensor([40.0, 0.08])
    noisy = clean + sig.view(1, 2, 1, 1) * torch.randn(clean.shape, generator=g)
    den = wnnm_prox_step(noisy, sig)
    for p in range(2):
        assert _rmse(den[:, p], clean[:, p]) < 0.7 * _rmse(noisy[:, p], clean[:, p])


# (b) value: zero for a constant map, larger for noisy ones, monotone in the noise level


def test_loss_zero_for_constant_map_and_positive_for_noisy():
    g = torch.Generator().manual_seed(3)
    const = torch.full((2, 16, 16), 1200.0)
    noisy = const + 10.0 * torch.randn(const.shape, generator=g)
    l_const = float(wnnm_loss(const, 10.0))
    l_noisy = float(wnnm_loss(noisy, 10.0))
    assert l_const < 1e-6
    assert l_noisy > 1.0


def test_loss_monotone_in_noise_level():
    g = torch.Generator().manual_seed(4)
    base = torch.full((2, 16, 16), 1000.0)
    unit = torch.randn(base.shape, generator=g)
    levels = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]  # ms
    # sigma_noise = 0: w_i = 1 / sqrt(s_i^2 + eps), each term s_i / sqrt(s_i^2 + eps) increases with s_i and
    # saturates at 1 per component (Np - 1 = 2 per centred group): a smooth rank count.
    vals = [float(wnnm_loss(base + s * unit, 0.0)) for s in levels]
    assert all(b > a for a, b in zip(vals, vals[1:], strict=False))
    assert 1.9 < vals[-1] <= 2.0
    # sigma_noise above all tested noise levels: every component is below the threshold, w = 1/sqrt(eps), and
    # the loss is the nuclear norm / sqrt(eps), proportional to the noise level.
    sub = [float(wnnm_loss(base + s * unit, 100.0)) for s in levels[:4]]
    assert all(b > a for a, b in zip(sub, sub[1:], strict=False))
    assert sub[3] / sub[0] == pytest.approx(30.0, rel=1e-3)


# (c) weights


def test_weights_hand_values():
    sv = torch.tensor([3.0, 1.0, 0.5])
    w = wnnm_weights(sv, noise_var=0.25, energy_factor=3, eps=1e-6)  # threshold 3 * 0.25 = 0.75
    expected = 1 / torch.sqrt(torch.tensor([9 - 0.75 + 1e-6, 1 - 0.75 + 1e-6, 1e-6]))
    assert torch.allclose(w, expected, rtol=1e-5)
    assert float(w[2]) == pytest.approx(1000.0, rel=1e-5)  # below the noise: the largest weight
    assert float(w[2]) == float(w.max())


def test_loss_hand_value_single_patch():
    # 5x5 slice of ones, one patch, n_similar=1, no centring, no scaling: the group is the 25-vector of ones,
    # sigma = 5; loss = 5 / sqrt(max(25 - sigma_n^2, 0) + eps).
    x = torch.ones(1, 5, 5)
    kw = dict(n_similar=1, center=False, scale=None)
    assert float(wnnm_loss(x, 3.0, **kw)) == pytest.approx(5.0 / math.sqrt(16 + 1e-6), rel=1e-5)
    assert float(wnnm_loss(x, 10.0, **kw)) == pytest.approx(5.0 / math.sqrt(1e-6), rel=1e-5)


def test_loss_invariant_to_map_units():
    g = torch.Generator().manual_seed(5)
    t1 = _piecewise_map(1, 16, 16) + 30.0 * torch.randn(1, 16, 16, generator=g)
    phase = 0.3 + 0.05 * torch.randn(1, 16, 16, generator=g)
    joint = torch.stack([t1, phase], dim=1)
    ref = float(wnnm_loss(joint, [30.0, 0.05]))
    rescaled = joint * torch.tensor([1e-3, 57.3]).view(1, 2, 1, 1)  # T1 in s, phase in degrees
    assert float(wnnm_loss(rescaled, [0.03, 0.05 * 57.3])) == pytest.approx(ref, rel=1e-4)
    # explicit scales equal to the medians give the same value as scale="median"
    med = joint.abs().transpose(0, 1).reshape(2, -1).median(dim=1).values
    assert float(wnnm_loss(joint, [30.0, 0.05], scale=med.tolist())) == pytest.approx(ref, rel=1e-5)


# (d) block matching


def test_block_matching_finds_exact_duplicates_in_periodic_image():
    g = torch.Generator().manual_seed(6)
    tile = torch.randn(3, 3, generator=g)
    img = tile.repeat(6, 6)[None, None]  # 18x18, period 3 in z and y (inside the +-3 window)
    bm = block_match(img, patch=5, window=7, n_similar=3, stride=2)
    assert bm.index.shape == (1, bm.ref_rows.numel(), 3)
    ref_lin = bm.ref_rows * bm.grid[1] + bm.ref_cols
    assert torch.equal(bm.index[0, :, 0], ref_lin)  # the reference comes first
    assert float(bm.dist[..., 1:].max()) < 1e-8  # every reference has two exact duplicates
    dz = torch.div(bm.index[0, :, 1:], bm.grid[1], rounding_mode="floor") - bm.ref_rows[:, None]
    dy = bm.index[0, :, 1:] % bm.grid[1] - bm.ref_cols[:, None]
    assert bool(((dz % 3 == 0) & (dy % 3 == 0) & ((dz != 0) | (dy != 0))).all())
    groups = extract_groups(img, bm.index, 5)
    assert torch.allclose(groups, groups[..., :1].expand_as(groups))


def test_block_matching_on_noise_has_positive_ascending_distances():
    g = torch.Generator().manual_seed(7)
    img = torch.randn(2, 1, 12, 20, generator=g)
    bm = block_match(img, patch=5, window=7, n_similar=4, stride=3)
    assert float(bm.dist[..., 0].abs().max()) == 0.0
    assert float(bm.dist[..., 1:].min()) > 0.0
    assert bool((bm.dist[..., 1:] >= bm.dist[..., :-1]).all())
    hp, wp = bm.grid
    assert int(bm.index.min()) >= 0 and int(bm.index.max()) < hp * wp
    # brute-force check of one reference: its 2nd-best match within the window
    k = 5
    r0, c0 = int(bm.ref_rows[k]), int(bm.ref_cols[k])
    ref = img[0, 0, r0:r0 + 5, c0:c0 + 5]
    best = min(float((img[0, 0, r:r + 5, c:c + 5] - ref).square().sum())
               for r in range(max(0, r0 - 3), min(hp, r0 + 4)) for c in range(max(0, c0 - 3), min(wp, c0 + 4))
               if (r, c) != (r0, c0))
    assert float(bm.dist[0, k, 1]) == pytest.approx(best, rel=1e-5)


def test_reference_grid_covers_the_slice():
    bm = block_match(torch.zeros(1, 1, 11, 14), patch=5, stride=4)
    assert bm.ref_rows.max() == 6 and bm.ref_cols.max() == 9  # last patch rows/cols always included


# (e) gradient


def test_gradient_flows_to_maps_and_is_zero_for_constant_maps():
    g = torch.Generator().manual_seed(8)
    x = (_piecewise_map(2, 16, 20) + 20.0 * torch.randn(2, 16, 20, generator=g)).requires_grad_(True)
    wnnm_loss(x, 20.0).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert float(x.grad.abs().max()) > 0.0
    c = torch.full((2, 16, 20), 800.0, requires_grad=True)
    wnnm_loss(c, 20.0).backward()
    assert float(c.grad.abs().max()) == 0.0


def test_joint_gradient_reaches_every_parameter():
    g = torch.Generator().manual_seed(9)
    t1 = 1000 + 30 * torch.randn(2, 12, 12, generator=g)
    phase = 0.2 * torch.randn(2, 12, 12, generator=g)
    x = torch.stack([t1, phase], dim=1).requires_grad_(True)
    wnnm_loss(x, [30.0, 0.2]).backward()
    assert all(float(x.grad[:, p].abs().max()) > 0 for p in range(2))


# shapes and volumes


def test_volume_round_trip_and_slicewise_loss():
    g = torch.Generator().manual_seed(10)
    vol = 1000 + 20 * torch.randn(8, 10, 3, generator=g)  # (nz, ny, nx)
    sl = volume_to_slices(vol)
    assert sl.shape == (3, 8, 10)
    assert torch.equal(slices_to_volume(sl), vol)
    assert torch.equal(sl[1], vol[:, :, 1])
    joint = torch.stack([vol, vol / 1000], dim=0)  # (P, nz, ny, nx)
    assert volume_to_slices(joint).shape == (3, 2, 8, 10)
    assert torch.equal(slices_to_volume(volume_to_slices(joint)), joint)
    assert float(wnnm_loss(sl, 20.0)) > 0


def test_invalid_inputs():
    with pytest.raises(ValueError):
        wnnm_loss(torch.ones(2, 4, 4), 1.0)  # slice smaller than the patch
    with pytest.raises(ValueError):
        wnnm_loss(torch.ones(8, 8), 1.0)  # no batch dimension
    with pytest.raises(ValueError):
        wnnm_loss(torch.ones(1, 2, 8, 8), [1.0, 2.0, 3.0])  # 3 sigmas for 2 parameters


def test_mask_keeps_background_out_of_the_patch_groups():
    """Only patches inside the mask count: no gradient reaches pixels outside it, a full mask changes nothing."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 12, 14, generator=gen, requires_grad=True)
    mask = torch.zeros(2, 12, 14, dtype=torch.bool)
    mask[:, 2:10, 3:12] = True
    wnnm_loss(x, 0.01, mask=mask).backward()
    grad = x.grad.abs().sum(1)
    assert float(grad[~mask].max()) == 0.0 and float(grad[mask].max()) > 0.0
    full = torch.ones_like(mask)
    x = x.detach()
    assert float(wnnm_loss(x, 0.01, mask=full)) == pytest.approx(float(wnnm_loss(x, 0.01)), rel=1e-6)
    background = x.clone()
    background[:, :, ~mask[0]] = 1e3  # arbitrary values where there is no signal leave the loss unchanged
    assert float(wnnm_loss(background, 0.01, mask=mask, scale=[1.0, 1.0])) == pytest.approx(
        float(wnnm_loss(x, 0.01, mask=mask, scale=[1.0, 1.0])), rel=1e-6)

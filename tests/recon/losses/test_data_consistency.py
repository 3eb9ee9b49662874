"""Tests of the complex-k-space data-consistency losses."""

from __future__ import annotations

import math

import torch

from qmapinr.recon.losses.data_consistency import l1_complex, l2_complex


def test_l1_matches_hand_value():
    pred = torch.tensor([[1 + 1j, 2 + 0j], [0 + 0j, 3 + 4j]], dtype=torch.complex64)
    target = torch.tensor([[0 + 0j, 2 + 0j], [0 + 2j, 0 + 0j]], dtype=torch.complex64)
    # |d| = sqrt(2), 0, 2, 5
    expected = (math.sqrt(2.0) + 0.0 + 2.0 + 5.0) / 4.0
    assert abs(float(l1_complex(pred, target)) - expected) < 1e-6
    # weighted: sum(w |d|) / N with per-column weights (1, 3)
    w = torch.tensor([1.0, 3.0])
    expected_w = (math.sqrt(2.0) * 1 + 0.0 * 3 + 2.0 * 1 + 5.0 * 3) / 4.0
    assert abs(float(l1_complex(pred, target, weight=w)) - expected_w) < 1e-6


def test_l2_matches_hand_value():
    pred = torch.tensor([1 + 1j, 0 + 0j, 3 + 4j], dtype=torch.complex64)
    target = torch.zeros(3, dtype=torch.complex64)
    assert abs(float(l2_complex(pred, target)) - (2.0 + 0.0 + 25.0) / 3.0) < 1e-5


def test_l1_zero_residual_has_zero_value_and_finite_gradient():
    g = torch.Generator().manual_seed(1)
    shape = (2, 3, 2, 5)  # (bx, C, nte, nlines)
    target = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    pred = target.clone().requires_grad_(True)
    loss = l1_complex(pred, target)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(torch.view_as_real(pred.grad)).all()
    assert float(pred.grad.abs().max()) == 0.0


def test_l1_gradient_is_unit_direction_away_from_zero():
    # d/d(pred) of |d| is d/|d| (torch's conjugate-Wirtinger convention), scaled by 1/N for the mean.
    pred = torch.tensor([3 + 4j, -1 + 0j], dtype=torch.complex64, requires_grad=True)
    l1_complex(pred, torch.zeros(2, dtype=torch.complex64)).backward()
    expected = torch.tensor([(3 + 4j) / 5, -1 + 0j], dtype=torch.complex64) / 2
    assert torch.allclose(pred.grad, expected, atol=1e-6)


def test_real_inputs_and_broadcasting():
    pred = torch.tensor([[1.0, -2.0]])
    target = torch.zeros(3, 2)
    assert abs(float(l1_complex(pred, target)) - 1.5) < 1e-6
    assert abs(float(l2_complex(pred, target)) - 2.5) < 1e-6

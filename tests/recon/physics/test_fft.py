"""Centred unitary FFTs: inverse pair, Parseval, centre convention, torch == NumPy."""

from __future__ import annotations

import numpy as np
import torch

from qmapinr.recon.physics.fft import fftc, fftc_np, ifftc, ifftc_np


def _x(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                         torch.randn(shape, generator=g, dtype=torch.float64))


def test_inverse_pair_and_parseval_for_even_and_odd_sizes():
    for shape in [(6, 8), (5, 7), (4, 9)]:
        x = _x(shape)
        k = fftc(x, dims=(-2, -1))
        assert torch.allclose(ifftc(k, dims=(-2, -1)), x, atol=1e-12)
        assert abs(float(k.norm()) - float(x.norm())) < 1e-10 * float(x.norm())


def test_centre_convention_constant_image_maps_to_k_centre():
    x = torch.ones(6, 8, dtype=torch.complex128)
    k = fftc(x, dims=(-2, -1))
    peak = np.unravel_index(int(k.abs().argmax()), k.shape)
    assert tuple(int(p) for p in peak) == (3, 4)  # n // 2, as the ISMRMRD centre sample


def test_torch_and_numpy_versions_agree():
    x = _x((3, 6, 5), 1)
    assert np.allclose(fftc(x, dims=(0, 1, 2)).numpy(), fftc_np(x.numpy(), axes=(0, 1, 2)))
    assert np.allclose(ifftc(x, dims=(1, 2)).numpy(), ifftc_np(x.numpy(), axes=(1, 2)))

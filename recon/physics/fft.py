"""Centred, unitary FFTs (norm="ortho", DC at index n // 2) used everywhere in the project.

With the unitary transform, complex Gaussian noise of standard deviation sigma per k-space sample has the same
sigma per image voxel, which is how the simulator defines SNR.
"""

from __future__ import annotations

import numpy as np
import torch

from qmapinr.recon.kspace import KSpace6D


def fftc(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Centred unitary FFT of a complex tensor along ``dims`` (image -> k-space)."""
    x = torch.fft.ifftshift(x, dim=dims)
    x = torch.fft.fftn(x, dim=dims, norm="ortho")
    return torch.fft.fftshift(x, dim=dims)


def ifftc(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Centred unitary inverse FFT along ``dims`` (k-space -> image)."""
    x = torch.fft.ifftshift(x, dim=dims)
    x = torch.fft.ifftn(x, dim=dims, norm="ortho")
    return torch.fft.fftshift(x, dim=dims)


def fftc_np(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """NumPy twin of :func:`fftc` (same convention), complex64 kept."""
    return fftc(torch.from_numpy(np.ascontiguousarray(x)), axes).numpy()


def ifftc_np(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """NumPy twin of :func:`ifftc`."""
    return ifftc(torch.from_numpy(np.ascontiguousarray(x)), axes).numpy()


def readout_ifft(kspace: KSpace6D, device: torch.device | str = "cpu") -> torch.Tensor:
    """complex64 ``(nx, C, nte, nlines)``: centred unitary IFFT along kx, x moved to the front (hybrid space)."""
    k = torch.from_numpy(np.ascontiguousarray(kspace.data, dtype=np.complex64))
    return ifftc(k, dims=(-1,)).permute(3, 0, 1, 2).contiguous().to(device)

"""Centred, unitary FFTs (norm="ortho", DC at index n // 2) used everywhere in the project.

With the unitary transform, complex Gaussian noise of standard deviation sigma per k-space sample has the same
sigma per image voxel, which is how the simulator defines SNR.

No ``fftshift`` rolls: with ``c = N // 2`` the centred transform is a modulated plain FFT,

    fftc(x)[k] = e^{-2 pi i c^2 / N} e^{2 pi i c k / N} FFT(e^{2 pi i c n / N} x)[k]

(and the conjugate phases for the inverse), which holds for odd ``N`` too; for even ``N`` the modulations are
``(-1)^n`` and the global factor ``(-1)^(N/2)``, real. The modulation tensors are small (the transformed dims
only) and cached per (sizes, device). Operators that gather sampled lines fold the shifts into their indices
and a per-line phase instead (:func:`centred_line_phase`, used by :mod:`qmapinr.recon.physics.forward`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from qmapinr.recon.kspace import KSpace6D


@functools.lru_cache(maxsize=64)
def _modulation(sizes: tuple[int, ...], inverse: bool, device: str, double: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) modulation over the transformed dims, shape ``sizes``; real when all sizes are even;
    float64/complex128 for ``double`` inputs, else float32/complex64."""
    s = -1.0 if inverse else 1.0
    m_in = np.ones((), dtype=np.complex128)
    m_out = np.ones((), dtype=np.complex128)
    for n in sizes:
        c = n // 2
        ramp = np.exp(s * 2j * np.pi * c * np.arange(n) / n)
        m_in = np.multiply.outer(m_in, ramp)
        m_out = np.multiply.outer(m_out, ramp) * np.exp(-s * 2j * np.pi * c * c / n)
    if all(n % 2 == 0 for n in sizes):
        m_in, m_out = m_in.real, m_out.real
        dt = np.float64 if double else np.float32
    else:
        dt = np.complex128 if double else np.complex64
    return (torch.from_numpy(m_in.astype(dt)).to(device), torch.from_numpy(m_out.astype(dt)).to(device))


def _centred(x: torch.Tensor, dims: tuple[int, ...], inverse: bool) -> torch.Tensor:
    dims = tuple(sorted(d % x.dim() for d in dims))
    if not x.is_complex():
        x = x.to(torch.complex64)
    double = x.dtype == torch.complex128
    m_in, m_out = _modulation(tuple(x.shape[d] for d in dims), inverse, str(x.device), double)
    view = [1] * x.dim()
    for d in dims:
        view[d] = x.shape[d]
    if dims != tuple(range(dims[0], dims[0] + len(dims))):  # non-adjacent dims: spread the modulation out
        m_in, m_out = m_in.reshape(view), m_out.reshape(view)
    else:
        m_in, m_out = m_in.reshape(view[dims[0]:]), m_out.reshape(view[dims[0]:])
    fn = torch.fft.ifftn if inverse else torch.fft.fftn
    return fn(x * m_in, dim=dims, norm="ortho") * m_out


def fftc(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Centred unitary FFT of a complex tensor along ``dims`` (image -> k-space)."""
    return _centred(x, dims, inverse=False)


def ifftc(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Centred unitary inverse FFT along ``dims`` (k-space -> image)."""
    return _centred(x, dims, inverse=True)


def centred_line_phase(k: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred-FFT samples from plain-FFT samples along one dim of size ``n``: ``fftc(x)[k] = p * FFT(x)[j]``.

    Returns the plain index ``j = (k - n//2) mod n`` (int64, like ``k``) and the complex128 phase
    ``p = e^{2 pi i (n//2) j / n}`` (``(-1)^j`` for even ``n``): the input ``ifftshift`` becomes this phase, the
    output ``fftshift`` the index change, so a line gather needs neither roll nor modulation of the volume.
    """
    c = n // 2
    j = (k - c) % n
    phase = torch.exp(2j * math.pi * c * j.to(torch.float64) / n)
    return j, phase


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

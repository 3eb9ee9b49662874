"""A tiny, deterministic two-compartment test object sampled through the exact physics forward model.

For unit tests and smoke runs of the baselines only (the project's simulator lives in ``recon/sim``): an
ellipsoid with an inner ellipsoid of different (T1, T2, T2*), smooth Phase0 and B0 ramps, smooth complex coil
maps around the object (varying in x, y and z), and a per-tau variable-density random (ky, kz) pattern whose
lines are spread over random readout indices n. K-space comes from
:class:`qmapinr.recon.physics.forward.ExactForward` (one FFT per coil, echo, tau, n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qmapinr.recon.kspace import Geometry, KSpace6D, SequenceParams
from qmapinr.recon.physics.fft import fftc
from qmapinr.recon.physics.forward import ExactForward

TINY_SEQ = SequenceParams(tr_ms=15.0, te_ms=(3.0, 8.0, 13.0), flip_deg=10.0, tau_ms=(0.0, 30.0, 60.0, 90.0),
                          nseg=24)
"""Default sequence of the tiny object: 4 T2-preps x 24 readouts x 3 echoes."""


@dataclass
class TinyDataset:
    """K-space and ground truth; maps float64 ``(nz, ny, nx)``, sens complex64 ``(C, nz, ny, nx)``."""

    kspace: KSpace6D
    maps: dict[str, np.ndarray]
    sens: np.ndarray
    mask: np.ndarray  # bool (nz, ny, nx) object support
    compartment: np.ndarray  # bool (nz, ny, nx) inner ellipsoid (T1 1400, T2 110, T2* 60 ms; else 800/70/45)


def smooth_coils(shape_zyx: tuple[int, int, int], ncoils: int) -> np.ndarray:
    """complex64 ``(C, nz, ny, nx)`` Gaussian-profile coils on a ring around the object, alternating in z."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape_zyx), indexing="ij")
    out = []
    for i in range(ncoils):
        a = 2 * np.pi * i / ncoils
        d2 = (x - 1.3 * np.cos(a)) ** 2 + (y - 1.3 * np.sin(a)) ** 2 + (z - 0.8 * (-1) ** i) ** 2
        mag = np.exp(-d2 / 2.0)
        out.append(mag * np.exp(1j * (0.5 * a + 0.4 * x * np.sin(a) + 0.3 * z * np.cos(a))))
    return np.stack(out).astype(np.complex64)


def vd_lines(ny: int, nz: int, seq: SequenceParams, acceleration: float,
             rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per tau ``round(ny nz / R)`` distinct (ky, kz) drawn with a Gaussian density, each at a random n."""
    ky, kz = np.meshgrid(np.arange(ny), np.arange(nz))
    d = ((ky - ny // 2) / (ny / 2)) ** 2 + ((kz - nz // 2) / (nz / 2)) ** 2
    p = np.exp(-d / 0.3).ravel()
    p /= p.sum()
    nper = int(round(ny * nz / acceleration))
    cols = []
    for t in range(seq.ntau):
        sel = rng.choice(ny * nz, size=nper, replace=False, p=p)
        cols.append(np.stack([sel % ny, sel // ny, rng.integers(0, seq.nseg, size=nper), np.full(nper, t)]))
    ky_l, kz_l, seg_l, tau_l = np.concatenate(cols, axis=1)
    return ky_l, kz_l, seg_l, tau_l


def tiny_dataset(matrix: tuple[int, int, int] = (16, 14, 8), ncoils: int = 4, acceleration: float = 2.0,
                 seq: SequenceParams = TINY_SEQ, noise_sigma: float = 0.0, seed: int = 0) -> TinyDataset:
    """Noiseless (or ``noise_sigma`` complex Gaussian per sample) tiny data set; ``matrix`` = (nx, ny, nz)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = matrix
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (nz, ny, nx)), indexing="ij")
    obj = (x / 0.85) ** 2 + (y / 0.85) ** 2 + (z / 0.85) ** 2 < 1
    inner = ((x - 0.2) / 0.3) ** 2 + ((y + 0.1) / 0.35) ** 2 < 1
    maps = {"A": np.where(obj, 1.0, 0.0), "T1": np.where(inner, 1400.0, 800.0),
            "T2": np.where(inner, 110.0, 70.0),
            "T2star": np.where(inner, 60.0, 45.0), "Phase0": 0.3 + 0.2 * x, "B0": 15.0 * y}
    sens = smooth_coils((nz, ny, nx), ncoils)
    ky_l, kz_l, seg_l, tau_l = vd_lines(ny, nz, seq, acceleration, rng)
    fwd = ExactForward(seq, ky_l, kz_l, seg_l, tau_l, (nz, ny))
    tm = {k: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, 2, 0))).float() for k, v in maps.items()}
    st = torch.from_numpy(np.ascontiguousarray(np.moveaxis(sens, 3, 0)))  # (nx, C, nz, ny)
    with torch.no_grad():
        hyb = fwd(tm, st)  # (nx, C, nte, nlines)
    k = fftc(hyb, dims=(0,)).permute(1, 2, 3, 0).numpy().astype(np.complex64)
    if noise_sigma > 0:
        noise = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
        k = k + (noise_sigma * noise).astype(k.dtype)
    geo = Geometry(matrix=(nx, ny, nz), fov_mm=(float(nx), float(ny), 4.0 * nz))
    ks = KSpace6D(data=k, ky=ky_l, kz=kz_l, seg=seg_l, tau=tau_l, seq=seq, geometry=geo)
    return TinyDataset(kspace=ks, maps=maps, sens=sens, mask=obj, compartment=obj & inner)

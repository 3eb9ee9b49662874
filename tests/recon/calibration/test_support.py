"""Low-resolution subspace images from the k-space centre (recon/calibration/support.py)."""

import math

import numpy as np
import pytest
import torch
from synthetic import tiny_dataset  # tests/helpers

from qmapinr.recon.calibration.support import coil_combine, determined_locations, lowres_subspace_images
from qmapinr.recon.physics.dictionary import default_dictionary
from qmapinr.recon.physics.fft import ifftc, readout_ifft
from qmapinr.recon.sim.simulate import SimulationConfig, simulate


def _reference(hybrid, kspace, basis, width=0.25, ridge=1e-3):
    """The straightforward computation: dense normal equations per location, broadcast to every x, coil and
    echo, solved in complex128 (the implementation before the per-location solve)."""
    nx, ny, nz = kspace.geometry.matrix
    k = basis.shape[-1]
    ky, kz = torch.as_tensor(kspace.ky), torch.as_tensor(kspace.kz)
    dy = (ky - ny // 2).float() / (ny * width)
    dz = (kz - nz // 2).float() / (nz * width)
    inside = dy**2 + dz**2 <= 1.0
    loc = (kz * ny + ky)[inside]
    atoms = basis[torch.as_tensor(kspace.tau)[inside], torch.as_tensor(kspace.seg)[inside]].double()
    ys = hybrid[..., inside].to(torch.complex128)
    gram = torch.zeros(nz * ny, k, k, dtype=torch.float64).index_add_(0, loc, atoms[:, :, None] * atoms[:, None, :])
    rhs = torch.zeros(ys.shape[:-1] + (nz * ny, k), dtype=torch.complex128)
    rhs.index_add_(-2, loc, ys[..., None] * atoms.to(ys.dtype))
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12)
    reg = gram + (ridge * trace / k)[:, None, None] * torch.eye(k, dtype=torch.float64)
    sampled = torch.linalg.matrix_rank(gram, hermitian=True) >= k
    coef = torch.linalg.solve(reg.to(torch.complex128), rhs[..., None]).squeeze(-1) * sampled[:, None]
    gy = (torch.arange(ny) - ny // 2).double() / (ny * width)
    gz = (torch.arange(nz) - nz // 2).double() / (nz * width)
    r = torch.sqrt(gz[:, None] ** 2 + gy[None, :] ** 2).clamp(max=1.0)
    coef = coef * (0.5 + 0.5 * torch.cos(math.pi * r)).flatten()[:, None]
    return ifftc(coef.movedim(-1, -2).unflatten(-1, (nz, ny)), dims=(-2, -1)).to(torch.complex64)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    ds = tiny_dataset(matrix=(12, 16, 8), ncoils=3, acceleration=1.5, seed=2)
    basis, _, _ = default_dictionary(ds.kspace.seq).svd_basis(3)
    return ds, readout_ifft(ds.kspace), torch.from_numpy(basis)


def test_per_location_solve_matches_broadcast_solve(tiny):
    ds, hybrid, basis = tiny
    ref = _reference(hybrid, ds.kspace, basis)
    assert float(ref.abs().max()) > 0
    for bx in (5, 12):  # batched over x or not
        fast = lowres_subspace_images(hybrid, ds.kspace, basis, batch_x=bx)
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_coil_combined_output_matches_combining_afterwards(tiny):
    ds, hybrid, basis = tiny
    sens = torch.from_numpy(ds.sens)
    per_coil = lowres_subspace_images(hybrid, ds.kspace, basis)
    comb = lowres_subspace_images(hybrid, ds.kspace, basis, sens=sens, batch_x=5)
    torch.testing.assert_close(comb, coil_combine(per_coil, sens), rtol=1e-4, atol=1e-6)


def test_prior_fits_locations_with_fewer_samples_than_rank(tiny):
    """One sample per location (rank 1 < K): the exact-fit rule drops everything, the prior keeps the image."""
    ds, hybrid, basis = tiny
    ks = ds.kspace
    _, first = np.unique(np.asarray(ks.kz) * 64 + np.asarray(ks.ky), return_index=True)  # one line per location
    sub = type(ks)(data=ks.data[:, :, first], ky=ks.ky[first], kz=ks.kz[first], seg=ks.seg[first],
                   tau=ks.tau[first], seq=ks.seq, geometry=ks.geometry)
    hy = readout_ifft(sub)
    exact = lowres_subspace_images(hy, sub, basis)
    assert float(exact.abs().max()) == 0.0
    prior = torch.tensor([1e-3, 1e-1, 1.0])
    img = lowres_subspace_images(hy, sub, basis, prior=prior, min_rank=1, sens=torch.from_numpy(ds.sens))
    mag = img.abs().pow(2).sum((1, 2)).sqrt().permute(1, 2, 0).numpy()  # (nz, ny, nx)
    assert np.isfinite(mag).all()
    # the image is brighter inside the object than outside
    assert np.median(mag[ds.mask]) > 3 * np.median(mag[~ds.mask])


def test_determined_centre_needs_the_calibration_block_not_scattered_locations():
    """With the 3x3 centre every centre location is determined; without it (calibration-free, 16x64x64, R 4) some
    scattered locations are, but not the centre, so the initial maps take the ridge-prior fit over all of them."""
    out = {}
    for calib in ((3, 3), (0, 0)):
        ks, _ = simulate(SimulationConfig(shape=(16, 64, 64), ncoils=1, R=4, snr=None, calib=calib))
        basis = torch.from_numpy(default_dictionary(ks.seq, n_t1=20, n_t2=12).svd_basis(4)[0])
        out[calib] = determined_locations(ks, basis)
    assert out[(3, 3)][2] and out[(3, 3)][0] >= 9
    determined, sampled, centre = out[(0, 0)]
    assert determined > 0 and not centre and sampled > determined

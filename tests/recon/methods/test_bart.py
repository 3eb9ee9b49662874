"""BART peer (recon/baselines/bart.py): .cfl I/O without BART, the real CLI when it is installed."""

import shutil
import subprocess

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from synthetic import tiny_dataset  # tests/helpers

from qmapinr.recon.kspace import SequenceParams
from qmapinr.recon.methods.bart import (
    BartConfig,
    bart_available,
    bart_fft_sign,
    bart_kspace,
    bart_recon,
    bart_subspace_recon,
    read_cfl,
    write_cfl,
)
from qmapinr.recon.physics.dictionary import default_dictionary
from qmapinr.recon.physics.fft import fftc_np, readout_ifft
from qmapinr.recon.physics.sense import SenseSubspaceOp

needs_bart = pytest.mark.skipif(shutil.which("bart") is None,
                                reason="BART CLI not installed (apt-get install bart)")
SEQ = SequenceParams(tr_ms=15.0, te_ms=(3.0, 8.0), flip_deg=10.0, tau_ms=(0.0, 40.0, 80.0), nseg=16)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return tiny_dataset(matrix=(16, 14, 8), ncoils=4, acceleration=1.5, seq=SEQ, seed=1)


@pytest.mark.parametrize("shape", [(3,), (4, 1, 5), (2, 3, 1, 1, 1, 7, 1, 1, 1, 1, 2), (2,) * 16])
def test_cfl_roundtrip(tmp_path, shape):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    write_cfl(tmp_path / "a", arr)
    dims = (tmp_path / "a.hdr").read_text().splitlines()[1].split()
    assert len(dims) == 16 and [int(d) for d in dims[: len(shape)]] == list(shape)
    back = read_cfl(tmp_path / "a")
    assert back.dtype == np.complex64 and back.shape == shape
    np.testing.assert_array_equal(back, arr)


def test_cfl_conventions(tmp_path):
    arr = np.arange(6, dtype=np.complex64).reshape(2, 3) * (1 + 2j)
    write_cfl(tmp_path / "b", arr[..., None, None])  # trailing singletons are dropped on reading
    assert read_cfl(tmp_path / "b").shape == (2, 3)
    raw = np.fromfile(tmp_path / "b.cfl", dtype=np.complex64)
    np.testing.assert_array_equal(raw, arr.ravel(order="F"))  # column-major: dim 0 fastest
    (tmp_path / "c.hdr").write_text("# Dimensions\n2 3 1\n# Command\nhand written\n")
    raw.tofile(tmp_path / "c.cfl")
    np.testing.assert_array_equal(read_cfl(tmp_path / "c"), arr)
    (tmp_path / "d.hdr").write_text("# Dimensions\n4 3\n")
    raw.tofile(tmp_path / "d.cfl")
    with pytest.raises(ValueError, match="header says"):
        read_cfl(tmp_path / "d")
    with pytest.raises(ValueError):
        write_cfl(tmp_path / "e", np.zeros((1,) * 17))


def test_bart_kspace_layout(tiny):
    ks = tiny.kspace
    bk = bart_kspace(ks)
    nx, ny, nz = ks.geometry.matrix
    assert bk.shape == (nx, ny, nz, ks.ncoils, 1, SEQ.ntau * SEQ.nseg, 1, 1, 1, 1, SEQ.nte)
    dense = ks.dense().reshape(ks.ncoils, SEQ.nte, -1, nz, ny, nx)  # (C, E, T, z, y, x), T = tau * nseg + n
    expected = np.transpose(dense, (5, 4, 3, 0, 2, 1))
    np.testing.assert_array_equal(bk[:, :, :, :, 0, :, 0, 0, 0, 0, :], expected)
    with pytest.raises(MemoryError):
        bart_kspace(ks, max_bytes=1e3)


def test_bart_availability_flag():
    assert bart_available() == (shutil.which("bart") is not None)


@needs_bart
def test_pics_sign_convention(tmp_path):
    """The global sign bart_fft_sign corrects, checked against pics itself on fully sampled data."""
    rng = np.random.default_rng(1)
    for shape in [(8, 6, 4), (8, 8, 4)]:
        x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        s = (rng.standard_normal(shape + (2,)) + 1j * rng.standard_normal(shape + (2,))).astype(np.complex64)
        write_cfl(tmp_path / "k", fftc_np(x[..., None] * s, (0, 1, 2)))
        write_cfl(tmp_path / "s", s)
        subprocess.run(["bart", "pics", "-S", "-l2", "-r", "0", "-i", "30", "k", "s", "o"], cwd=tmp_path,
                       check=True, capture_output=True)
        o = read_cfl(tmp_path / "o").reshape(shape)
        ratio = np.vdot(x, o) / np.vdot(x, x)
        np.testing.assert_allclose(ratio, bart_fft_sign(shape), atol=1e-2)


@needs_bart
def test_bart_subspace_recon_fits_the_data(tiny):
    basis, _, _ = default_dictionary(SEQ).svd_basis(4)
    coeff = bart_subspace_recon(tiny.kspace, basis, 4, reg="", pics_args="-l2 -r 0.0001", iters=30,
                                sens=tiny.sens)
    assert coeff.shape == (SEQ.nte, 4, 8, 14, 16) and coeff.dtype == np.complex64
    sens = torch.from_numpy(np.ascontiguousarray(np.transpose(tiny.sens, (3, 0, 1, 2))))
    op = SenseSubspaceOp(torch.from_numpy(basis), tiny.kspace, sens)
    y = readout_ifft(tiny.kspace)
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(coeff, (4, 0, 1, 2, 3))))
    assert float((op.forward(x) - y).norm() / y.norm()) < 0.1  # same model, same sign as ours


@needs_bart
@pytest.mark.slow
def test_bart_recon_with_ecalib_and_with_project_maps(tiny):
    # BART's own pipeline (calibration data -> ecalib -> pics with TV by ADMM): runs and returns sane maps.
    # Its accuracy on this tiny, noiseless object is modest (slow ADMM convergence): only sanity is asserted.
    for calib_data in ("avg", "contrast"):
        qm = bart_recon(tiny.kspace, BartConfig(rank=4, iters=8, calib_data=calib_data))
        assert qm.info["method"] == "bart-pics-subspace" and qm.mask.any()
        assert all(np.isfinite(m).all() and m.shape == (8, 14, 16) for m in qm.maps.values())
    # With the project's coil maps and Tikhonov/CG, pics + matching recovers T1.
    cfg = BartConfig(rank=4, iters=30, reg="", pics_args="-l2 -r 0.0001", coil_maps="qmapinr")
    qm2 = bart_recon(tiny.kspace, cfg)
    interior = binary_erosion(tiny.mask, iterations=1)
    rel = np.abs(qm2.maps["T1"][interior] / tiny.maps["T1"][interior] - 1)
    assert np.median(rel) < 0.1

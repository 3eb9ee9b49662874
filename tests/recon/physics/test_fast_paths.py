"""Fast paths vs the straightforward ones (float32 tolerance): roll-free centred FFT, flat line gather."""

from __future__ import annotations

import pytest
import torch

from qmapinr.recon.kspace import SequenceParams
from qmapinr.recon.physics.fft import centred_line_phase, fftc, ifftc
from qmapinr.recon.physics.forward import LineSubspaceOp, qn_basis, structured_basis

SEQ = SequenceParams(tr_ms=20.0, te_ms=(3.7, 9.4), flip_deg=4.0, tau_ms=(0.0, 30.0, 60.0), nseg=16)


def _rolled(x: torch.Tensor, dims: tuple[int, ...], inverse: bool) -> torch.Tensor:
    """The textbook centred FFT: fftshift(fftn(ifftshift(x)))."""
    fn = torch.fft.ifftn if inverse else torch.fft.fftn
    return torch.fft.fftshift(fn(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="ortho"), dim=dims)


@pytest.mark.parametrize("shape,dims", [((3, 8, 6), (-2, -1)), ((2, 7, 5, 4), (-3, -2, -1)), ((5, 6, 9), (0, 2)),
                                        ((4, 9), (-1,)), ((6, 5, 3), (0,))])
def test_modulated_fft_equals_rolled_fft(shape, dims):
    x = torch.randn(shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    for inverse, fn in ((False, fftc), (True, ifftc)):
        ref = _rolled(x, dims, inverse)
        assert torch.allclose(fn(x, dims), ref, atol=2e-6, rtol=0)
    assert torch.allclose(ifftc(fftc(x, dims), dims), x, atol=2e-6)


@pytest.mark.parametrize("n", [7, 8])
def test_centred_line_phase(n):
    x = torch.randn(n, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    k = torch.arange(n)
    j, p = centred_line_phase(k, n)
    assert torch.allclose(_rolled(x, (0,), False)[k], p * torch.fft.fft(x, norm="ortho")[j], atol=1e-12)


def _op(nz: int, ny: int, basis: torch.Tensor, nlines: int = 150, seed: int = 0) -> LineSubspaceOp:
    g = torch.Generator().manual_seed(seed)
    ky, kz = torch.randint(0, ny, (nlines,), generator=g), torch.randint(0, nz, (nlines,), generator=g)
    seg, tau = torch.randint(0, SEQ.nseg, (nlines,), generator=g), torch.randint(0, SEQ.ntau, (nlines,), generator=g)
    return LineSubspaceOp(basis, ky, kz, seg, tau, (nz, ny))


@pytest.mark.parametrize("nz,ny", [(6, 8), (5, 7), (4, 9)])
def test_flat_gather_forward_and_gradient_match_reference(nz, ny):
    """One flat gather (rolls folded into indices and phases) == centred FFT + per-line gather, values and grads."""
    basis = structured_basis(qn_basis(SEQ, 3)[0], SEQ.ntau)  # sparse per tau: exercises the padded atoms
    op = _op(nz, ny, basis)
    x = torch.randn(2, 3, basis.shape[-1], nz, ny, dtype=torch.complex64,
                    generator=torch.Generator().manual_seed(2), requires_grad=True)
    w = torch.randn(2, 3, op.nlines, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    fast, ref = op.forward(x), op.reference_forward(x)
    assert torch.allclose(fast, ref, atol=1e-5 * float(ref.detach().abs().max()))
    (g_fast,) = torch.autograd.grad((fast * w.conj()).real.sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w.conj()).real.sum(), x)
    assert torch.allclose(g_fast, g_ref, atol=1e-5 * float(g_ref.abs().max()))


def test_adjoint_is_the_gradient_of_the_forward():
    """adjoint(y) equals d Re<forward(x), y> / d conj(x) (torch's complex-gradient convention)."""
    basis = torch.randn(SEQ.ntau, SEQ.nseg, 4, generator=torch.Generator().manual_seed(4))
    op = _op(5, 6, basis)
    x = torch.zeros(2, 4, 5, 6, dtype=torch.complex64, requires_grad=True)
    y = torch.randn(2, op.nlines, dtype=torch.complex64, generator=torch.Generator().manual_seed(5))
    (g,) = torch.autograd.grad((op.forward(x) * y.conj()).real.sum(), x)
    assert torch.allclose(g, op.adjoint(y), atol=1e-5)

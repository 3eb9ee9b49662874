"""Multi-echo field fit and spatial unwrapping (qmapinr.recon.qsm.fieldfit) on noiseless synthetic echoes."""

from __future__ import annotations

import numpy as np
import pytest

from qmapinr.recon.qsm.fieldfit import fit_field, unwrap_phase, wrap

TE = np.array([3.7, 9.4, 15.1])  # ms, dTE 5.7 ms -> unambiguous |f| < 87.7 Hz


def _grid(shape=(8, 24, 24)):
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    mask = (x**2 + y**2 + 0.5 * z**2) <= 0.9
    return z, y, x, mask


def _echoes(f_hz, phi0, mag, te=TE):
    return mag[None] * np.exp(1j * (phi0[None] + 2 * np.pi * f_hz[None] * te[:, None, None, None] * 1e-3))


def test_linear_phase_recovered_exactly():
    z, y, x, mask = _grid()
    f = 20.0 * x - 15.0 * y + 10.0 * z + 5.0  # Hz, within the unambiguous range
    phi0 = 0.8 * x + 0.3
    mag = np.exp(-0.2 * (x**2 + y**2)) * 1.0
    out = fit_field(_echoes(f, phi0, mag), TE, mask, unwrap=False)
    np.testing.assert_allclose(out.b0_hz[mask], f[mask], atol=1e-4)  # float32 output
    np.testing.assert_allclose(np.angle(np.exp(1j * (out.phase0 - phi0)))[mask], 0.0, atol=1e-5)
    assert np.all(out.b0_hz[~mask] == 0) and out.residual[mask].max() < 1e-6
    # unwrapping must not change a field that needs none
    out2 = fit_field(_echoes(f, phi0, mag), TE, mask, unwrap=True)
    np.testing.assert_allclose(out2.b0_hz[mask], f[mask], atol=1e-4)


def test_wrapped_field_recovered_after_unwrapping():
    z, y, x, mask = _grid((8, 32, 32))
    f = 160.0 * x + 60.0 * y**2 - 30.0  # Hz: up to ~190 Hz, wraps the first echo spacing twice
    assert np.abs(f[mask]).max() > 2 * 87.7
    phi0 = 0.5 * y
    mag = np.ones_like(x)
    naive = fit_field(_echoes(f, phi0, mag), TE, mask, unwrap=False)
    assert np.abs(naive.b0_hz - f)[mask].max() > 100  # wrapped without spatial unwrapping
    out = fit_field(_echoes(f, phi0, mag), TE, mask, unwrap=True)
    np.testing.assert_allclose(out.b0_hz[mask], f[mask], atol=1e-4)


def test_unwrap_phase_is_congruent_and_exact():
    z, y, x, mask = _grid((6, 28, 28))
    phi = 9.0 * x + 6.0 * y**2 + 2.0 * z  # rad, many wraps, < pi per voxel
    out = unwrap_phase(wrap(phi), mask)
    k = (out - wrap(phi))[mask] / (2 * np.pi)
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)  # exact 2 pi multiples away from the input
    d = (out - phi)[mask]
    np.testing.assert_allclose(d, d[0], atol=1e-9)  # equal to the truth up to one global 2 pi multiple
    assert abs(d[0] / (2 * np.pi) - round(d[0] / (2 * np.pi))) < 1e-9


def test_weights_favour_late_bright_echoes_and_errors():
    z, y, x, mask = _grid()
    f = 10.0 * x
    bright = fit_field(_echoes(f, 0 * x, np.ones_like(x)), TE, mask)
    dim = fit_field(_echoes(f, 0 * x, np.where(x > 0, 0.1, 1.0)), TE, mask)
    assert bright.weight[mask].std() < 1e-9  # uniform magnitude -> uniform weight
    assert dim.weight[mask & (x > 0)].mean() < 0.2 * dim.weight[mask & (x < 0)].mean()
    with pytest.raises(ValueError, match="increasing"):
        fit_field(_echoes(f, 0 * x, np.ones_like(x))[:1], TE[:1], mask)
    with pytest.raises(ValueError, match="empty"):
        fit_field(_echoes(f, 0 * x, np.ones_like(x)), TE, np.zeros_like(mask))

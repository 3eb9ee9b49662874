"""JSENSE's low-resolution coil-map operator is a proper linear operator (shared adjointness check)."""

from __future__ import annotations

from adjoint import assert_adjoint  # tests/helpers

from qmapinr.recon.calibration.jsense import _LowRes
from qmapinr.recon.physics.linop import LinearOperator


def test_lowres_coil_operator_is_adjoint():
    nz, ny, nx, c = 6, 10, 8, 3
    op = _LowRes((nz, ny, nx), (4, 6, 4))
    assert isinstance(op, LinearOperator)
    assert_adjoint(op, (c, 4, 6, 4), (nx, c, nz, ny))

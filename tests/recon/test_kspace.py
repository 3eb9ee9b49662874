"""Containers: the line store of KSpace6D, its dense views and validation; QuantMaps validation."""

from __future__ import annotations

import numpy as np
import pytest

from qmapinr.recon.kspace import Geometry, KSpace6D, QuantMaps, SequenceParams

SEQ = SequenceParams(tr_ms=10.0, te_ms=(2.0, 5.0), flip_deg=8.0, tau_ms=(0.0, 40.0), nseg=3)
GEOM = Geometry(matrix=(4, 3, 2), fov_mm=(40.0, 30.0, 10.0))


def _ks(nlines: int = 4) -> KSpace6D:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((2, 2, nlines, 4)) + 1j).astype(np.complex64)
    return KSpace6D(data=data, ky=np.array([0, 1, 2, 0]), kz=np.array([0, 0, 1, 1]), seg=np.array([0, 1, 2, 0]),
                    tau=np.array([0, 0, 1, 1]), seq=SEQ, geometry=GEOM)


def test_dense_view_mask_and_acceleration():
    ks = _ks()
    dense = ks.dense()
    assert dense.shape == ks.shape_dense == (2, 2, 2, 3, 2, 3, 4)
    assert np.array_equal(dense[:, :, 1, 2, 1, 2, :], ks.data[:, :, 2, :])
    assert ks.mask.sum() == 4 and ks.mask[1, 2, 1, 2]
    assert ks.acceleration == pytest.approx(3 * 2 * 2 / 4)
    assert GEOM.voxel_mm == (10.0, 10.0, 5.0)


def test_inconsistent_shapes_are_errors():
    ks = _ks()
    with pytest.raises(ValueError, match="ky has shape"):
        KSpace6D(data=ks.data, ky=ks.ky[:3], kz=ks.kz, seg=ks.seg, tau=ks.tau, seq=SEQ, geometry=GEOM)
    with pytest.raises(ValueError, match="readout samples"):
        KSpace6D(data=ks.data[..., :3], ky=ks.ky, kz=ks.kz, seg=ks.seg, tau=ks.tau, seq=SEQ, geometry=GEOM)
    with pytest.raises(ValueError, match="echoes"):
        KSpace6D(data=ks.data[:, :1], ky=ks.ky, kz=ks.kz, seg=ks.seg, tau=ks.tau, seq=SEQ, geometry=GEOM)


def test_quantmaps_rejects_unknown_names_and_wrong_rank():
    with pytest.raises(ValueError, match="unknown map"):
        QuantMaps(maps={"T3": np.zeros((1, 2, 2))})
    with pytest.raises(ValueError, match="expected"):
        QuantMaps(maps={"T1": np.zeros((2, 2))})
    qm = QuantMaps(maps={"T1": np.zeros((1, 2, 2), np.float32)}, geometry=GEOM)
    assert qm.geometry is GEOM and qm.series_offset == 0

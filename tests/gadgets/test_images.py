"""QuantMaps <-> MRD images: meta, units, series indices, shapes, geometry, windows, wire round trip."""

from __future__ import annotations

import logging

import ismrmrd
import numpy as np
import pytest

from qmapinr.gadgets.images import SERIES_INDEX, maps_to_mrd_images, mrd_images_to_maps, robust_window
from qmapinr.recon.kspace import MAP_UNITS, QuantMaps

NZ, NY, NX = 4, 6, 8


def _qmaps(seed=0, names=tuple(MAP_UNITS)):
    rng = np.random.default_rng(seed)
    maps = {n: rng.uniform(10, 20, (NZ, NY, NX)).astype(np.float32) for n in names}
    mask = np.zeros((NZ, NY, NX), bool)
    mask[1:3, 1:5, 2:6] = True
    return QuantMaps(maps, mask=mask)


def test_one_image_per_map_with_meta(measurement):
    qm = _qmaps()
    images = maps_to_mrd_images(qm, measurement.geometry, measurement.header)
    assert [im.meta["MapName"] for im in images] == sorted(MAP_UNITS, key=SERIES_INDEX.get)
    for im in images:
        name = im.meta["MapName"]
        assert im.data.shape == (1, NZ, NY, NX) and im.data.dtype == np.float32
        assert im.matrix_size == (NX, NY, NZ)
        np.testing.assert_array_equal(im.data[0], qm.maps[name])
        assert im.image_series_index == SERIES_INDEX[name]
        assert im.image_index == 1
        assert im.image_type == (ismrmrd.IMTYPE_PHASE if name == "Phase0" else ismrmrd.IMTYPE_MAGNITUDE)
        assert im.meta["Units"] == MAP_UNITS[name]
        assert im.meta["SeriesDescription"] == f"qmapinr_{name}"
        assert im.meta["ImageProcessingHistory"] == "QMAPINR"
        quantitative = name in ("T1", "T2", "T2star", "B0", "QSM", "LocalField")
        assert im.meta["DataRole"] == ("Quantitative" if quantitative else "Image")
        assert MAP_UNITS[name] in im.meta["ImageComment"]
        assert im.attribute_string == im.meta.serialize()
    t1 = images[0]
    g = measurement.geometry
    assert tuple(t1.field_of_view) == pytest.approx(g.fov_mm)
    assert tuple(t1.position) == pytest.approx(g.position)
    assert tuple(t1.read_dir) == pytest.approx(g.read_dir)
    assert tuple(t1.phase_dir) == pytest.approx(g.phase_dir)
    assert tuple(t1.slice_dir) == pytest.approx(g.slice_dir)
    assert tuple(t1.patient_table_position) == pytest.approx(g.patient_table_position)


def test_window_is_robust_within_mask(measurement):
    qm = _qmaps(names=("T1",))
    qm.maps["T1"][0] = 1e6  # outside the mask: must not affect the window
    (im,) = maps_to_mrd_images(qm, measurement.geometry, measurement.header)
    lo, hi = np.percentile(qm.maps["T1"][qm.mask], [1, 99])
    assert float(im.meta["WindowCenter"]) == pytest.approx((lo + hi) / 2, rel=1e-5)
    assert float(im.meta["WindowWidth"]) == pytest.approx(hi - lo, rel=1e-5)
    assert robust_window(np.full((2, 2, 2), 5.0))[1] > 5.0  # constant map still gets a positive width


def test_series_offset_and_round_trip_over_bytes(measurement):
    qm = _qmaps(names=("T2star", "B0"))
    images = maps_to_mrd_images(qm, measurement.geometry, measurement.header, series_offset=100)
    assert [im.image_series_index for im in images] == [103, 105]
    back = mrd_images_to_maps([ismrmrd.Image.from_bytes(im.to_bytes()) for im in images])
    assert set(back) == {"T2star", "B0"}
    for name, (arr, units) in back.items():
        np.testing.assert_array_equal(arr, qm.maps[name])
        assert units == MAP_UNITS[name]


def test_nonfinite_voxels_become_zero(measurement, caplog):
    qm = _qmaps(names=("QSM",))
    qm.maps["QSM"][0, 0, 0] = np.nan
    with caplog.at_level(logging.WARNING):
        (im,) = maps_to_mrd_images(qm, measurement.geometry, None)
    assert im.data[0, 0, 0, 0] == 0 and im.meta["NonFiniteVoxels"] == "1"
    assert "non-finite" in caplog.text


def test_inverse_rejects_duplicates_and_unknown(measurement):
    images = maps_to_mrd_images(_qmaps(names=("T1",)), measurement.geometry, None)
    with pytest.raises(ValueError, match="more than one"):
        mrd_images_to_maps(images + images)
    other = ismrmrd.Image.from_array(np.zeros((2, 2, 2), np.float32), image_series_index=42)
    with pytest.raises(ValueError, match="not a qmapinr map"):
        mrd_images_to_maps([other])

"""Stream stages: noise split, k-space buffering (round trip, validation, truncation), maps -> images."""

from __future__ import annotations

import logging

import ismrmrd
import numpy as np
import pytest

from qmapinr.gadgets import stages
from qmapinr.gadgets.stages import NoiseScan, StreamError, buffer_kspace, maps_to_images, split_noise
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.mrdheader import HeaderError


def _run(acqs, header):
    return list(buffer_kspace(split_noise(iter(acqs), header), header))


def _kspaces(out):
    return [o for o in out if isinstance(o, KSpace6D)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_buffer_round_trip_exact(synth, shuffle):
    meas = synth(seed=3, shuffle=shuffle)
    stream = [meas.acquisitions[0], "marker", *meas.acquisitions[1:]]
    out = _run(stream, meas.header)
    assert "marker" in out  # non-acquisition items pass through
    (ks,) = _kspaces(out)
    assert ks.data.dtype == np.complex64 and ks.data.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ks.data, meas.data)
    for name in ("ky", "kz", "seg", "tau"):
        np.testing.assert_array_equal(getattr(ks, name), getattr(meas, name))
    np.testing.assert_array_equal(ks.noise, meas.noise)
    assert ks.geometry == meas.geometry
    assert ks.seq == meas.seq
    assert ks.meta["last_flag_seen"] and ks.meta["dropped_lines"] == 0
    assert ks.meta["n_acquisitions"] == len(meas.acquisitions) - 1  # noise excluded
    assert not any(isinstance(o, ismrmrd.Acquisition) for o in out)


def test_buffer_independent_of_order_and_grows(synth, monkeypatch):
    monkeypatch.setattr(stages, "_BLOCK_LINES", 2)  # many blocks, partial last block
    a = _kspaces(_run(synth(seed=5, shuffle=False).acquisitions, synth(seed=5).header))[0]
    b = _kspaces(_run(synth(seed=5, shuffle=True).acquisitions, synth(seed=5).header))[0]
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.nlines == 2 * 3 * 2  # ntau * nseg * lines_per_seg
    # already in canonical order (the slab-copy path of the store)
    acqs = synth(seed=5).acquisitions
    imaging = sorted(acqs[1:], key=lambda q: (q.idx.set, q.idx.segment, q.idx.kspace_encode_step_2,
                                              q.idx.kspace_encode_step_1, q.idx.contrast))
    for q in imaging:
        q.clear_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    imaging[-1].set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    c = _kspaces(_run([acqs[0], *imaging], synth(seed=5).header))[0]
    np.testing.assert_array_equal(a.data, c.data)
    np.testing.assert_array_equal(a.ky, c.ky)


def test_split_noise_yields_scan_before_imaging(measurement):
    out = list(split_noise(iter(measurement.acquisitions), measurement.header))
    assert isinstance(out[0], NoiseScan)
    np.testing.assert_array_equal(out[0].data, measurement.noise)
    assert out[0].n_acquisitions == 1 and out[0].sample_time_us == 5.0
    rest = out[1:]
    assert len(rest) == len(measurement.acquisitions) - 1
    assert not any(a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in rest)


def test_split_noise_only_noise_emits_at_end(measurement):
    out = list(split_noise(iter(measurement.acquisitions[:1]), measurement.header))
    assert len(out) == 1 and isinstance(out[0], NoiseScan)


def test_buffer_without_split_noise_takes_noise_itself(measurement):
    (ks,) = list(buffer_kspace(iter(measurement.acquisitions), measurement.header))
    np.testing.assert_array_equal(ks.noise, measurement.noise)


@pytest.mark.parametrize(
    "field, label, limit",
    [("kspace_encode_step_1", "ky", 6), ("kspace_encode_step_2", "kz", 4), ("contrast", "echo", 2),
     ("segment", "segment", 3), ("set", "set", 2)],
)
def test_counter_out_of_range(measurement, field, label, limit):
    acqs = measurement.acquisitions
    setattr(acqs[5].idx, field, limit)
    with pytest.raises(StreamError) as err:
        _run(acqs, measurement.header)
    msg = str(err.value)
    assert label in msg and f"= {limit}" in msg and f"0..{limit - 1}" in msg


def test_nan_data_is_rejected(measurement):
    acq = measurement.acquisitions[4]
    acq.data[1, 2] = np.nan
    with pytest.raises(StreamError, match="NaN or Inf"):
        _run(measurement.acquisitions, measurement.header)


def test_sample_count_mismatch(measurement):
    acq = measurement.acquisitions[3]
    acq.resize(number_of_samples=7, active_channels=acq.active_channels)
    with pytest.raises(StreamError, match="7 samples.*nx=8"):
        _run(measurement.acquisitions, measurement.header)


def test_coil_count_change(measurement):
    acq = measurement.acquisitions[6]
    acq.resize(number_of_samples=acq.number_of_samples, active_channels=2)
    with pytest.raises(StreamError, match="2 coils but earlier acquisitions had 3"):
        _run(measurement.acquisitions, measurement.header)


def test_duplicate_echo_is_rejected(measurement):
    acqs = measurement.acquisitions
    with pytest.raises(StreamError, match="duplicate"):
        _run([*acqs[:-1], acqs[2], acqs[-1]], measurement.header)


def test_missing_header_field(measurement):
    header = measurement.header
    header.sequenceParameters.TE = []
    with pytest.raises(HeaderError, match="sequenceParameters.TE"):
        _run(measurement.acquisitions, header)


def test_incomplete_line_with_last_flag_is_error(measurement):
    acqs = measurement.acquisitions
    victim = acqs[7]
    kept = [a for a in acqs if a is not victim]
    with pytest.raises(StreamError) as err:
        _run(kept, measurement.header)
    name = (f"ky={victim.idx.kspace_encode_step_1}, kz={victim.idx.kspace_encode_step_2}, "
            f"segment={victim.idx.segment}, set={victim.idx.set}")
    assert name in str(err.value) and f"missing echoes [{victim.idx.contrast}]" in str(err.value)


def test_truncated_stream_keeps_complete_lines(measurement, caplog):
    acqs = measurement.acquisitions[:-1]  # last acquisition (flagged, echo 1 of the last line) never arrives
    with caplog.at_level(logging.WARNING, logger="qmapinr.gadgets.stages"):
        (ks,) = _kspaces(_run(acqs, measurement.header))
    assert "without the ACQ_LAST_IN_MEASUREMENT flag" in caplog.text
    assert "dropping 1 of" in caplog.text
    assert ks.meta["dropped_lines"] == 1 and not ks.meta["last_flag_seen"]
    assert ks.nlines == measurement.data.shape[2] - 1
    last = measurement.acquisitions[-1].idx
    gone = ((measurement.ky == last.kspace_encode_step_1) & (measurement.kz == last.kspace_encode_step_2)
            & (measurement.seg == last.segment) & (measurement.tau == last.set))
    np.testing.assert_array_equal(ks.data, measurement.data[:, :, ~gone])


def test_two_measurements_in_one_stream(synth):
    m1, m2 = synth(seed=1), synth(seed=2, noise_samples=None)
    out = _kspaces(_run(m1.acquisitions + m2.acquisitions[:], m1.header))
    assert len(out) == 2
    np.testing.assert_array_equal(out[1].data, m2.data)


def test_maps_to_images_stage(measurement):
    nx, ny, nz = measurement.geometry.matrix
    shape = (nz, ny, nx)
    qm = QuantMaps({"T1": np.full(shape, 900.0, np.float32), "T2": np.full(shape, 60.0, np.float32)},
                   geometry=measurement.geometry)
    out = list(maps_to_images(iter(["x", qm]), measurement.header))
    assert out[0] == "x"
    images = out[1:]
    assert [im.image_series_index for im in images] == [1, 2]
    assert tuple(images[0].position) == measurement.geometry.position
    np.testing.assert_array_equal(images[1].data[0], qm.maps["T2"])


def test_truncated_stream_without_any_complete_line_is_error(measurement):
    echo0 = [a for a in measurement.acquisitions[1:] if a.idx.contrast == 0]
    for a in echo0:
        a.clear_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    with pytest.raises(StreamError, match="none of its 12 lines has all 2 echoes"):
        _run(echo0, measurement.header)

"""MRD writer: simulate -> write -> read back with ismrmrd.Dataset -> same k-space, header, truth; fixture."""

from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest

from qmapinr.recon.mrdheader import geometry_from_acquisition, parse_header
from qmapinr.recon.sim.mrd_writer import read_mrd, read_truth, write_mrd
from qmapinr.recon.sim.simulate import SimulationConfig, simulate, tiny_fixture_config

FIXTURE = Path(__file__).resolve().parents[2] / "data" / "tiny.h5"
SMALL = SimulationConfig(
    shape=(2, 8, 8), ncoils=2, nseg=4, R=2.0, snr=30.0, seed=7
)  # 96 imaging acquisitions


def _rebuild(acqs, ky, kz, tau, nte):
    """Put each acquisition back by its idx fields: line found from (set, kz, ky), echo = contrast."""
    line_of = {(int(t), int(z), int(y)): i for i, (t, z, y) in enumerate(zip(tau, kz, ky, strict=True))}
    assert len(line_of) == len(ky)  # (tau, kz, ky) identifies a line
    first = acqs[0]
    out = np.full((first.active_channels, nte, len(ky), first.number_of_samples), np.nan, dtype=np.complex64)
    seg = np.full(len(ky), -1)
    shot = np.full(len(ky), -1)
    for a in acqs:
        i = line_of[(a.idx.set, a.idx.kspace_encode_step_2, a.idx.kspace_encode_step_1)]
        out[:, a.idx.contrast, i, :] = a.data
        seg[i], shot[i] = a.idx.segment, a.idx.user[0]
    return out, seg, shot


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    ks, ph = simulate(SMALL)
    path = tmp_path_factory.mktemp("mrd") / "small.h5"
    write_mrd(path, ks, ph)
    return path, ks, ph


def test_round_trip_with_ismrmrd_dataset(small_file):
    path, ks, _ = small_file
    with ismrmrd.Dataset(str(path), "dataset", mode="r") as dset:
        xml = dset.read_xml_header()
        acqs = [dset.read_acquisition(i) for i in range(dset.number_of_acquisitions())]
    assert len(acqs) == 1 + ks.nlines * ks.seq.nte
    noise, img = acqs[0], acqs[1:]
    assert noise.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    assert np.array_equal(noise.data, ks.noise)
    assert not any(a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in img)
    data, seg, shot = _rebuild(img, ks.ky, ks.kz, ks.tau, ks.seq.nte)
    assert np.array_equal(data.view(np.uint64), ks.data.view(np.uint64))  # bitwise
    assert np.array_equal(seg, ks.seg) and np.array_equal(shot, ks.meta["shot"])
    # acquisition order = line order, echoes consecutive
    assert [a.idx.contrast for a in img[:6]] == [0, 1, 2, 0, 1, 2]
    assert [a.idx.kspace_encode_step_1 for a in img[::3]] == ks.ky.tolist()
    assert [a.scan_counter for a in acqs] == list(range(1, len(acqs) + 1))
    assert all(a.center_sample == 4 and a.sample_time_us == 5.0 for a in img)
    assert [a.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT) for a in acqs].count(True) == 1
    assert img[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT) and img[0].is_flag_set(
        ismrmrd.ACQ_FIRST_IN_SLICE
    )
    # header
    seq, info = parse_header(xml)
    assert seq == ks.seq
    assert info.matrix == ks.geometry.matrix and info.ncoils == 2
    assert info.fov_mm == pytest.approx(ks.geometry.fov_mm)
    assert geometry_from_acquisition(img[0], info) == ks.geometry
    # the fast reader gives the same acquisitions
    xml2, fast = read_mrd(path)
    assert xml2 == (xml.decode() if isinstance(xml, bytes) else xml)
    assert all(
        a.getHead() == b.getHead() and np.array_equal(a.data, b.data) for a, b in zip(acqs, fast, strict=True)
    )


def test_block_writer_equals_append_acquisition(small_file, tmp_path):
    path, ks, ph = small_file
    ref = tmp_path / "append.h5"
    write_mrd(ref, ks, ph, use_append=True)
    xa, aa = read_mrd(ref)
    xb, ab = read_mrd(path)
    assert xa == xb and len(aa) == len(ab)
    for a, b in zip(aa, ab, strict=True):
        assert a.getHead() == b.getHead() and np.array_equal(a.data, b.data)
    with h5py.File(ref, "r") as fa, h5py.File(path, "r") as fb:
        assert fa["dataset/data"].dtype == fb["dataset/data"].dtype


def test_truth_round_trip(small_file, tmp_path):
    path, ks, ph = small_file
    tr = read_truth(path)
    for k, v in ph.maps.items():
        assert np.array_equal(tr.maps[k], v) and tr.maps[k].dtype == np.float32
    assert np.array_equal(tr.labels, ph.labels) and np.array_equal(tr.mask, ph.mask)
    assert tr.label_names == ph.label_names and tr.tissues == ph.tissues
    assert np.array_equal(tr.sens, ph.sens)
    assert SimulationConfig.from_dict(tr.info["config"]) == SMALL
    # no truth -> None; rewriting replaces the file instead of appending to it
    bare = tmp_path / "bare.h5"
    write_mrd(bare, ks)
    write_mrd(bare, ks)
    assert read_truth(bare) is None
    assert len(read_mrd(bare)[1]) == 1 + ks.nlines * ks.seq.nte
    with pytest.raises(FileExistsError):
        write_mrd(bare, ks, overwrite=False)


def test_fixture_is_current():
    assert FIXTURE.exists(), "tests/data/tiny.h5 missing; see tests/data/README.md"
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024
    xml, acqs = read_mrd(FIXTURE)
    tr = read_truth(FIXTURE)
    cfg = tiny_fixture_config()
    assert SimulationConfig.from_dict(tr.info["config"]) == cfg
    ks, ph = simulate(cfg)
    seq, info = parse_header(xml)
    assert seq == ks.seq and info.matrix == (16, 16, 4)
    assert np.array_equal(acqs[0].data, ks.noise)
    data, seg, shot = _rebuild(acqs[1:], ks.ky, ks.kz, ks.tau, seq.nte)
    assert np.allclose(data, ks.data, rtol=1e-5, atol=1e-6 * np.abs(ks.data).max())
    assert np.array_equal(seg, ks.seg) and np.array_equal(shot, ks.meta["shot"])
    for k in ph.maps:
        assert np.allclose(tr.maps[k], ph.maps[k], rtol=1e-6, atol=1e-6)


def test_one_top_level_group_with_the_truth_inside(small_file, tmp_path):
    """python-ismrmrd-server's client.py takes the only group of a file; a second group needs -g."""
    path, _, ph = small_file
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == ["dataset"]
        assert "qmapinr_truth" in f["dataset"]
    with ismrmrd.Dataset(str(path), "dataset", mode="r") as dset:  # MRD readers still see data + xml
        assert {"data", "xml"} <= set(dset.list())
    np.testing.assert_array_equal(read_truth(path).maps["T1"], ph.maps["T1"])
    legacy = tmp_path / "legacy.h5"  # files written before the one-group layout are still read
    with h5py.File(path, "r") as src, h5py.File(legacy, "w") as dst:
        src.copy("dataset", dst)
        src.copy("dataset/qmapinr_truth", dst, name="qmapinr_truth")
        del dst["dataset/qmapinr_truth"]
    np.testing.assert_array_equal(read_truth(legacy).maps["T1"], ph.maps["T1"])

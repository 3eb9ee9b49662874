"""Wire framing over a socketpair, and replay over a real loopback socket (subprocess and in-process)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from qmapinr.gadgets.images import SERIES_INDEX, mrd_images_to_maps
from qmapinr.gadgets.properties import properties_from_config
from qmapinr.gadgets.transport import codec
from qmapinr.gadgets.transport.replay import ReplayError, iter_acquisitions, replay
from qmapinr.recon.kspace import MAP_UNITS

HERE = Path(__file__).resolve().parent
HELPERS = HERE.parents[1] / "helpers"
ENV = {"PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}


# ------------------------------------------------------------------------------------------------- wire


def _pair():
    a, b = socket.socketpair()
    return a, b, b.makefile("rb")


def test_wire_round_trip_all_messages(measurement):
    a, b, rf = _pair()
    image = ismrmrd.Image.from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4), image_series_index=7)
    image.attribute_string = ismrmrd.Meta({"MapName": "T1"}).serialize()
    acq = measurement.acquisitions[3]
    props = {"n_epochs": "5", "odd": 'a"<&>b'}
    codec.send_config_text(a, codec.config_xml(props))
    codec.send_config_file(a, "summit.xml")
    codec.send_header(a, measurement.header_xml + "\x00")
    codec.send_acquisition(a, acq)
    codec.send_image(a, image)
    codec.send_text(a, '{"x": 1}')
    codec.send_close(a)
    got = [codec.read_message(rf) for _ in range(7)]
    assert [m for m, _ in got] == [2, 1, 3, 1008, 1022, 5, 4]
    assert properties_from_config(got[0][1]) == props
    assert got[1][1] == "summit.xml"
    assert got[2][1] == measurement.header_xml  # trailing NUL removed
    assert got[3][1] == acq
    back = got[4][1]
    assert back.image_series_index == 7 and back.meta["MapName"] == "T1"
    np.testing.assert_array_equal(back.data, image.data)
    assert got[5][1] == '{"x": 1}' and got[6][1] is None
    a.close()
    b.close()


def test_wire_truncated_image_raises():
    a, b, rf = _pair()
    image = ismrmrd.Image.from_array(np.ones((4, 4), np.float32))
    frame = codec._ID.pack(codec.IMAGE) + image.to_bytes()
    a.sendall(frame[:-10])
    a.close()
    with pytest.raises(codec.TruncatedStreamError, match="IMAGE data"):
        codec.read_message(rf)
    b.close()


def test_wire_eof_before_close_and_unknown_id():
    a, b, rf = _pair()
    a.sendall(codec._ID.pack(999))
    with pytest.raises(codec.WireError, match="unknown message id 999"):
        codec.read_message(rf)
    a.close()
    with pytest.raises(codec.TruncatedStreamError, match="before a CLOSE"):
        codec.read_message(rf)
    b.close()


def test_iter_acquisitions_matches_ismrmrd_reader(measurement_h5, measurement):
    streamed = list(iter_acquisitions(measurement_h5, chunk=4))
    assert len(streamed) == len(measurement.acquisitions)
    assert all(s == m for s, m in zip(streamed, measurement.acquisitions, strict=True))


# ------------------------------------------------------------------------------------------------ replay


def _check_maps(result, measurement):
    assert result.ok, result.error
    assert result.n_sent == result.n_acquisitions == len(measurement.acquisitions)
    maps = mrd_images_to_maps(result.images)
    assert set(maps) == {"T1", "T2", "T2star", "A", "B0", "Phase0", "Residual"}
    nx, ny, nz = measurement.geometry.matrix
    for name, (arr, units) in maps.items():
        assert arr.shape == (nz, ny, nx) and units == MAP_UNITS[name]
    assert sorted(im.image_series_index for im in result.images) == sorted(SERIES_INDEX[n] for n in maps)
    # the fake recon's statistics made it through buffer -> images -> wire
    assert np.all(maps["T1"][0] == measurement.data.shape[2])
    assert np.all(maps["T2"][0] == measurement.ncoils)
    assert np.all(maps["T2star"][0] == measurement.noise.shape[1])
    assert tuple(result.images[0].position) == pytest.approx(measurement.geometry.position)


@pytest.mark.parametrize("mode", ["subprocess", "inprocess"])
def test_replay_fake_chain(measurement_h5, measurement, mode):
    result = replay(measurement_h5, module="fake_chain", target="fake_chain", mode=mode, env=ENV, timeout=120,
                    progress=False)
    _check_maps(result, measurement)
    if mode == "subprocess":
        assert result.returncode == 0


def test_replay_config_and_header_reach_gadget(measurement_h5, measurement):
    props = {"n_epochs": "3", "lr": "0.002"}
    result = replay(measurement_h5, module="fake_chain", target="echo_config", properties=props,
                    mode="inprocess", timeout=60, progress=False)
    assert result.ok, result.error
    (image,) = result.images
    assert image.meta["prop_n_epochs"] == "3" and image.meta["prop_lr"] == "0.002"
    assert image.meta["matrix"] == ",".join(str(m) for m in measurement.geometry.matrix)
    assert image.meta["acquisitions"] == str(len(measurement.acquisitions))


@pytest.mark.parametrize("mode", ["subprocess", "inprocess"])
def test_replay_failure_keeps_images_and_reports(measurement_h5, mode):
    result = replay(measurement_h5, module="fake_chain", target="fake_chain_fail", mode=mode, env=ENV,
                    timeout=120, progress=False)
    assert not result.ok
    assert len(result.images) == 1 and result.images[0].meta["MapName"] == "T1"
    assert "fake failure after the first image" in result.error
    assert "fake failure after the first image" in result.log_tail
    if mode == "subprocess":
        assert result.returncode == 1
    with pytest.raises(ReplayError, match="fake failure"):
        result.raise_for_error()


@pytest.mark.parametrize("mode", ["subprocess", "inprocess"])
def test_chain_failure_mid_stream_keeps_a_large_image(measurement_h5, mode):
    """A chain that fails mid-stream after sending an image bigger than the socket buffers: the image arrives
    whole and the client sends everything (``drain_on_failure``; without it the subprocess gadget's close with
    unread input resets the connection and drops the queued image: 0 images, measured 3 of 3)."""
    from fake_chain import BIG_IMAGE_SHAPE

    result = replay(measurement_h5, module="fake_chain", target="fake_chain_fail_big", mode=mode, env=ENV,
                    timeout=120, progress=False)
    assert not result.ok and "fake failure mid-stream" in result.error
    assert "lost before its CLOSE" not in result.error
    assert result.n_sent == result.n_acquisitions
    assert len(result.images) == 1
    data = result.images[0].data.reshape(-1)
    assert data.size == np.prod(BIG_IMAGE_SHAPE) and data[-1] == data.size - 1


def test_replay_process_dies_without_close(measurement_h5):
    result = replay(measurement_h5, module="fake_chain", target="fake_chain_exit", env=ENV, timeout=120,
                    progress=False)
    assert not result.ok and result.returncode == 3
    assert "exited with code 3" in result.error and "lost before its CLOSE (4)" in result.error
    assert result.images == []


def test_replay_timeout_terminates_gadget(measurement_h5):
    result = replay(measurement_h5, module="fake_chain", target="fake_chain_hang", env=ENV, timeout=4,
                    progress=False)
    assert not result.ok and "timeout after 4" in result.error
    assert result.returncode is not None and result.returncode != 0  # terminated, not left running
    assert result.seconds < 30


def test_replay_local_read_failure_does_not_hang(measurement_h5, monkeypatch):
    from qmapinr.gadgets.transport import replay as replay_module

    def broken(path, dataset="dataset", chunk=512):
        yield from list(iter_acquisitions(path, dataset))[:3]
        raise OSError("disk on fire")

    monkeypatch.setattr(replay_module, "iter_acquisitions", broken)
    result = replay(measurement_h5, module="fake_chain", target="fake_chain", mode="inprocess", timeout=60,
                    progress=False)
    assert not result.ok and result.n_sent == 3
    assert result.error.startswith("the replay failed after sending 3") and "disk on fire" in result.error
    assert result.seconds < 30


def test_listener_covers_ipv4_and_ipv6_localhost(monkeypatch):
    """If ``localhost`` resolves to ::1 and 127.0.0.1, a client of either family reaches the same port."""
    from qmapinr.gadgets.transport import launch

    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    fake = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
    monkeypatch.setattr(launch.socket, "getaddrinfo", lambda *a, **k: fake)
    listeners, port = launch.listen_loopback()
    try:
        assert len(listeners) == 2 and {s.family for s in listeners} == {socket.AF_INET6, socket.AF_INET}
        for family, host in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
            client = socket.socket(family, socket.SOCK_STREAM)  # getaddrinfo is patched: connect directly
            client.connect((host, port))
            conn = launch.accept_one(listeners, time.monotonic() + 5, lambda: None)
            assert conn.getsockname()[0] == host
            conn.close()
            client.close()
    finally:
        for s in listeners:
            s.close()

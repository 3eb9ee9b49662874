"""Fault corpus of the MRD service (issue 12): one parametrised case per fault, each must end honestly.

Every case drives a real server over real sockets with the independent test client and checks what the client
got (maps, or ONE TEXT that says why, then CLOSE) and what the server reported. Deadlines are short (set through
the server's options) and headers small, so the corpus runs in seconds. Cases that need worker processes
(crashes, signals, stopping a running chain) use one module-scoped process server.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # spawned workers import this module by name
    sys.path.insert(0, str(HERE))

import mrd_test_client as mc  # noqa: E402
from fault_chains import PROC_CHAINS  # noqa: E402
from synthetic import tiny_dataset  # noqa: E402
from test_server import HEADER_XML, RunningServer, acquisitions, expected_sum, sum_chain  # noqa: E402

from qmapinr.gadgets.chains import CHAINS, number_repetitions, tag_repetitions  # noqa: E402
from qmapinr.gadgets.stages import buffer_kspace, maps_to_images, split_noise  # noqa: E402
from qmapinr.gadgets.transport.handler import configure_worker_logging  # noqa: E402
from qmapinr.recon.kspace import Geometry  # noqa: E402
from qmapinr.recon.methods.budget import Limits  # noqa: E402
from qmapinr.recon.mrdheader import build_header, header_to_xml  # noqa: E402
from qmapinr.recon.sim.mrd_writer import imaging_acquisitions  # noqa: E402

LIMIT = int(1.5 * 2**30)  # --max-memory of the corpus servers
HANDSHAKE, STREAM = 1.0, 3.0  # --handshake-timeout / --stream-timeout of the thread server (s)


# -- chains ---------------------------------------------------------------------------------------------------
def repeat_chain(connection) -> None:
    """The real stages around a recon that returns ones: repeated measurements must get distinct numbers."""
    from fake_chain import fake_recon

    header = connection.header
    items = buffer_kspace(split_noise(iter(connection), header), header)
    items = tag_repetitions(maps_to_images(number_repetitions(fake_recon(items, header)), header))
    for item in items:
        connection.send(item)


PROC_SPEC = "fault_chains:PROC_CHAINS"
THREAD_CHAINS = dict(PROC_CHAINS, fake=sum_chain, summit=CHAINS["summit"], repeat=repeat_chain)


# -- data ----------------------------------------------------------------------------------------------------
def _summit_header(matrix: tuple[int, int, int], ncoils: int = 4) -> str:
    ds = tiny_dataset(matrix=(8, 6, 4), ncoils=2)
    geometry = Geometry(matrix=matrix, fov_mm=tuple(float(m) for m in matrix))
    return header_to_xml(build_header(ds.kspace.seq, geometry, ncoils))


def _tiny_stream(ncoils: int = 2):
    ds = tiny_dataset(matrix=(8, 6, 4), ncoils=ncoils)
    header = header_to_xml(build_header(ds.kspace.seq, ds.kspace.geometry, ncoils))
    return header, list(imaging_acquisitions(ds.kspace))


def _noise_acq() -> ismrmrd.Acquisition:
    acq = ismrmrd.Acquisition.from_array(np.ones((2, 8), np.complex64))
    acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    return acq


def _huge_acquisition_header(channels: int, samples: int) -> bytes:
    head = ismrmrd.AcquisitionHeader()
    head.active_channels, head.available_channels, head.number_of_samples = channels, channels, samples
    return struct.pack("<H", mc.ACQUISITION) + bytes(head) + b"\0" * 64


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tsrv():
    srv = RunningServer(chains=THREAD_CHAINS, workers="thread", max_connections=4, handshake_timeout=HANDSHAKE,
                        stream_timeout=STREAM, idle_timeout=10.0, linger=0.5,
                        limits=Limits(max_memory_bytes=LIMIT, max_epochs=1000))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def psrv():
    srv = RunningServer(chains=PROC_SPEC, workers="process", max_connections=4, handshake_timeout=20.0,
                        linger=0.5, limits=Limits(max_memory_bytes=LIMIT))
    yield srv
    srv.stop()


def _session(srv, steps, timeout: float = 30.0) -> mc.ClientResult:
    client = mc.MRDTestClient(srv.host, srv.port, timeout=timeout)
    try:
        steps(client)
    except OSError as exc:  # the server may have closed already: keep what it sent
        client.result.error = f"send failed: {exc}"
    return client.wait(timeout)


def _handshake(config: str, header: str = HEADER_XML, params: dict | None = None):
    def steps(client):
        client.send_config_text(config)
        client.send_header(header)
        if params is not None:
            client.send_parameters(params)

    return steps


def _then(first, *more):
    def steps(client):
        first(client)
        for step in more:
            step(client)

    return steps


def _send_acqs(acqs):
    return lambda client: [client.send_acquisition(a) for a in acqs]


def _close(client):
    client.send_close()


def _refused(result: mc.ClientResult, fragment: str) -> None:
    """The honest refusal: no images, exactly one TEXT naming the reason, then CLOSE."""
    assert result.closed, (result.error, result.texts)
    assert result.images == [], result.texts
    assert len(result.texts) == 1 and fragment in result.texts[0], result.texts


def _last_report(srv, before: int, chain: str | None = None, timeout: float = 30.0):
    """The first report after the ``before`` first ones (of ``chain`` if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in srv.server.reports[before:] if chain is None or r.chain == chain]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no report for chain {chain} within {timeout} s")


# -- the corpus: cases answered by one refusal TEXT + CLOSE (thread workers) ---------------------------------
def _trickle(client):
    for byte in struct.pack("<H", mc.CONFIG_TEXT) + struct.pack("<I", 100) + b"x" * 10:
        client._send(bytes([byte]))
        time.sleep(0.15)


def _declare_big_header(client):
    client.send_config_text("fake")
    client._send(struct.pack("<H", mc.HEADER) + struct.pack("<I", 64 << 20) + b"0123456789")


def _send_image(client):
    client._send(struct.pack("<H", mc.IMAGE))
    ismrmrd.Image.from_array(np.zeros((2, 2), np.float32)).serialize_into(client._send)


REFUSALS = {
    # resource exhaustion: refused from the header, before any allocation
    "header_256cubed": (_then(_handshake("summit", _summit_header((256, 256, 256))), _send_acqs(acquisitions(0, 12)),
                              _close), "more than this server's limit"),
    "header_512cubed": (_then(_handshake("summit", _summit_header((512, 512, 512))), _close),
                        "more than this server's limit"),
    "header_4096cubed": (_then(_handshake("summit", _summit_header((4096, 4096, 4096))), _close),
                         "matrix size = 4096 exceeds"),
    "acq_65535ch_x_65535samples": (_then(_handshake("fake"),
                                         lambda c: c._send(_huge_acquisition_header(65535, 65535))),
                                   "declares 65535 channels"),
    "acq_samples_beyond_header": (_then(_handshake("fake"), lambda c: c._send(_huge_acquisition_header(2, 65535))),
                                  "declares 65535 samples"),
    "epochs_1e6": (_then(_handshake("summit", _summit_header((32, 32, 8)), {"epochs": 1000000}), _close),
                   "epochs = 1000000 exceeds"),
    # slot holding: deadlines
    "silent_client": (lambda c: None, "handshake deadline passed"),
    "declares_64MiB_header_sends_10_bytes": (_declare_big_header, "handshake deadline passed"),
    "trickles_one_byte_at_a_time": (_trickle, "handshake deadline passed"),
    "stops_mid_stream": (_then(_handshake("fake"), _send_acqs(acquisitions(0, 2))), "stream deadline passed"),
    # endings
    "zero_acquisitions": (_then(_handshake("summit", _summit_header((8, 6, 4))), _close),
                          "produced no images from 0 acquisitions"),
    "only_noise_prescan": (_then(_handshake("summit", _summit_header((8, 6, 4))), _send_acqs([_noise_acq()] * 2),
                                 _close), "produced no images from 2 acquisitions (2 noise)"),
    "client_sends_image": (_then(_handshake("fake"), _send_image, _close), "IMAGE (1022) from the client"),
    # cases that already passed before issue 12 (kept passing)
    "unknown_chain": (_then(_handshake("nosuch"), _close), "unknown chain 'nosuch'"),
    "path_traversal_config_name": (_then(lambda c: c.send_config_file("../../../etc/passwd.xml"),
                                         lambda c: c.send_header(HEADER_XML), _close), "unknown chain 'passwd'"),
    "data_before_config": (_send_acqs(acquisitions(0, 1)), "expected CONFIG_FILE (1) or CONFIG_TEXT (2)"),
    "garbled_header": (_then(lambda c: c.send_config_text("fake"), lambda c: c.send_header("<nope/>")),
                       "not a valid ISMRMRD header"),
    "bad_json": (_then(_handshake("fake"), lambda c: c.send_text("{oops"), _close), "not valid JSON"),
    "json_not_object": (_then(_handshake("fake"), lambda c: c.send_text("[1]"), _close), "must be an object"),
    "unknown_message_id": (_then(_handshake("fake"), lambda c: c._send(struct.pack("<H", 777))),
                           "unknown message id 777"),
    "text_length_beyond_codec_limit": (lambda c: c._send(struct.pack("<HI", mc.CONFIG_TEXT, 1 << 30)),
                                       "limit 268435456"),
    "unknown_property": (_then(_handshake("summit", _summit_header((8, 6, 4)), {"nosuch": 1}), _close),
                         "unknown property 'nosuch'"),
    "failing_chain_nan_data": (_then(_handshake("summit", _tiny_stream()[0]),
                                     _send_acqs([ismrmrd.Acquisition.from_array(
                                         np.full((2, 8), np.nan, np.complex64))]), _close), "NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_with_one_text_then_close(tsrv, case):
    steps, fragment = REFUSALS[case]
    before = len(tsrv.server.reports)
    t0 = time.monotonic()
    result = _session(tsrv, steps)
    _refused(result, fragment)
    assert time.monotonic() - t0 < STREAM + 3.0  # no slot is held for long
    report = _last_report(tsrv, before)
    summary = report.summary()  # the report line always has chain, counts, duration and status
    for key in ("chain=", "status=", "acquisitions=", "images=", "duration="):
        assert key in summary
    assert report.status in ("error", "empty"), summary
    # peak RSS of the serving process (thread workers: the whole test process) stays under the limit
    assert report.peak_rss_bytes < LIMIT, summary


def test_stream_beyond_the_memory_budget_is_refused_before_allocating():
    from qmapinr.gadgets.chains import CHAIN_CONFIGS
    from qmapinr.recon.config import SummitConfig
    from qmapinr.recon.methods import budget

    header = _summit_header((256, 8, 2), ncoils=64)
    dims = budget.dims_from_header(header)
    fixed = budget.estimate_resources(dims, "summit", CHAIN_CONFIGS["summit"]()).memory_bytes
    assert CHAIN_CONFIGS["summit"] is SummitConfig
    limit = fixed + int(budget.KSPACE * 2**19)  # room for 0.5 MiB of acquisitions: 4 of 64 coils x 256 samples
    srv = RunningServer(chains=THREAD_CHAINS, workers="thread", linger=0.2,
                        limits=Limits(max_memory_bytes=limit))
    acqs = []
    for i in range(8):
        acq = ismrmrd.Acquisition.from_array(np.zeros((64, 256), np.complex64))
        acq.idx.kspace_encode_step_1 = i
        acqs.append(acq)
    try:
        result = _session(srv, _then(_handshake("summit", header), _send_acqs(acqs), _close))
        report = srv.wait_reports(1)[0]
    finally:
        srv.stop()
    _refused(result, "stream exceeds the memory budget after 3 acquisitions")
    assert report.acquisitions == 3


@pytest.mark.parametrize("params, fragment", [({"epochs": -1}, "epochs"), ({"wnnm_patch": 0}, "wnnm_patch")],
                         ids=["epochs_minus_1", "wnnm_patch_0"])
def test_impossible_settings_are_refused_before_the_solver(tsrv, params, fragment):
    """Settings validation is helper "guards'" recon/methods/validate.py (run by the registry on the data)."""
    pytest.importorskip("qmapinr.recon.methods.validate", reason="recon/methods/validate.py (guards) not merged")
    header, acqs = _tiny_stream()
    result = mc.run_client(tsrv.host, tsrv.port, header, acqs, config_text="summit", parameters=params, timeout=60)
    _refused(result, fragment)


def test_four_silent_clients_do_not_block_a_good_one(tsrv):
    silent = [socket.create_connection((tsrv.host, tsrv.port)) for _ in range(4)]
    try:
        time.sleep(0.2)  # the four hold all four slots
        t0 = time.monotonic()
        result = tsrv.run(3)
        waited = time.monotonic() - t0
    finally:
        for s in silent:
            s.close()
    image = result.images[0] if result.images else None
    assert result.closed and image is not None and np.allclose(image.data, expected_sum(3)), result.texts
    assert waited < HANDSHAKE + 2.0, waited  # served once the first silent client hit the handshake deadline


def test_client_that_left_the_backlog_gets_no_work():
    srv = RunningServer(chains=THREAD_CHAINS, workers="thread", max_connections=1, linger=0.2)
    try:
        busy = threading.Thread(target=srv.run, args=(1,), kwargs={"parameters": {"delay": 1.0}})
        busy.start()
        time.sleep(0.3)
        gone = socket.create_connection((srv.host, srv.port))
        gone.close()  # gives up while waiting in the backlog
        left = mc.MRDTestClient(srv.host, srv.port)  # sends its whole stream, then leaves before any answer
        for step in (lambda c: c.send_config_text("fake"), lambda c: c.send_header(HEADER_XML),
                     _send_acqs(acquisitions(2)), _close):
            step(left)
        left.abort()
        busy.join(30)
        reports = srv.wait_reports(3)
    finally:
        srv.stop()
    statuses = sorted(r.status for r in reports)
    assert statuses == ["disconnected", "gone", "ok"], [r.summary() for r in reports]
    assert all(r.images == 0 for r in reports if r.status != "ok")


def test_repeated_measurements_get_distinct_series_and_repetition(tsrv):
    header, acqs = _tiny_stream()
    result = mc.run_client(tsrv.host, tsrv.port, header, acqs + acqs, config_text="repeat", timeout=60)
    assert result.closed and not result.texts, result.texts
    keys = [(im.image_series_index, im.repetition) for im in result.images]
    assert len(keys) == len(set(keys)) == 2 * len(result.images) // 2 and len(keys) >= 14
    assert sorted({r for _, r in keys}) == [0, 1]


# -- cases that need worker processes ------------------------------------------------------------------------
def test_worker_sigkill_is_told_to_the_client(psrv):
    before = len(psrv.server.reports)
    result = psrv.run(0, config_text="kill", timeout=60)
    _refused(result, "worker died (killed by SIGKILL")
    report = _last_report(psrv, before, "kill")
    assert report.status == "crashed" and report.chain == "kill" and report.acquisitions == 6, report.summary()
    assert report.duration_s > 0


def test_worker_out_of_memory_is_one_text(psrv):
    result = psrv.run(0, config_text="oom", timeout=60)
    _refused(result, "MemoryError")


def test_client_gone_while_the_chain_runs_stops_the_work(psrv):
    before = len(psrv.server.reports)
    client = mc.MRDTestClient(psrv.host, psrv.port)
    _then(_handshake("sleep", params={"delay": 30}), _send_acqs(acquisitions(0, 2)), _close)(client)
    time.sleep(0.5)
    client.abort()  # shutdown + close: a close alone waits for the reader thread blocked in recv
    t0 = time.monotonic()
    report = _last_report(psrv, before, "sleep")
    assert report.status in ("gone", "disconnected") and report.images == 0, report.summary()
    assert time.monotonic() - t0 < 15 and report.duration_s < 25, report.summary()


def test_session_deadline_stops_a_long_chain():
    srv = RunningServer(chains=PROC_SPEC, workers="process", max_connections=1, session_timeout=4.0, linger=0.5)
    try:
        result = srv.run(0, config_text="sleep", parameters={"delay": 60}, timeout=60)
        _refused(result, "session deadline passed")
        assert srv.wait_reports(1)[0].status == "deadline"
    finally:
        srv.stop()


def test_reject_mode_frees_the_slot_when_the_session_ends():
    srv = RunningServer(chains=PROC_SPEC, workers="process", max_connections=1, when_busy="reject", linger=0.2)
    try:
        first = srv.run(1, config_text="slow_exit", timeout=60)
        assert first.images, first.texts
        deadline = time.monotonic() + 10
        while srv.server.active and time.monotonic() < deadline:
            time.sleep(0.02)
        second = srv.run(2, config_text="sleep", timeout=60)  # the first worker process is still alive here
        assert second.images and not second.texts, second.texts
        assert second.images[0].image_index == 6
    finally:
        srv.stop()


def test_sigterm_to_the_process_group_drains_like_sigterm_to_the_server():
    proc, lines, port = mc.start_server_process(PROC_SPEC, [str(HERE), str(HERE.parents[1] / "helpers")],
                                                "--shutdown-timeout", "30", start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        results = {}
        client = threading.Thread(target=lambda: results.setdefault("r", mc.run_client(
            "127.0.0.1", port, HEADER_XML, acquisitions(8), config_text="sleep", parameters={"delay": 2.0})))
        client.start()
        while not any("running chain" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # systemd's KillMode=control-group: every process gets it
        client.join(60)
        assert proc.wait(60) == 0, "".join(lines)
        result = results["r"]
        assert result.closed and len(result.images) == 1 and not result.texts, (result.texts, "".join(lines))
        assert any("status=ok" in line for line in lines), "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- save what arrived, log hygiene ---------------------------------------------------------------------------
def test_save_stream_writes_a_replayable_file(tmp_path):
    from qmapinr.gadgets.transport.replay import check_input, iter_acquisitions, read_header_xml

    srv = RunningServer(chains=THREAD_CHAINS, workers="thread", save_stream=str(tmp_path), linger=0.2)
    try:
        result = srv.run(4, config_text="fake", parameters={"series": 3})
        assert result.images
    finally:
        srv.stop()
    (saved,) = tmp_path.glob("conn-1-*.h5")
    assert check_input(saved) == 6
    got = [a.data for a in iter_acquisitions(saved)]
    assert all(np.array_equal(g, a.data) for g, a in zip(got, acquisitions(4), strict=True))
    assert "matrixSize" in read_header_xml(saved)
    assert '"series": "3"' in saved.with_suffix(".h5.json").read_text()


def test_validation_errors_are_one_log_line(tsrv, caplog):
    with caplog.at_level("INFO"):
        _refused(_session(tsrv, _then(lambda c: c.send_config_text("fake"), lambda c: c.send_header("<x/>"))),
                 "not a valid ISMRMRD header")
        tsrv.wait_reports(len(tsrv.server.reports))
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors and all(not r.exc_info and "\n" not in r.getMessage() for r in errors)


def test_runtime_warnings_become_one_log_line(caplog):
    import warnings

    saved = warnings.showwarning
    try:
        configure_worker_logging(20)
        with caplog.at_level("WARNING"), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = sys.modules["qmapinr.gadgets.transport.handler"]._log_warning
            np.log(np.zeros(2))
    finally:
        warnings.showwarning = saved
    (record,) = [r for r in caplog.records if "RuntimeWarning" in r.getMessage()]
    assert "\n" not in record.getMessage() and "divide by zero" in record.getMessage()


# -- replay CLI: every user error is one line on stderr and a non-zero exit -----------------------------------
def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    import h5py

    tiny = HERE.parents[1] / "data" / "tiny.h5"
    truncated = tmp / "truncated.h5"
    truncated.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
    (tmp / "text.h5").write_text("not hdf5")
    with h5py.File(tmp / "plain.h5", "w") as f:
        f["x"] = 1
    ds = ismrmrd.Dataset(str(tmp / "header_only.h5"), "dataset", create_if_needed=True)
    ds.write_xml_header(HEADER_XML.encode())
    ds.close()
    return {"missing": (tmp / "nosuch.h5", "no such file"), "truncated": (truncated, "truncated or corrupt"),
            "not_hdf5": (tmp / "text.h5", "not an HDF5 file"), "not_ismrmrd": (tmp / "plain.h5", "not an ISMRMRD"),
            "empty_stream": (tmp / "header_only.h5", "no acquisitions")}


@pytest.mark.parametrize("case", ["missing", "truncated", "not_hdf5", "not_ismrmrd", "empty_stream"])
def test_replay_cli_bad_input_is_one_line(tmp_path, capsys, case):
    from qmapinr.gadgets.app.cli import main

    path, fragment = _bad_inputs(tmp_path)[case]
    code = main(["--log-level", "ERROR", "replay", str(path), "--mode", "inprocess", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and fragment in err[0] and err[0].startswith("qmapinr replay: error:"), err


def test_replay_cli_failed_chain_is_one_line_and_saves_the_stream(tmp_path):
    tiny = HERE.parents[1] / "data" / "tiny.h5"
    saved = tmp_path / "sent.h5"
    helpers = str(HERE.parents[1] / "helpers")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([helpers, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "qmapinr.gadgets.app.cli", "--log-level", "WARNING", "replay", str(tiny),
         "--module", "fake_chain", "--chain", "fake_chain_crash", "--mode", "inprocess", "--no-progress",
         "--out", str(tmp_path / "out"), "--save-stream", str(saved)],
        capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "fake crash" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    from qmapinr.gadgets.transport.replay import iter_acquisitions, read_header_xml

    assert read_header_xml(saved) == read_header_xml(tiny)  # what was sent before the failure can be replayed
    sent, original = list(iter_acquisitions(saved)), list(iter_acquisitions(tiny))
    assert len(sent) <= len(original)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(sent, original, strict=False))

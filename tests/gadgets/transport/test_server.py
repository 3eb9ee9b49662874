"""The standalone MRD server end to end: real sockets, real worker processes, an independent test client.

The fake chains below are module-level so that spawned workers can import them (``test_server:FAKE_CHAINS``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # spawned workers inherit sys.path and import this module by name
    sys.path.insert(0, str(HERE))

import mrd_test_client as mc  # noqa: E402

from qmapinr.gadgets.transport.server import MRDServer  # noqa: E402

REPO = HERE.parents[2]
TINY = REPO / "tests" / "data" / "tiny.h5"


# -- fake chains (run inside the server's workers) -----------------------------------------------------------
def _properties(connection) -> dict[str, str]:
    props = {}
    if connection.config is not None:
        props = {p.get("name"): p.get("value") for p in connection.config.iter("property")}
    props.update(connection.parameters)
    return props


def _barrier(directory: str, name: str, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` chains have started (each touches a file): proves they run at the same time."""
    Path(directory, name).touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < count:
        if time.monotonic() > deadline:
            started = len(os.listdir(directory))
            raise RuntimeError(f"barrier: only {started} of {count} chains running together")
        time.sleep(0.05)


def sum_chain(connection) -> None:
    """One image per client: the sum over acquisitions of the real part, image_index = #acquisitions.

    Properties: ``series`` (image_series_index), ``delay`` (s, before reading),
    ``barrier``/``barrier_n``/``name`` (see :func:`_barrier`).
    The attribute string echoes the properties as JSON, so the test sees what reached the chain.
    """
    props = _properties(connection)
    if "barrier" in props:
        _barrier(props["barrier"], props["name"], int(props["barrier_n"]))
    time.sleep(float(props.get("delay", 0)))
    connection.filter(ismrmrd.Acquisition)
    acqs = list(connection)
    total = np.sum([a.data.real for a in acqs], axis=0).astype(np.float32)  # (coils, samples)
    image = ismrmrd.Image.from_array(total)
    image.image_index = len(acqs)
    image.image_series_index = int(props.get("series", 1))
    meta = ismrmrd.Meta()
    meta["props"] = json.dumps(props)
    image.attribute_string = meta.serialize()
    connection.send(image)


def failing_chain(connection) -> None:
    for _ in connection:
        pass
    raise ValueError("bad data: the fake chain always fails")


FAKE_CHAINS = {"fake": sum_chain, "fail": failing_chain}
FAKE_SPEC = f"{__name__}:FAKE_CHAINS"

HEADER_XML = mc.HEADER_XML


def acquisitions(client_id: int, n: int = 6) -> list[ismrmrd.Acquisition]:
    """n acquisitions of 2 coils x 8 samples; acquisition i holds client_id + i everywhere."""
    out = []
    for i in range(n):
        acq = ismrmrd.Acquisition.from_array(np.full((2, 8), client_id + i, dtype=np.complex64))
        acq.idx.kspace_encode_step_1 = i % 4
        if i == n - 1:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
        out.append(acq)
    return out


def expected_sum(client_id: int, n: int = 6) -> float:
    return float(sum(client_id + i for i in range(n)))


# -- fixtures ------------------------------------------------------------------------------------------------
class RunningServer:
    def __init__(self, **kwargs):
        kwargs.setdefault("chains", FAKE_CHAINS)
        kwargs.setdefault("linger", 1.0)
        self.server = MRDServer(port=0, **kwargs)
        self.host, self.port = self.server.bind()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def run(self, client_id: int = 0, **kwargs) -> mc.ClientResult:
        kwargs.setdefault("config_text", "fake")
        return mc.run_client(self.host, self.port, HEADER_XML, acquisitions(client_id), **kwargs)

    def settle(self, timeout: float = 30.0) -> int:
        """Wait until no connection is running (all reports in); returns the number of reports."""
        deadline = time.monotonic() + timeout
        while self.server._active and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.server.reports)

    def wait_reports(self, count: int, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while len(self.server.reports) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.server.reports

    def stop(self):
        self.server.shutdown()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def server():
    """Thread workers: fast, for the protocol tests."""
    srv = RunningServer(max_connections=4, workers="thread")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def process_server():
    """The default process workers (each connection a spawned interpreter: seconds per connection here)."""
    srv = RunningServer(max_connections=4, workers="process")
    yield srv
    srv.stop()


def _only_image(result: mc.ClientResult) -> ismrmrd.Image:
    assert result.error is None and result.closed, (result.error, result.texts)
    assert result.texts == [] and len(result.images) == 1
    return result.images[0]


# -- tests ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["id1_file", "id2_name", "id2_stream_xml"])
def test_config_variants(server, variant):
    xml = (
        '<?xml version="1.0"?><configuration><version>2</version><stream><external>'
        f'<execute name="{__name__}" target="sum_chain" type="python"/>'
        '<configuration><property name="series" value="7"/></configuration>'
        '</external></stream></configuration>'
    )
    kwargs = {"id1_file": {"config_file": "/some/where/fake.xml"}, "id2_name": {"config_text": "fake.xml"},
              "id2_stream_xml": {"config_text": xml}}[variant]
    image = _only_image(server.run(3, **kwargs))
    assert image.image_index == 6
    assert np.allclose(image.data, expected_sum(3))
    assert image.image_series_index == (7 if variant == "id2_stream_xml" else 1)


def test_config_dir_file_supplies_chain_and_properties(tmp_path):
    (tmp_path / "site_recon.xml").write_text(
        '<configuration><version>2</version><stream><external><execute name="m" target="fake" type="python"/>'
        '<configuration><property name="series" value="5"/></configuration>'
        '</external></stream></configuration>')
    srv = RunningServer(workers="thread", config_dir=str(tmp_path))
    try:
        image = _only_image(srv.run(2, config_file="site_recon.xml"))
        assert image.image_series_index == 5 and np.allclose(image.data, expected_sum(2))
        assert srv.wait_reports(1)[0].chain == "fake"
    finally:
        srv.stop()


def test_json_parameters_reach_the_chain_and_override_properties(server):
    xml = ('<configuration><stream><external><execute name="m" target="fake" type="python"/><configuration>'
           '<property name="series" value="7"/><property name="keep" value="yes"/></configuration>'
           '</external></stream></configuration>')
    image = _only_image(server.run(1, config_text=xml, parameters={"series": 9, "tag": {"x": "hello"}}))
    assert image.image_series_index == 9
    props = json.loads(ismrmrd.Meta.deserialize(image.attribute_string)["props"])
    assert props == {"series": "9", "keep": "yes", "tag.x": "hello"}


def test_unknown_chain_gets_text_error_then_close(server):
    result = server.run(0, config_text="nosuch.xml")
    assert result.closed and result.images == []
    assert len(result.texts) == 1
    assert "unknown chain 'nosuch'" in result.texts[0] and "fake" in result.texts[0]


def test_failing_chain_and_garbled_start_are_reported(server):
    result = server.run(0, config_file="fail.xml")
    assert result.closed and result.images == [] and "ValueError: bad data" in result.texts[0]
    client = mc.MRDTestClient(server.host, server.port)
    client.send_acquisition(acquisitions(0)[0])  # data before any configuration
    result = client.wait(30)
    assert result.closed and "expected CONFIG_FILE (1) or CONFIG_TEXT (2)" in result.texts[0]
    _only_image(server.run(2))  # and the server still serves


def test_four_concurrent_clients_get_their_own_results(process_server, tmp_path):
    server = process_server
    results = {}

    def one(cid):
        params = {"barrier": str(tmp_path), "barrier_n": 4, "name": f"c{cid}", "series": cid}
        results[cid] = server.run(10 * cid, parameters=params, timeout=120)

    threads = [threading.Thread(target=one, args=(cid,)) for cid in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    for cid in range(1, 5):
        image = _only_image(results[cid])  # a serialised server would fail the barrier -> TEXT error
        assert image.image_series_index == cid
        assert np.allclose(image.data, expected_sum(10 * cid))


def test_disconnect_mid_stream_does_not_disturb_others(process_server):
    server = process_server
    before = server.settle()
    results = {}

    def good(cid):
        results[cid] = server.run(cid, parameters={"delay": 1.0})

    threads = [threading.Thread(target=good, args=(cid,)) for cid in (5, 6)]
    for t in threads:
        t.start()
    dropped = server.run(4, parameters={"delay": 0.5}, disconnect_after=3)
    for t in threads:
        t.join(60)
    assert dropped.closed is False
    for cid in (5, 6):
        assert np.allclose(_only_image(results[cid]).data, expected_sum(cid))
    _only_image(server.run(7))  # the next client is served too
    reports = server.wait_reports(before + 4)[before:]
    lost = [r for r in reports if r.status not in ("ok",)]
    assert len(lost) == 1 and lost[0].status in ("eof", "disconnected"), [r.summary() for r in reports]
    assert lost[0].acquisitions == 3  # everything that arrived was processed
    assert sorted(r.acquisitions for r in reports if r.status == "ok") == [6, 6, 6]


def test_busy_reject_with_thread_workers():
    srv = RunningServer(max_connections=1, when_busy="reject", workers="thread")
    try:
        results = {}
        slow = threading.Thread(
            target=lambda: results.setdefault("slow", srv.run(1, parameters={"delay": 2})))
        slow.start()
        deadline = time.monotonic() + 10
        while not srv.server._active and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = srv.run(2)
        slow.join(30)
        assert busy.closed and busy.images == [] and busy.texts[0].startswith("busy")
        assert np.allclose(_only_image(results["slow"]).data, expected_sum(1))
        assert [r.status for r in srv.wait_reports(2)] == ["rejected", "ok"]
    finally:
        srv.stop()


def test_sigterm_lets_running_connection_finish_and_exits_zero():
    proc, lines, port = mc.start_server_process("test_server:FAKE_CHAINS", [str(HERE), str(REPO / "tests" / "helpers")],
                                                "--log-level", "INFO", "--shutdown-timeout", "30", cwd=REPO)
    deadline = time.monotonic() + 60
    try:
        results = {}
        client = threading.Thread(target=lambda: results.setdefault("r", mc.run_client(
            "127.0.0.1", port, HEADER_XML, acquisitions(8), config_text="fake", parameters={"delay": 2.0})))
        client.start()
        while not any("running chain" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        refused = False
        for _ in range(40):  # the listener closes at once while the running connection continues
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                refused = True
                break
            time.sleep(0.05)
        client.join(60)
        assert proc.wait(60) == 0, "".join(lines)
        assert refused
        assert np.allclose(_only_image(results["r"]).data, expected_sum(8))
        assert any("status=ok" in line for line in lines), "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_real_summit_chain_on_tiny_fixture():
    """tiny.h5 through the real 'summit' chain: the client asks for summit.xml by name (id 1), the server
    applies config_xml/summit.xml's properties and the JSON override epochs=2; every map series comes back."""
    if not TINY.exists():
        pytest.skip(f"fixture {TINY.relative_to(REPO)} does not exist yet")
    try:
        from qmapinr.gadgets.chains import CHAINS
    except ImportError as exc:
        pytest.skip(f"qmapinr.gadgets.chains not importable yet: {exc}")
    if "summit" not in CHAINS:
        pytest.skip("qmapinr.gadgets.chains.CHAINS has no 'summit' yet")
    header, acqs = mc.read_dataset(str(TINY))
    srv = RunningServer(chains=None, max_connections=1, config_dir=str(REPO / "config_xml"))
    try:
        result = mc.run_client(srv.host, srv.port, header, acqs, config_file="summit.xml",
                               parameters={"epochs": "2"}, timeout=600)
    finally:
        srv.stop()
    assert result.error is None and result.closed, (result.error, result.texts)
    assert not any("error" in t.lower() for t in result.texts), result.texts
    names = {ismrmrd.Meta.deserialize(img.attribute_string).get("MapName"): img.image_series_index
             for img in result.images}
    expected = {"T1", "T2", "T2star", "A", "B0", "Phase0"}
    missing = sorted(expected - set(names))
    assert not missing, f"map series missing: {missing} (got {sorted(names)})"
    assert len(set(names.values())) == len(names) == len(result.images)  # one image per map, distinct series
    for img in result.images:
        assert img.data.dtype == np.float32 and np.isfinite(img.data).all()


def test_process_workers_need_picklable_chains():
    with pytest.raises(ValueError, match="picklable"):
        MRDServer(port=0, chains={"x": lambda connection: None})


@pytest.mark.slow
def test_four_concurrent_clients_on_the_real_summit_chain():
    """Four clients stream tiny.h5 at once to the real 'summit' chain (4 worker processes). Same data, same seed,
    one torch thread each: all four must get the same, complete, finite set of map series."""
    header, acqs = mc.read_dataset(str(TINY))
    srv = RunningServer(chains=None, max_connections=4, config_dir=str(REPO / "config_xml"))
    results: list = [None] * 4
    params = {"epochs": "1", "coil_refine_iters": "1", "threads": "1"}

    def client(i: int) -> None:
        results[i] = mc.run_client(srv.host, srv.port, header, acqs, config_file="summit.xml",
                                   parameters=params, timeout=600)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
    finally:
        srv.stop()
    maps = []
    for r in results:
        assert r is not None and r.error is None and r.closed, (r and r.error, r and r.texts)
        by_name = {ismrmrd.Meta.deserialize(img.attribute_string)["MapName"]: img.data for img in r.images}
        assert {"T1", "T2", "T2star", "A", "B0", "Phase0", "Residual"} <= set(by_name)
        assert all(np.isfinite(v).all() for v in by_name.values())
        maps.append(by_name)
    for other in maps[1:]:
        for name in ("T1", "T2", "A"):
            np.testing.assert_allclose(other[name], maps[0][name], rtol=1e-5, atol=1e-5)

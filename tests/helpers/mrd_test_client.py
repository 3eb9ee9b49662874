"""Independent minimal MRD client for the server tests.

Written against the wire protocol, not against the server's code: framing by hand with ``struct`` (uint16
message id, uint32 length-prefixed texts), ``ismrmrd.Acquisition.serialize_into`` for acquisitions and
``ismrmrd.Image.deserialize_from`` for images. Like ``gadgetron_ismrmrd_client`` it reads in a background
thread while it sends, so a server that answers early (errors, passed-through items) cannot deadlock it.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import ismrmrd

CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT = 1, 2, 3, 4, 5
ACQUISITION, IMAGE = 1008, 1022
ID = struct.Struct("<H")
LENGTH = struct.Struct("<I")


@dataclass
class ClientResult:
    """What came back: images (1022), texts (5), acquisitions echoed (1008), whether CLOSE (4) arrived."""

    images: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    acquisitions: list = field(default_factory=list)
    closed: bool = False
    error: str | None = None


class MRDTestClient:
    """One connection; ``send_*`` frame messages, :meth:`wait` returns everything the server sent."""

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.result = ClientResult()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    # -- sending ---------------------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_config_file(self, name: str) -> None:
        """CONFIG_FILE (1): the name in a fixed 1024-byte NUL-padded field."""
        raw = name.encode()
        assert len(raw) < 1024
        self._send(ID.pack(CONFIG_FILE) + raw + b"\0" * (1024 - len(raw)))

    def send_config_text(self, text: str) -> None:
        """CONFIG_TEXT (2): uint32 length + text, NUL-terminated (as common Python clients do)."""
        raw = text.encode() + b"\0"
        self._send(ID.pack(CONFIG_TEXT) + LENGTH.pack(len(raw)) + raw)

    def send_header(self, xml_text: str) -> None:
        """HEADER (3): uint32 length + ISMRMRD XML, NUL-terminated."""
        raw = xml_text.encode() + b"\0"
        self._send(ID.pack(HEADER) + LENGTH.pack(len(raw)) + raw)

    def send_text(self, text: str) -> None:
        """TEXT (5): uint32 length + UTF-8."""
        raw = text.encode()
        self._send(ID.pack(TEXT) + LENGTH.pack(len(raw)) + raw)

    def send_parameters(self, params: dict) -> None:
        self.send_text(json.dumps(params))

    def send_acquisition(self, acq: ismrmrd.Acquisition) -> None:
        self._send(ID.pack(ACQUISITION))
        acq.serialize_into(self._send)

    def send_close(self) -> None:
        self._send(ID.pack(CLOSE))

    def abort(self) -> None:
        """Disconnect on purpose, without CLOSE."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # -- receiving -------------------------------------------------------------------------------------------
    def _read_exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"server closed the connection ({len(buf)} of {n} bytes)")
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        try:
            while True:
                mid = ID.unpack(self._read_exactly(ID.size))[0]
                if mid == CLOSE:
                    self.result.closed = True
                    return
                if mid == IMAGE:
                    self.result.images.append(ismrmrd.Image.deserialize_from(self._read_exactly))
                elif mid == TEXT:
                    length = LENGTH.unpack(self._read_exactly(LENGTH.size))[0]
                    self.result.texts.append(self._read_exactly(length).decode())
                elif mid == ACQUISITION:
                    self.result.acquisitions.append(ismrmrd.Acquisition.deserialize_from(self._read_exactly))
                else:
                    self.result.error = f"unexpected message id {mid}"
                    return
        except (EOFError, OSError) as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"

    def wait(self, timeout: float = 60.0) -> ClientResult:
        """Wait for the server's CLOSE or EOF (at most ``timeout`` s), close the socket, return the result."""
        self._reader.join(timeout)
        if self._reader.is_alive():
            self.result.error = f"no CLOSE within {timeout} s"
        self.sock.close()
        return self.result


def small_header(nx: int = 8, ny: int = 4, nz: int = 1, channels: int | None = None) -> str:
    """A minimal ISMRMRD XML header (encoded = recon matrix ``nx, ny, nz``; optional ``receiverChannels``)."""
    xsd = ismrmrd.xsd
    space = xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=nz),
                                  fieldOfView_mm=xsd.fieldOfViewMm(x=10 * nx, y=10 * ny, z=5 * nz))
    asi = None if channels is None else xsd.acquisitionSystemInformationType(receiverChannels=channels)
    return xsd.ToXML(xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_000_000),
        acquisitionSystemInformation=asi,
        encoding=[xsd.encodingType(encodedSpace=space, reconSpace=space, encodingLimits=xsd.encodingLimitsType(),
                                   trajectory=xsd.trajectoryType.CARTESIAN)],
    ))


HEADER_XML = small_header()

STREAM_XML = """<?xml version="1.0" encoding="UTF-8"?>
<configuration><version>2</version>
  <readers><reader><dll>gadgetron_core_readers</dll><classname>AcquisitionReader</classname></reader></readers>
  <writers><writer><dll>gadgetron_core_writers</dll><classname>ImageWriter</classname></writer></writers>
  <stream><external>
      <execute name="qmapinr.gadgets.chains" target="summit" type="python"/>
      <configuration><property name="epochs" value="3"/></configuration>
  </external></stream>
</configuration>"""
"""A Gadgetron 4 stream configuration naming the summit chain with one property (epochs 3)."""
"""8 x 4 x 1 matrix, no receiverChannels: what the server tests send."""


class _Capture:
    """Collects the bytes the client's send methods would write to a socket."""

    def __init__(self):
        self.data = b""

    def sendall(self, data):
        self.data += data


def frames(*steps) -> bytes:
    """Bytes of a client session built with this client's framing: ``frames(("send_config_text", "x"), ...)``."""
    client = MRDTestClient.__new__(MRDTestClient)
    client.sock = _Capture()
    for name, *args in steps:
        getattr(client, name)(*args)
    return client.sock.data


def read_dataset(path: str, group: str = "dataset") -> tuple[str, list[ismrmrd.Acquisition]]:
    """Header XML and all acquisitions of an ISMRMRD HDF5 file."""
    dset = ismrmrd.Dataset(path, group, create_if_needed=False)
    try:
        header = dset.read_xml_header()
        header = header.decode() if isinstance(header, bytes) else header
        acqs = [dset.read_acquisition(i) for i in range(dset.number_of_acquisitions())]
    finally:
        dset.close()
    return header, acqs


def run_client(
    host: str,
    port: int,
    header: str,
    acquisitions: Iterable[ismrmrd.Acquisition],
    *,
    config_file: str | None = None,
    config_text: str | None = None,
    parameters: dict | None = None,
    disconnect_after: int | None = None,
    timeout: float = 60.0,
) -> ClientResult:
    """One whole session: config (id 1 if ``config_file`` else id 2), header, optional JSON parameters,
    acquisitions, CLOSE; then wait for the server's CLOSE. ``disconnect_after=k`` sends k acquisitions and
    drops the connection without CLOSE (the result then holds whatever arrived before)."""
    client = MRDTestClient(host, port, timeout)
    try:
        if config_file is not None:
            client.send_config_file(config_file)
        else:
            client.send_config_text(config_text if config_text is not None else "")
        client.send_header(header)
        if parameters is not None:
            client.send_parameters(parameters)
        for i, acq in enumerate(acquisitions):
            if disconnect_after is not None and i >= disconnect_after:
                break
            client.send_acquisition(acq)
        if disconnect_after is not None:
            client.abort()
            return client.result
        client.send_close()
    except OSError as exc:  # the server may close early (errors): keep what it sent
        client.result.error = f"send failed: {exc}"
    return client.wait(timeout)


def _collect(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def start_server_process(chains: str, extra_paths: list[str], *args: str, timeout: float = 60.0, **popen):
    """``python -m qmapinr.gadgets.transport.server --port 0 --chains CHAINS ARGS`` in a subprocess.

    Returns ``(proc, lines, port)``: ``lines`` fills with the server's stderr (a reader thread), ``port`` is parsed
    from its "listening on" line (AssertionError with the log if it does not appear within ``timeout`` s).
    """
    import os
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*extra_paths, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "qmapinr.gadgets.transport.server", "--port", "0", "--chains",
                             chains, *args], stderr=subprocess.PIPE, text=True, env=env, **popen)
    lines: list[str] = []
    threading.Thread(target=_collect, args=(proc.stderr, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if "listening on" in line:
                return proc, lines, int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))

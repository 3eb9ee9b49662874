"""A :class:`gadgetron.external.Connection` for the standalone MRD server (``qmapinr serve``).

Gadgetron 4 talks to an external Python gadget with ``CONFIG(2) HEADER(3) ... CLOSE(4)`` and the shipped
``Connection`` asserts exactly that. Clients that talk to a server directly (``gadgetron_ismrmrd_client``, the
python-ismrmrd-server client and others) differ in three ways, all handled here:

* the configuration is a file name (id 1, a fixed 1024-byte NUL-padded field) or a text (id 2, often
  NUL-terminated): either a bare chain name (``summit``, ``summit.xml``) or a whole Gadgetron stream
  configuration whose ``<external><execute target=...>`` names the chain;
* the header text may be NUL-terminated;
* a TEXT (5) message with JSON parameters may follow the header (stored in :attr:`MRDConnection.parameters`);
  TEXT messages later in the stream are logged and kept in :attr:`MRDConnection.messages`.

The shipped socket wrapper loops forever when the peer closes mid-message; :class:`SocketStream` raises
:class:`ClientDisconnected` instead. A stream that ends without CLOSE (peer gone, or only its sending side
shut down) ends the iteration like CLOSE does, so the chain's buffer stage still emits what was received; the
connection records ``ended_by = "eof"``.
"""

from __future__ import annotations

import json
import logging
import ntpath
import posixpath
import socket
import struct
import time
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any

import ismrmrd
import xsdata.exceptions
from gadgetron.external import Connection
from gadgetron.external import constants as C

logger = logging.getLogger(__name__)

MESSAGE_ID = struct.Struct("<H")
UINT32 = struct.Struct("<I")
CONFIG_FILE_BYTES = 1024  #: size of the fixed CONFIG_FILE (id 1) payload
MAX_TEXT_BYTES = 64 * 1024 * 1024  #: sanity limit for config / header / text payloads (bytes)

MESSAGE_NAMES = {
    C.GADGET_MESSAGE_FILENAME: "CONFIG_FILE",
    C.GADGET_MESSAGE_CONFIG: "CONFIG_TEXT",
    C.GADGET_MESSAGE_HEADER: "HEADER",
    C.GADGET_MESSAGE_CLOSE: "CLOSE",
    C.GADGET_MESSAGE_TEXT: "TEXT",
    C.GADGET_MESSAGE_ISMRMRD_ACQUISITION: "ACQUISITION",
    C.GADGET_MESSAGE_ISMRMRD_IMAGE: "IMAGE",
    C.GADGET_MESSAGE_ISMRMRD_WAVEFORM: "WAVEFORM",
}


class ProtocolError(ValueError):
    """The client sent something the MRD protocol does not allow here (message named in the text)."""


class ClientDisconnected(ConnectionError):
    """The peer closed the connection (EOF while reading, or a failed write)."""


class SocketStream:
    """``read(n)`` / ``write(b)`` over a socket; EOF and write failures raise :class:`ClientDisconnected`.

    Parameters
    ----------
    sock : socket.socket
        Connected TCP socket (owned: :meth:`close` closes it).
    timeout : float or None
        Seconds a single ``recv``/``send`` may block (None: forever). A timeout raises :class:`ProtocolError`.
    """

    def __init__(self, sock: socket.socket, timeout: float | None = None):
        self.socket = sock
        self.socket.settimeout(timeout)
        self.timeout = timeout
        self.bytes_read = 0

    def read(self, nbytes: int) -> bytes:
        chunks, got = [], 0
        while got < nbytes:
            try:
                chunk = self.socket.recv(min(nbytes - got, 1 << 20))
            except TimeoutError as exc:
                raise ProtocolError(f"no data from the client for {self.timeout} s") from exc
            except OSError as exc:
                raise ClientDisconnected(f"read failed: {exc}") from exc
            if not chunk:
                raise ClientDisconnected(f"client closed the connection ({got} of {nbytes} bytes read)")
            chunks.append(chunk)
            got += len(chunk)
        self.bytes_read += got
        return b"".join(chunks)

    def write(self, data: bytes) -> None:
        try:
            self.socket.sendall(data)
        except TimeoutError as exc:
            raise ClientDisconnected(f"client did not read for {self.timeout} s") from exc
        except OSError as exc:
            raise ClientDisconnected(f"write failed: {exc}") from exc

    def close(self, linger: float = 0.0) -> None:
        """Close; with ``linger`` > 0 first shut down the sending side and discard input until the peer
        closes (at most ``linger`` s), so that closing with unread input does not reset the connection before
        the peer has read what was sent (e.g. an error TEXT followed by CLOSE)."""
        if linger > 0:
            try:
                self.socket.shutdown(socket.SHUT_WR)
                self.socket.settimeout(0.2)
                deadline = time.monotonic() + linger
                while time.monotonic() < deadline:
                    try:
                        if not self.socket.recv(1 << 16):
                            break
                    except TimeoutError:
                        continue
            except OSError as exc:
                logger.debug("lingering close: %s", exc)
        self.socket.close()


def write_text(destination: Any, text: str) -> None:
    """Write a TEXT (5) message: uint16 id, uint32 length, UTF-8 bytes (no terminating NUL)."""
    data = text.encode("utf-8")
    destination.write(MESSAGE_ID.pack(C.GADGET_MESSAGE_TEXT) + UINT32.pack(len(data)) + data)


def write_close(destination: Any) -> None:
    """Write a CLOSE (4) message (the uint16 id only)."""
    destination.write(MESSAGE_ID.pack(C.GADGET_MESSAGE_CLOSE))


def read_text_payload(source: Any, what: str) -> bytes:
    """uint32 length + bytes, length-checked; ``what`` names the message in errors."""
    length = UINT32.unpack(source.read(UINT32.size))[0]
    if length > MAX_TEXT_BYTES:
        raise ProtocolError(f"{what} message claims {length} bytes (limit {MAX_TEXT_BYTES}): garbled stream?")
    return source.read(length)


def _decode(payload: bytes, what: str) -> str:
    text = payload.split(b"\0", 1)[0] if what == "CONFIG_FILE" else payload.rstrip(b"\0")
    try:
        return text.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} message is not UTF-8 text: {exc}") from exc


def chain_name_from_file(name: str) -> str:
    """``/path/to/summit.xml`` -> ``summit`` (basename for / or \\ separators, ``.xml`` suffix dropped)."""
    base = ntpath.basename(posixpath.basename(name.strip()))
    if base.lower().endswith(".xml"):
        base = base[:-4]
    if not base:
        raise ProtocolError(f"configuration name {name!r} names no chain")
    return base


def parse_config_text(text: str) -> tuple[str, ET.Element | None]:
    """Chain name and property element from a CONFIG_TEXT payload.

    Parameters
    ----------
    text : str
        Either a bare chain name (``summit`` / ``summit.xml``) or a Gadgetron 4 stream configuration.

    Returns
    -------
    name : str
        The ``target`` of the first ``<external><execute .../>`` element (or the bare name).
    config : xml.etree.ElementTree.Element or None
        The ``<configuration>`` element inside that ``<external>`` (what Gadgetron would send the external
        process: ``<property name=.. value=../>`` children), or None for a bare name.
    """
    text = text.strip()
    if not text.startswith("<"):
        return chain_name_from_file(text), None
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ProtocolError(f"CONFIG_TEXT is neither a chain name nor valid XML: {exc}") from exc
    externals = [e for e in root.iter("external") if e.find("execute") is not None]
    if not externals:
        raise ProtocolError(
            "CONFIG_TEXT XML has no <external><execute target=.../></external> naming the chain; "
            "send the chain name (e.g. 'summit') or a config_xml/*.xml stream configuration"
        )
    if len(externals) > 1:
        logger.warning("config has %d <external> blocks; using the first", len(externals))
    execute = externals[0].find("execute")
    target = (execute.get("target") or "").strip()
    if not target:
        raise ProtocolError("<execute> in CONFIG_TEXT has no target attribute")
    inner = externals[0].find("configuration")
    return target, inner if inner is not None else ET.Element("configuration")


def flatten_parameters(obj: Any, prefix: str = "") -> dict[str, str]:
    """JSON object -> property strings; nested objects become dotted keys (``map_grid.n_levels``)."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"JSON parameters must be an object, got {type(obj).__name__}")
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_parameters(value, name + "."))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, (int, float, str)):
            out[name] = str(value)
        else:
            raise ProtocolError(f"JSON parameter {name!r} has unsupported value {value!r}")
    return out


class MRDConnection(Connection):
    """Server-side connection: handshake (config, header, optional JSON TEXT), then the usual iteration.

    Parameters
    ----------
    sock : socket.socket
        Accepted client socket; owned by the connection (closed by :meth:`close`).
    timeout : float or None
        Per-``recv``/``send`` timeout in seconds (None: wait forever).

    Attributes
    ----------
    chain_name : str
        Chain requested by the client (file name without ``.xml``, or the ``<execute target>``).
    config : xml.etree.ElementTree.Element or None
        ``<configuration>`` element with ``<property name value/>`` children, as under Gadgetron 4.
    header : ismrmrd.xsd.ismrmrdHeader
    parameters : dict[str, str]
        JSON parameters from a TEXT message right after the header (flattened to property strings;
        they override the chain's XML properties). ``{}`` if none was sent.
    messages : list[str]
        TEXT messages received mid-stream (logged, not passed to the chain).
    counts : collections.Counter
        Messages received by id (e.g. ``counts[1008]`` acquisitions).
    images_sent : int
    ended_by : str or None
        ``"close"`` (CLOSE received), ``"eof"`` (stream ended without CLOSE) or None (still running).

    Raises
    ------
    ProtocolError
        Missing or garbled config / header / parameters.
    ClientDisconnected
        The client left during the handshake.
    """

    def __init__(self, sock: socket.socket, timeout: float | None = None):
        # The base __init__ is not called: it wraps the socket in a reader that spins forever on EOF and
        # asserts CONFIG_TEXT first. Everything it sets up is set up here.
        self.socket = sock if isinstance(sock, SocketStream) else SocketStream(sock, timeout)
        self.readers = Connection._default_readers()
        self.writers = Connection._default_writers()
        self.readers[C.GADGET_MESSAGE_TEXT] = self._read_text_message
        self.add_writer(lambda item: isinstance(item, str), write_text)
        self.filters = []
        self.raw_bytes = Connection.Struct(config=None, header=None)
        self.parameters: dict[str, str] = {}
        self.messages: list[str] = []
        self.counts: Counter = Counter()
        self.images_sent = 0
        self.ended_by: str | None = None
        self._pending_mid: int | None = None
        self._closed = False
        self.chain_name, self.config, self.raw_bytes.config = self._read_config()
        self.header, self.raw_bytes.header = self._read_header()
        self._read_parameters()

    # -- handshake -------------------------------------------------------------------------------------------
    def _read_config(self):
        mid = self._read_handshake_id("a configuration")
        if mid == C.GADGET_MESSAGE_FILENAME:
            raw = self.socket.read(CONFIG_FILE_BYTES)
            name = _decode(raw, "CONFIG_FILE")
            logger.debug("CONFIG_FILE %r", name)
            return chain_name_from_file(name), None, raw
        if mid == C.GADGET_MESSAGE_CONFIG:
            raw = read_text_payload(self.socket, "CONFIG_TEXT")
            name, config = parse_config_text(_decode(raw, "CONFIG_TEXT"))
            logger.debug("CONFIG_TEXT names chain %r", name)
            return name, config, raw
        raise ProtocolError(
            f"expected CONFIG_FILE (1) or CONFIG_TEXT (2) as the first message, got {_describe(mid)}"
        )

    def _read_header(self):
        mid = self._read_handshake_id("the header")
        if mid != C.GADGET_MESSAGE_HEADER:
            raise ProtocolError(f"expected HEADER (3) after the configuration, got {_describe(mid)}")
        raw = read_text_payload(self.socket, "HEADER")
        text = _decode(raw, "HEADER")
        if not text:
            raise ProtocolError("HEADER (3) message is empty")
        try:
            return ismrmrd.xsd.CreateFromDocument(text), raw
        except (xsdata.exceptions.ParserError, TypeError, ValueError) as exc:
            raise ProtocolError(f"HEADER (3) is not a valid ISMRMRD header: {exc}") from exc

    def _read_parameters(self) -> None:
        try:
            mid = self._read_message_identifier()
        except ClientDisconnected:
            logger.warning("client closed the connection right after the header")
            self.ended_by = "eof"
            self._pending_mid = C.GADGET_MESSAGE_CLOSE
            return
        if mid != C.GADGET_MESSAGE_TEXT:
            self._pending_mid = mid
            return
        text = _decode(read_text_payload(self.socket, "TEXT"), "TEXT")
        if not text.startswith(("{", "[")):
            logger.info("client text: %s", text)
            self.messages.append(text)
            return
        try:
            params = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"TEXT parameters after the header are not valid JSON: {exc}") from exc
        self.parameters = flatten_parameters(params)
        logger.info("JSON parameters: %s", self.parameters)

    def _read_handshake_id(self, what: str) -> int:
        try:
            return self._read_message_identifier()
        except ClientDisconnected as exc:
            raise ClientDisconnected(f"client closed the connection before sending {what}") from exc

    # -- stream ----------------------------------------------------------------------------------------------
    def _read_message_identifier(self) -> int:
        if self._pending_mid is not None:
            mid, self._pending_mid = self._pending_mid, None
            return mid
        return MESSAGE_ID.unpack(self.socket.read(MESSAGE_ID.size))[0]

    def _read_text_message(self, source) -> str:
        return _decode(read_text_payload(source, "TEXT"), "TEXT")

    def _read_item(self):
        if self.ended_by is not None:
            raise StopIteration()
        while True:
            try:
                mid = self._read_message_identifier()
                if mid == C.GADGET_MESSAGE_CLOSE:
                    self.ended_by = "close"
                    logger.debug("CLOSE received")
                    raise StopIteration()
                reader = self.readers.get(mid)
                if reader is None:
                    raise ProtocolError(f"unexpected message {_describe(mid)} in the data stream")
                item = reader(self.socket)
            except ClientDisconnected as exc:
                self.ended_by = "eof"
                logger.warning("stream ended without CLOSE (%s); processing what was received", exc)
                raise StopIteration() from exc
            self.counts[mid] += 1
            if mid == C.GADGET_MESSAGE_TEXT:
                logger.info("client text: %s", item)
                self.messages.append(item)
                continue
            return mid, item

    # -- sending ---------------------------------------------------------------------------------------------
    def send(self, item) -> None:
        """Send an item (Image, Acquisition, ..., or ``str`` as TEXT); raises :class:`ClientDisconnected`."""
        super().send(item)
        if isinstance(item, ismrmrd.Image):
            self.images_sent += 1

    def send_text(self, text: str) -> None:
        """Send a TEXT (5) message (status or error for the client)."""
        write_text(self.socket, text)

    def close(self, linger: float = 2.0) -> None:
        """Send CLOSE (4) once (a failure is logged: the client may be gone), then close the socket,
        discarding unread input for at most ``linger`` s (see :meth:`SocketStream.close`)."""
        if self._closed:
            return
        self._closed = True
        try:
            write_close(self.socket)
        except ClientDisconnected as exc:
            logger.info("could not send CLOSE: %s", exc)
            linger = 0.0
        self.socket.close(linger)

    def __exit__(self, *exception_info) -> None:
        self.close()


def _describe(mid: int) -> str:
    return f"{MESSAGE_NAMES.get(mid, 'unknown')} ({mid})"

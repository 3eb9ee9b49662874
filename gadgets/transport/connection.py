"""Server-side MRD connection for ``qmapinr serve``, built on :mod:`qmapinr.gadgets.transport.codec`.

Gadgetron 4 talks to an external Python gadget with ``CONFIG(2) HEADER(3) ... CLOSE(4)``. Clients that talk to a
server directly (``gadgetron_ismrmrd_client``, the python-ismrmrd-server client and others) differ in three ways,
all handled here:

* the configuration is a file name (id 1, a fixed 1024-byte NUL-padded field) or a text (id 2, often
  NUL-terminated): either a bare chain name (``summit``, ``summit.xml``) or a whole Gadgetron stream
  configuration whose ``<external><execute target=...>`` names the chain;
* the header text may be NUL-terminated;
* a TEXT (5) message with JSON parameters may follow the header (stored in :attr:`MRDConnection.parameters`);
  TEXT messages later in the stream are logged and kept in :attr:`MRDConnection.messages`.

:class:`MRDConnection` is duck-type compatible with ``gadgetron.external.Connection`` for the chains
(``config``, ``header``, iteration, ``iter_with_mids``, ``filter``, ``send``, ``add_writer``) but does not derive
from it: framing, limits and text sizes come from the one codec. Safety rules of the service (issue 12):

* **deadlines** - :class:`SocketStream` bounds every read by the idle timeout *and* by an overall deadline (the
  handshake deadline, then the stream deadline), so a client that trickles bytes cannot hold a slot;
* **allocation after checks** - an acquisition header (340 bytes) is checked against the XML header (channels,
  samples, trajectory dimensions) and against the stream budget *before* its data buffer is allocated;
* **honest endings** - a stream that ends without CLOSE raises :class:`ClientDisconnected` (nothing is
  reconstructed for a client that left); an IMAGE or any other non-acquisition message from the client is refused
  with :class:`ProtocolError`.
"""

from __future__ import annotations

import json
import logging
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from typing import Any

import ismrmrd
import numpy as np
import xsdata.exceptions

from qmapinr.gadgets.transport import codec
from qmapinr.gadgets.transport.handshake import (
    ACQ_HEADER_BYTES,
    MAX_NOISE_SAMPLES,
    acquisition_bounds,
    chain_name_from_file,
    decode_text,
    flatten_parameters,
    parse_config_text,
    read_text_payload,
)
from qmapinr.gadgets.transport.socketstream import (  # noqa: F401  (the connection's public error vocabulary)
    WRITE_BUSY,
    WRITE_CLOSED,
    WRITE_IDLE,
    ClientDisconnected,
    DeadlineExceeded,
    ProtocolError,
    SocketStream,
)

logger = logging.getLogger(__name__)

_REFUSED = {codec.IMAGE: "IMAGE (1022)", 1026: "WAVEFORM (1026)", codec.CONFIG_FILE: "CONFIG_FILE (1)",
            codec.CONFIG_TEXT: "CONFIG_TEXT (2)", codec.HEADER: "HEADER (3)"}


class MRDConnection:
    """Server-side connection: handshake (config, header, optional JSON TEXT), then the acquisition stream.

    Parameters
    ----------
    sock : socket.socket or SocketStream
        Accepted client socket; owned by the connection (closed by :meth:`close`).
    timeout : float or None
        Per-``recv``/``send`` timeout in seconds (None: wait forever).
    handshake_timeout : float or None
        Seconds from construction until config + header (+ parameters) must have arrived.
    stream_timeout : float or None
        Seconds from construction until the client's CLOSE must have arrived.
    max_channels : int or None
        Upper bound on ``active_channels`` (None: from the XML header, :func:`acquisition_bounds`).

    Attributes
    ----------
    chain_name : str
    config : xml.etree.ElementTree.Element or None
        ``<configuration>`` element with ``<property name value/>`` children, as under Gadgetron 4.
    header : ismrmrd.xsd.ismrmrdHeader
    parameters : dict[str, str]
        JSON parameters from a TEXT message right after the header (flattened to property strings).
    messages : list[str]
        TEXT messages received mid-stream (logged, not passed to the chain).
    counts : collections.Counter
        Messages received by id (``counts[1008]`` acquisitions); ``noise`` counts noise acquisitions.
    images_sent : int
    ended_by : str or None
        ``"close"`` once CLOSE was received, else None.
    close_time : float or None
        ``time.monotonic()`` when CLOSE was received.
    max_stream_bytes : int or None
        Acquisition data bytes (header + trajectory + samples) the stream may carry; set by the chain's admission
        through :meth:`set_budget`. A larger stream is refused before the acquisition is allocated.
    on_acquisition : callable or None
        Called with every accepted acquisition (the server's ``--save-stream`` tee).

    Raises
    ------
    ProtocolError
        Missing or garbled config / header / parameters, or a deadline passed.
    ClientDisconnected
        The client left during the handshake.
    """

    def __init__(self, sock, timeout: float | None = None, *, handshake_timeout: float | None = None,
                 stream_timeout: float | None = None, max_channels: int | None = None):
        self.socket = sock if isinstance(sock, SocketStream) else SocketStream(sock, timeout)
        start = time.monotonic()
        self.stream_deadline = None if stream_timeout is None else start + stream_timeout
        self.filters: list[Callable[[Any], bool]] = []
        self.writers: list[tuple[Callable[[Any], bool], Callable[[Any, Any], None]]] = [
            (lambda item: isinstance(item, ismrmrd.Image), codec.send_image),
            (lambda item: isinstance(item, ismrmrd.Acquisition), codec.send_acquisition),
            (lambda item: isinstance(item, str), codec.send_text),
        ]
        self.parameters: dict[str, str] = {}
        self.messages: list[str] = []
        self.counts: Counter = Counter()
        self.images_sent = 0
        self.ended_by: str | None = None
        self.close_time: float | None = None
        self.max_stream_bytes: int | None = None
        self.stream_bytes = 0
        self.on_acquisition: Callable[[ismrmrd.Acquisition], None] | None = None
        self.config_text: str = ""
        self._pending_mid: int | None = None
        self._closed = False
        if handshake_timeout is not None:
            self._set_deadline(start + handshake_timeout, "handshake")
        self.chain_name, self.config = self._read_config()
        self.header, self.header_text = self._read_header()
        self.raw_bytes = type("RawBytes", (), {"config": self.config_text.encode(),
                                               "header": self.header_text.encode()})()
        self.max_channels, self.max_samples = acquisition_bounds(self.header)
        if max_channels is not None:
            self.max_channels = min(self.max_channels, max_channels)
        self._read_parameters()
        self._set_deadline(self.stream_deadline, "stream")

    def _set_deadline(self, deadline: float | None, what: str) -> None:
        self.socket.deadline, self.socket.deadline_what = deadline, what

    def set_budget(self, max_stream_bytes: int | None) -> None:
        """Bound the acquisition bytes of the stream (the chain's admission control calls this)."""
        self.max_stream_bytes = max_stream_bytes

    # -- handshake -------------------------------------------------------------------------------------------
    def _read_id(self, what: str) -> int:
        if self._pending_mid is not None:
            mid, self._pending_mid = self._pending_mid, None
            return mid
        try:
            return codec.MESSAGE_ID.unpack(self.socket.read(codec.MESSAGE_ID.size))[0]
        except ClientDisconnected as exc:
            raise ClientDisconnected(f"client closed the connection before sending {what}") from exc

    def _read_config(self) -> tuple[str, ET.Element | None]:
        mid = self._read_id("a configuration")
        if mid == codec.CONFIG_FILE:
            name = decode_text(self.socket.read(codec.CONFIG_FILE_SIZE), "CONFIG_FILE")
            logger.debug("CONFIG_FILE %r", name)
            self.config_text = name
            return chain_name_from_file(name), None
        if mid == codec.CONFIG_TEXT:
            self.config_text = decode_text(read_text_payload(self.socket, "CONFIG_TEXT"), "CONFIG_TEXT")
            name, config = parse_config_text(self.config_text)
            logger.debug("CONFIG_TEXT names chain %r", name)
            return name, config
        raise ProtocolError(f"expected CONFIG_FILE (1) or CONFIG_TEXT (2) as the first message, got {_describe(mid)}")

    def _read_header(self):
        mid = self._read_id("the header")
        if mid != codec.HEADER:
            raise ProtocolError(f"expected HEADER (3) after the configuration, got {_describe(mid)}")
        text = decode_text(read_text_payload(self.socket, "HEADER"), "HEADER")
        if not text:
            raise ProtocolError("HEADER (3) message is empty")
        try:
            header = ismrmrd.xsd.CreateFromDocument(text)
        except (xsdata.exceptions.ParserError, TypeError, ValueError) as exc:
            raise ProtocolError(f"HEADER (3) is not a valid ISMRMRD header: {exc}") from exc
        if not header.encoding:
            raise ProtocolError("HEADER (3) has no <encoding>")
        return header, text

    def _read_parameters(self) -> None:
        try:
            mid = self._read_id("data")
        except ClientDisconnected as exc:
            raise ClientDisconnected("client closed the connection right after the header") from exc
        if mid != codec.TEXT:
            self._pending_mid = mid
            return
        text = decode_text(read_text_payload(self.socket, "TEXT"), "TEXT")
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

    # -- stream ----------------------------------------------------------------------------------------------
    def _read_acquisition(self) -> ismrmrd.Acquisition:
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(self.socket.read(ACQ_HEADER_BYTES))
        n = self.counts[codec.ACQUISITION]
        channels, samples, traj = int(head.active_channels), int(head.number_of_samples), \
            int(head.trajectory_dimensions)
        if not 1 <= channels <= self.max_channels:
            raise ProtocolError(f"acquisition {n} declares {channels} channels; the header allows 1.."
                                f"{self.max_channels} (acquisitionSystemInformation.receiverChannels)")
        noise = bool(head.flags & (1 << (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1)))
        if not 1 <= samples <= (max(self.max_samples, MAX_NOISE_SAMPLES) if noise else self.max_samples):
            raise ProtocolError(f"acquisition {n} declares {samples} samples; the header's matrix allows at most "
                                f"{self.max_samples} (2 x encoded matrixSize.x)")
        if traj > 3:
            raise ProtocolError(f"acquisition {n} declares {traj} trajectory dimensions (at most 3)")
        nbytes = samples * (traj * 4 + channels * 8)
        self.stream_bytes += ACQ_HEADER_BYTES + nbytes
        if self.max_stream_bytes is not None and self.stream_bytes > self.max_stream_bytes:
            raise ProtocolError(
                f"stream exceeds the memory budget after {n} acquisitions: more than "
                f"{self.max_stream_bytes / 2**10:.0f} KiB of acquisition data for this header and configuration")
        acq = ismrmrd.Acquisition(head)
        if traj:
            acq.traj[:] = np.frombuffer(self.socket.read(samples * traj * 4), np.float32).reshape(samples, traj)
        acq.data[:] = np.frombuffer(self.socket.read(samples * channels * 8), np.complex64).reshape(channels, samples)
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self.counts["noise"] += 1
        return acq

    def _read_item(self):
        if self.ended_by is not None:
            raise StopIteration()
        while True:
            try:
                mid = self._read_id("CLOSE")
            except ClientDisconnected as exc:
                raise ClientDisconnected(f"stream ended without CLOSE after {self.counts[codec.ACQUISITION]} "
                                         f"acquisitions ({exc})") from exc
            if mid == codec.CLOSE:
                n = self.counts[codec.ACQUISITION]
                if self.socket.client_left(f"qmapinr: stream of {n} acquisitions received; reconstructing"):
                    raise ClientDisconnected(f"client left right after its CLOSE ({self.counts[codec.ACQUISITION]} "
                                             "acquisitions): nobody to send maps to")
                self.ended_by = "close"
                self.close_time = time.monotonic()
                self._set_deadline(None, "session")
                logger.debug("CLOSE received")
                raise StopIteration()
            if mid == codec.ACQUISITION:
                item = self._read_acquisition()
                self.counts[mid] += 1
                if self.on_acquisition is not None:
                    self.on_acquisition(item)
                return mid, item
            if mid == codec.TEXT:
                text = decode_text(read_text_payload(self.socket, "TEXT"), "TEXT")
                self.counts[mid] += 1
                logger.info("client text: %s", text)
                self.messages.append(text)
                continue
            if mid in _REFUSED:
                raise ProtocolError(f"{_REFUSED[mid]} from the client is not accepted in the data stream: this "
                                    "server reconstructs ACQUISITION (1008) messages only")
            raise ProtocolError(f"unknown message id {mid} in the data stream")

    def next(self):
        """(message id, item) of the next item passing :meth:`filter`; others are sent back to the client."""
        mid, item = self._read_item()
        while not all(pred(item) for pred in self.filters):
            self.send(item)
            mid, item = self._read_item()
        return mid, item

    def __next__(self):
        return self.next()

    def __iter__(self):
        while True:
            try:
                _, item = self.next()
            except StopIteration:
                return
            yield item

    def iter_with_mids(self):
        while True:
            try:
                yield self.next()
            except StopIteration:
                return

    def filter(self, predicate) -> None:
        """Keep only items matching ``predicate`` (a type or a callable); others go back to the client."""
        if isinstance(predicate, type):
            self.filters.append(lambda o, t=predicate: isinstance(o, t))
        else:
            self.filters.append(predicate)

    # -- sending ---------------------------------------------------------------------------------------------
    def add_writer(self, accepts: Callable[[Any], bool], writer: Callable[..., None], *args, **kwargs) -> None:
        """Writer for items ``accepts(item)`` selects: ``writer(stream, item, *args, **kwargs)`` (tried first)."""
        self.writers.insert(0, (accepts, lambda dest, item: writer(dest, item, *args, **kwargs)))

    def send(self, item) -> None:
        """Send an item (Image, Acquisition, or ``str`` as TEXT); raises :class:`ClientDisconnected`."""
        for accepts, writer in self.writers:
            if accepts(item):
                writer(self.socket, item)
                if isinstance(item, ismrmrd.Image):
                    self.images_sent += 1
                return
        raise TypeError(f"no writer for an item of type {type(item).__name__}")

    def send_text(self, text: str) -> None:
        """Send a TEXT (5) message (status or error for the client)."""
        codec.send_text(self.socket, text)

    def close(self, linger: float = 2.0) -> None:
        """Send CLOSE (4) once (a failure is logged: the client may be gone), then close the socket,
        discarding unread input for at most ``linger`` s (see :meth:`SocketStream.close`)."""
        if self._closed:
            return
        self._closed = True
        try:
            codec.send_close(self.socket)
            if self.socket.state is not None:
                self.socket.state.value = WRITE_CLOSED
        except ClientDisconnected as exc:
            logger.info("could not send CLOSE: %s", exc)
            linger = 0.0
        self.socket.close(linger)

    def __enter__(self):
        return self

    def __exit__(self, *exception_info) -> None:
        self.close()


def _describe(mid: int) -> str:
    return f"{codec.MESSAGE_NAMES.get(mid, 'unknown')} ({mid})"

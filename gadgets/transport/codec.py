"""Framing of the Gadgetron / MRD streaming protocol, written against the protocol itself.

Every message starts with a little-endian ``uint16`` message id. Payloads (verified against ismrmrd 1.15's
``ismrmrd.serialization`` and the ``gadgetron`` 1.4.1 package's ``external`` readers/writers):

==================  ====  ===========================================================================
message             id    payload
==================  ====  ===========================================================================
CONFIG_FILE         1     fixed 1024 bytes, NUL-padded file name
CONFIG_TEXT         2     ``uint32`` length + UTF-8 XML text (the ``<configuration>`` element)
HEADER              3     ``uint32`` length + UTF-8 ISMRMRD XML header
CLOSE               4     none
TEXT                5     ``uint32`` length + UTF-8 text
ACQUISITION         1008  AcquisitionHeader (340 bytes) + trajectory float32 + data complex64
IMAGE               1022  ImageHeader (198 bytes) + ``uint64`` attribute length + attribute XML + data
==================  ====  ===========================================================================

Text payloads are sent without a terminating NUL; on reading, trailing NULs (which some MRD clients send) are
stripped. The send functions accept a socket (``sendall``) or any binary file-like object (``write``).
"""

from __future__ import annotations

import ctypes
import struct
import xml.etree.ElementTree as ET
from typing import BinaryIO

import ismrmrd
import numpy as np

CONFIG_FILE = 1
CONFIG_TEXT = 2
HEADER = 3
CLOSE = 4
TEXT = 5
ACQUISITION = 1008
IMAGE = 1022

MESSAGE_NAMES = {
    CONFIG_FILE: "CONFIG_FILE", CONFIG_TEXT: "CONFIG_TEXT", HEADER: "HEADER", CLOSE: "CLOSE", TEXT: "TEXT",
    ACQUISITION: "ACQUISITION", IMAGE: "IMAGE",
}

CONFIG_FILE_SIZE = 1024
MAX_TEXT_BYTES = 1 << 28
"""Largest text / attribute payload accepted (256 MiB): a larger length prefix means a corrupt stream."""

MESSAGE_ID = struct.Struct("<H")
"""uint16 message id that starts every message."""
UINT32 = struct.Struct("<I")
"""uint32 length prefix of text payloads."""
_ID, _U32 = MESSAGE_ID, UINT32
_U64 = struct.Struct("<Q")


class WireError(RuntimeError):
    """The byte stream does not follow the protocol (unknown message id, impossible length)."""


class TruncatedStreamError(WireError, EOFError):
    """The stream ended in the middle of a message, or before a CLOSE message."""


# ---------------------------------------------------------------------------------------------------- writing


def _write(dest, data) -> None:
    if hasattr(dest, "sendall"):
        dest.sendall(data)
    else:
        dest.write(data)


def _send_string(dest, mid: int, text: str | bytes) -> None:
    payload = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    _write(dest, _ID.pack(mid) + _U32.pack(len(payload)) + payload)


def send_config_file(dest, name: str) -> None:
    """CONFIG_FILE (1): the name of a configuration known to the receiver, NUL-padded to 1024 bytes."""
    raw = name.encode("utf-8")
    if len(raw) >= CONFIG_FILE_SIZE:
        raise ValueError(f"config file name is {len(raw)} bytes; at most {CONFIG_FILE_SIZE - 1} fit")
    _write(dest, _ID.pack(CONFIG_FILE) + raw + b"\x00" * (CONFIG_FILE_SIZE - len(raw)))


def send_config_text(dest, xml_text: str | bytes) -> None:
    """CONFIG_TEXT (2): ``<configuration>`` XML (see :func:`config_xml`)."""
    _send_string(dest, CONFIG_TEXT, xml_text)


def send_header(dest, xml_text: str | bytes) -> None:
    """HEADER (3): the ISMRMRD XML header (trailing NULs are removed before sending)."""
    if isinstance(xml_text, bytes):
        xml_text = xml_text.rstrip(b"\x00")
    else:
        xml_text = xml_text.rstrip("\x00")
    _send_string(dest, HEADER, xml_text)


def send_text(dest, text: str) -> None:
    """TEXT (5): free text (e.g. JSON parameters or a log line)."""
    _send_string(dest, TEXT, text)


def send_acquisition(dest, acq: ismrmrd.Acquisition) -> None:
    """ACQUISITION (1008): ``acq.serialize_into`` framed by its id, written in one call."""
    parts = [_ID.pack(ACQUISITION)]
    acq.serialize_into(lambda b: parts.append(bytes(b)))
    _write(dest, b"".join(parts))


def send_image(dest, image: ismrmrd.Image) -> None:
    """IMAGE (1022): ``image.serialize_into`` framed by its id, written in one call."""
    parts = [_ID.pack(IMAGE)]
    image.serialize_into(lambda b: parts.append(bytes(b)))
    _write(dest, b"".join(parts))


def send_close(dest) -> None:
    """CLOSE (4): end of this side's stream."""
    _write(dest, _ID.pack(CLOSE))


def config_xml(properties: dict[str, str] | None = None) -> str:
    """``<configuration><property name=".." value=".."/>...</configuration>`` (values escaped)."""
    root = ET.Element("configuration")
    for name, value in (properties or {}).items():
        ET.SubElement(root, "property", name=str(name), value=str(value))
    return ET.tostring(root, encoding="unicode")


# ---------------------------------------------------------------------------------------------------- reading


def read_exactly(src: BinaryIO, n: int, what: str = "data") -> bytes:
    """Read exactly ``n`` bytes from a buffered binary stream; raise :class:`TruncatedStreamError` on EOF."""
    if n == 0:
        return b""
    chunks = []
    got = 0
    while got < n:
        chunk = src.read(n - got)
        if not chunk:
            raise TruncatedStreamError(f"stream ended inside {what}: got {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks) if len(chunks) > 1 else chunks[0]


def _read_string(src: BinaryIO, what: str) -> str:
    (length,) = _U32.unpack(read_exactly(src, 4, f"{what} length"))
    if length > MAX_TEXT_BYTES:
        raise WireError(f"{what} length prefix {length} exceeds {MAX_TEXT_BYTES} bytes: corrupt stream")
    return read_exactly(src, length, f"{what} payload ({length} bytes)").decode("utf-8").rstrip("\x00")


def _read_image(src: BinaryIO) -> ismrmrd.Image:
    head = read_exactly(src, ctypes.sizeof(ismrmrd.ImageHeader), "IMAGE header")
    (attr_len,) = _U64.unpack(read_exactly(src, 8, "IMAGE attribute length"))
    if attr_len > MAX_TEXT_BYTES:
        raise WireError(f"IMAGE attribute length {attr_len} exceeds {MAX_TEXT_BYTES} bytes: corrupt stream")
    raw_attributes = read_exactly(src, attr_len, "IMAGE attributes").rstrip(b"\x00")
    try:
        image = ismrmrd.Image(head, raw_attributes.decode("utf-8"))
    except (ET.ParseError, UnicodeDecodeError, AssertionError) as exc:
        raise WireError(f"IMAGE attribute string is not ISMRMRD meta XML: {exc}") from exc
    nbytes = image.data.nbytes
    raw = read_exactly(src, nbytes, f"IMAGE data ({nbytes} bytes)")
    image.data.ravel()[:] = np.frombuffer(raw, dtype=image.data.dtype)
    return image


def _read_acquisition(src: BinaryIO) -> ismrmrd.Acquisition:
    return ismrmrd.Acquisition.deserialize_from(lambda n: read_exactly(src, n, "ACQUISITION"))


def read_message(src: BinaryIO):
    """Read one message from a buffered binary stream (e.g. ``sock.makefile('rb')``).

    Returns
    -------
    (mid, payload) : ``IMAGE`` -> ``ismrmrd.Image``; ``TEXT``, ``CONFIG_TEXT``, ``CONFIG_FILE``, ``HEADER`` ->
    str (trailing NULs stripped); ``ACQUISITION`` -> ``ismrmrd.Acquisition``; ``CLOSE`` -> None.

    Raises
    ------
    TruncatedStreamError
        EOF before a message id (the peer closed without CLOSE) or in the middle of a message.
    WireError
        An unknown message id or an impossible length prefix.
    """
    first = src.read(2)
    if not first:
        raise TruncatedStreamError("stream ended before a CLOSE (4) message")
    mid_bytes = first if len(first) == 2 else first + read_exactly(src, 2 - len(first), "message id")
    (mid,) = _ID.unpack(mid_bytes)
    if mid == CLOSE:
        return mid, None
    if mid == IMAGE:
        return mid, _read_image(src)
    if mid == ACQUISITION:
        return mid, _read_acquisition(src)
    if mid in (TEXT, CONFIG_TEXT, HEADER):
        return mid, _read_string(src, MESSAGE_NAMES[mid])
    if mid == CONFIG_FILE:
        raw = read_exactly(src, CONFIG_FILE_SIZE, "CONFIG_FILE payload")
        return mid, raw.split(b"\x00", 1)[0].decode("utf-8")
    raise WireError(f"unknown message id {mid}; this reader handles {sorted(MESSAGE_NAMES)}")

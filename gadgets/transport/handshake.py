"""Handshake payloads of an MRD stream: config names, stream configurations, JSON parameters, acquisition bounds.

Pure functions on the bytes/text a client sends before its acquisitions (used by
:class:`qmapinr.gadgets.transport.connection.MRDConnection` and the server's config lookup); errors are
:class:`~qmapinr.gadgets.transport.socketstream.ProtocolError` with a one-line reason.
"""

from __future__ import annotations

import ctypes
import logging
import ntpath
import posixpath
import xml.etree.ElementTree as ET
from typing import Any

import ismrmrd

from qmapinr.gadgets.transport import codec
from qmapinr.gadgets.transport.socketstream import ProtocolError

logger = logging.getLogger(__name__)

ACQ_HEADER_BYTES = ctypes.sizeof(ismrmrd.AcquisitionHeader)
DEFAULT_MAX_CHANNELS = 256
"""Channel bound when the XML header gives no ``receiverChannels``."""

MAX_NOISE_SAMPLES = 16384
"""Samples a noise pre-scan acquisition may declare (its length is free of the imaging matrix)."""


def decode_text(payload: bytes, what: str) -> str:
    """A text payload as a stripped str: CONFIG_FILE up to its first NUL, others without trailing NULs."""
    text = payload.split(b"\0", 1)[0] if what == "CONFIG_FILE" else payload.rstrip(b"\0")
    try:
        return text.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} message is not UTF-8 text: {exc}") from exc


def read_text_payload(source: Any, what: str) -> bytes:
    """uint32 length + bytes; a length above :data:`codec.MAX_TEXT_BYTES` is refused before reading."""
    (length,) = codec.UINT32.unpack(source.read(codec.UINT32.size))
    if length > codec.MAX_TEXT_BYTES:
        raise ProtocolError(f"{what} message claims {length} bytes (limit {codec.MAX_TEXT_BYTES}): "
                            "garbled stream?")
    return source.read(length)


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
        The ``<configuration>`` element inside that ``<external>`` (``<property name=.. value=../>`` children), or
        None for a bare name.
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


def acquisition_bounds(header) -> tuple[int, int]:
    """(max channels, max samples) an acquisition may declare under this XML header.

    Channels: ``acquisitionSystemInformation.receiverChannels`` if given, else :data:`DEFAULT_MAX_CHANNELS`.
    Samples: twice the largest encoded/recon ``matrixSize.x`` (readout oversampling 2), at least 1.
    """
    asi = getattr(header, "acquisitionSystemInformation", None)
    channels = getattr(asi, "receiverChannels", None) or DEFAULT_MAX_CHANNELS
    nx = 1
    for enc in header.encoding or []:
        for space in (enc.encodedSpace, enc.reconSpace):
            if space is not None and space.matrixSize is not None and space.matrixSize.x:
                nx = max(nx, int(space.matrixSize.x))
    return int(channels), 2 * nx

"""Chain entry functions: what Gadgetron 4 (``<execute name="qmapinr.gadgets.chains" target="summit"/>``), the
standalone MRD server and the replay CLI call with a connection.

Every chain is the same generator pipeline over the connection (gadgetron package example style)::

    split_noise -> buffer_kspace -> reconstruct (recon/ solver for this chain) -> maps_to_images -> send

Properties come from the ``<configuration>`` of the ``<external>`` block (``connection.config``) and, on the
standalone server, from JSON parameters of a TEXT message (``connection.parameters``; these win). They are parsed
once into the chain's typed config (:data:`CHAIN_CONFIGS`); an unknown property is an error naming the known ones.

The method switch: the property ``method`` (``summit``, ``lorein``, ``baseline``: a key of the one registry,
:data:`~qmapinr.recon.methods.registry.METHODS`) picks the solver; the entry functions below are presets that only
differ in its default (config_xml/summit.xml, lorein.xml, baseline.xml). A site changes method by editing that one
property in its XML or by sending ``{"method": "lorein"}`` as a JSON parameter. When ``method`` switches away from
the entry's default, properties of another registered method (e.g. SUMMIT's in summit.xml when switching to the
baseline) are ignored with a warning; a property no method knows is still an error.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ismrmrd
from gadgetron.external import Connection as ExternalConnection

from qmapinr.gadgets.properties import properties_from_config
from qmapinr.gadgets.stages import buffer_kspace, maps_to_images, split_noise
from qmapinr.gadgets.threads import session_config
from qmapinr.recon.config import field_names, from_properties
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.methods import budget
from qmapinr.recon.methods.progress import ThrottledProgress
from qmapinr.recon.methods.registry import METHODS, get_method, reconstruct

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 10.0

REPETITION_SERIES_STRIDE = 100
"""Series offset between repeated measurements of one stream (repetition r: series + r * stride)."""

CHAIN_CONFIGS: dict[str, type] = {name: m.config for name, m in METHODS.items()}
"""Chain name -> typed config dataclass whose fields are the chain's properties."""

METHOD_PROPERTY = "method"
"""The one method switch: the property naming the registered method a chain runs."""

DRAIN_LIMIT_S = 60.0
"""After a chain failed on a ``gadgetron.external`` connection: how long it may read the rest of the input."""


@contextlib.contextmanager
def drain_on_failure(connection: Any, limit_s: float = DRAIN_LIMIT_S) -> Iterator[None]:
    """On an exception, read (and drop) the rest of the input up to the peer's CLOSE, then re-raise.

    Why: ``python -m gadgetron`` (Gadgetron 4's external gadget, the replay's subprocess mode) closes the socket
    after the target raised. Closing with unread input makes the kernel reset the connection and drop what is
    still in the gadget's send queue, i.e. images already ``send``-ed before the failure. With the input read
    to its CLOSE (4) the close is an orderly one and everything sent arrives. Only ``gadgetron.external``
    connections are drained (the MRD server closes its own with a linger); at most ``limit_s`` s, after which
    (or on any read error) the original exception goes on as is.
    """
    try:
        yield
    except Exception:
        if isinstance(connection, ExternalConnection):
            _drain(connection, limit_s)
        raise


def _drain(connection: ExternalConnection, limit_s: float) -> None:
    raw = connection.socket.socket
    deadline = time.monotonic() + limit_s
    n = 0
    log.info("chain failed: reading the rest of the input (at most %.0f s) so that what was sent is kept",
             limit_s)
    try:
        while (left := deadline - time.monotonic()) > 0:
            raw.settimeout(left)
            connection.next()  # StopIteration at the peer's CLOSE
            n += 1
        log.warning("input not drained within %.0f s (%d messages read)", limit_s, n)
    except StopIteration:
        log.info("input drained to its CLOSE (%d messages dropped)", n)
    except Exception as exc:  # a broken connection or a timeout: nothing more to do
        log.info("input drain stopped after %d messages: %s: %s", n, type(exc).__name__, exc)
    finally:
        with contextlib.suppress(OSError):
            raw.settimeout(None)


def _text_sink(connection: Any) -> Callable[[str], None]:
    """``connection.send(text)``; a connection without a TEXT writer (gadgetron.external's) gets log lines only."""
    state = {"ok": True}

    def send(text: str) -> None:
        if state["ok"]:
            try:
                connection.send(text)
            except TypeError as exc:  # raised before anything is written
                state["ok"] = False
                log.info("progress stays in the log: this connection cannot send TEXT (%s)", exc)

    return send


def chain_properties(connection: Any) -> dict[str, str]:
    """Properties of the ``<external>`` configuration, overridden by JSON TEXT parameters (server only)."""
    props = properties_from_config(getattr(connection, "config", None))
    props.update({k: str(v) for k, v in (getattr(connection, "parameters", None) or {}).items()})
    return props


def admit_header(connection: Any, chain: str, cfg: Any) -> budget.Limits:
    """Admission control before any data: estimate from the header + config, refuse what exceeds the limits.

    Limits come from ``connection.limits`` (the server's ``--max-memory`` ...) or
    :meth:`~qmapinr.recon.methods.budget.Limits.for_host`. A connection with ``set_budget`` (the server's) is told
    how many acquisition bytes the stream may carry, so that it refuses a stream before allocating beyond the
    limit; ``connection.estimated_seconds`` sizes its deadline.
    """
    limits = getattr(connection, "limits", None) or budget.Limits.for_host()
    dims = budget.dims_from_header(connection.header)
    est = budget.admit(dims, chain, cfg, limits)
    log.info("%s: admitted %dx%dx%d, %d coils: estimated %s before the data (limit %.0f MiB)", chain, dims.nz,
             dims.ny, dims.nx, dims.ncoils, est.describe(), limits.max_memory_bytes / budget.MiB)
    if hasattr(connection, "set_budget"):
        connection.set_budget(budget.max_stream_bytes(dims, chain, cfg, limits))
        connection.estimated_seconds = est.seconds
    return limits


def admit_stage(items: Iterable, header, chain: str, cfg: Any, limits: budget.Limits, connection: Any = None
                ) -> Iterator:
    """Check every buffered KSpace6D (real coil and line counts) against the limits before reconstructing it."""
    for item in items:
        if isinstance(item, KSpace6D):
            est = budget.admit(budget.dims_from_kspace(item), chain, cfg, limits)
            log.info("%s: %d lines buffered; estimated %s", chain, item.nlines, est.describe())
            if connection is not None and hasattr(connection, "set_budget"):
                connection.estimated_seconds = est.seconds
        yield item


def number_repetitions(items: Iterable) -> Iterator:
    """The r-th QuantMaps of a stream (a repeated measurement) gets series offset r * stride."""
    r = 0
    for item in items:
        if isinstance(item, QuantMaps):
            item.series_offset += r * REPETITION_SERIES_STRIDE
            r += 1
        yield item


def tag_repetitions(items: Iterable) -> Iterator:
    """``image.repetition`` = the measurement an image belongs to (from its series index, see above)."""
    for item in items:
        if isinstance(item, ismrmrd.Image):
            item.repetition = (int(item.image_series_index) - 1) // REPETITION_SERIES_STRIDE
        yield item


def reconstruct_stage(items: Iterable, header, chain: str, cfg: Any, progress=None) -> Iterator:
    """KSpace6D -> QuantMaps with the chain's solver; other items pass through; ``progress`` gets the solver's
    :class:`~qmapinr.recon.methods.progress.Progress` reports."""
    for item in items:
        if not isinstance(item, KSpace6D):
            yield item
            continue
        asi = getattr(header, "acquisitionSystemInformation", None)
        if asi is not None and asi.systemFieldStrength_T:
            item.field_strength_t = float(asi.systemFieldStrength_T)  # QSM's Hz -> ppm
        log.info("%s: reconstructing %d lines x %d echoes x %d coils, matrix %s, R=%.2f", chain, item.nlines,
                 item.seq.nte, item.ncoils, item.geometry.matrix, item.acceleration)
        t0 = time.time()
        maps = reconstruct(item, chain, cfg, progress=progress)
        log.info("%s: maps ready in %.1f s", chain, time.time() - t0)
        yield maps
        if maps.info.get("qsm_unavailable"):  # tell the client why there is no QSM series (sent as TEXT)
            yield str(maps.info["qsm_unavailable"])


def select_method(props: dict[str, str], default: str) -> tuple[str, dict[str, str]]:
    """(method, its properties) from the chain properties: ``method`` (default ``default``) picks the solver.

    After a switch away from ``default``, properties that only other registered methods know are dropped (logged).
    """
    props = dict(props)
    method = props.pop(METHOD_PROPERTY, default).strip().lower()
    own = field_names(get_method(method).config)
    if method != default:
        others = set().union(*(field_names(m.config) for n, m in METHODS.items() if n != method))
        dropped = sorted(k for k in props if k not in own and k in others)
        if dropped:
            log.warning("method %s (switched from %s): ignoring properties of other methods %s", method, default,
                        dropped)
        props = {k: v for k, v in props.items() if k not in dropped}
    return method, props


def run_chain(connection: Any, chain: str) -> None:
    """Run the method that the ``method`` property names (default ``chain``) over ``connection`` until CLOSE.

    A failure propagates (the gadget process exits non-zero) after :func:`drain_on_failure`."""
    with drain_on_failure(connection):
        _run_chain(connection, chain)


def _run_chain(connection: Any, chain: str) -> None:
    chain, props = select_method(chain_properties(connection), chain)
    cfg = session_config(from_properties(CHAIN_CONFIGS[chain], props), chain)  # threads
    log.info("%s chain started with %s", chain, cfg)
    limits = admit_header(connection, chain, cfg)
    header = connection.header
    items = split_noise(iter(connection), header)
    items = buffer_kspace(items, header)
    items = admit_stage(items, header, chain, cfg, limits, connection)
    # stage / epoch / loss / ETA as TEXT messages, at most one per PROGRESS_INTERVAL_S (stage changes always)
    progress = ThrottledProgress(_text_sink(connection), PROGRESS_INTERVAL_S)
    items = number_repetitions(reconstruct_stage(items, header, chain, cfg, progress))
    items = tag_repetitions(maps_to_images(items, header))
    sent = 0
    for item in items:
        connection.send(item)
        sent += 1
    log.info("%s chain done: %d items sent", chain, sent)


def summit(connection: Any) -> None:
    """SUMMIT INR reconstruction chain (config_xml/summit.xml)."""
    run_chain(connection, "summit")


def lorein(connection: Any) -> None:
    """LoREIN (low-rank block + SUMMIT's parametric-map INR) chain (config_xml/lorein.xml)."""
    run_chain(connection, "lorein")


def baseline(connection: Any) -> None:
    """Temporal-subspace + TV + dictionary matching baseline chain (config_xml/baseline.xml)."""
    run_chain(connection, "baseline")


CHAINS: dict[str, Callable[[Any], None]] = {"summit": summit, "lorein": lorein, "baseline": baseline}
"""Chain name -> entry function, used by the MRD server to pick a chain from the config name."""

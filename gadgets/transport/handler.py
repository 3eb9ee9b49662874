"""Per-connection side of the standalone MRD server: chain lookup, one client's session, worker processes.

:func:`handle_client` runs one client's whole session over a
:class:`~qmapinr.gadgets.transport.connection.MRDConnection`
(config -> chain -> stream -> CLOSE) and returns a :class:`ConnectionReport`; errors go to the client as TEXT.
:mod:`qmapinr.gadgets.transport.server` owns the listening socket, concurrency limits and shutdown.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmapinr.gadgets.transport.connection import (
    ClientDisconnected,
    MRDConnection,
    ProtocolError,
    SocketStream,
    parse_config_text,
    write_close,
    write_text,
)

logger = logging.getLogger("qmapinr.gadgets.transport.server")

DEFAULT_CHAINS = "qmapinr.gadgets.chains:CHAINS"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(name)s] %(message)s"

ChainSpec = Mapping[str, Callable[[Any], None]] | str | None


class UnknownChainError(LookupError):
    """The configuration names no registered chain."""


class ServerShutdown(Exception):
    """Raised inside a process worker when the server terminates it during shutdown."""


@dataclass
class ConnectionReport:
    """What happened on one connection (logged by the server, kept in :attr:`MRDServer.reports`).

    ``status``: "ok" (CLOSE received, chain finished), "eof" (stream ended without CLOSE; what was received
    was processed), "disconnected" (the client left; sending failed), "error" (sent to the client as TEXT),
    "rejected" (server busy), "crashed" (worker died without a report; ``error`` holds its exit code).
    """

    number: int
    peer: str
    chain: str | None = None
    status: str = "ok"
    acquisitions: int = 0
    images: int = 0
    duration_s: float = 0.0
    error: str | None = None

    def summary(self) -> str:
        text = (f"connection #{self.number} from {self.peer}: chain={self.chain} status={self.status} "
                f"acquisitions={self.acquisitions} images={self.images} duration={self.duration_s:.2f} s")
        return text + (f" error={self.error}" if self.error else "")


def load_chains(spec: ChainSpec = None) -> Mapping[str, Callable[[Any], None]]:
    """Chain registry: a mapping as given, ``"module:ATTRIBUTE"`` imported, None -> the project's CHAINS."""
    if spec is None:
        spec = DEFAULT_CHAINS
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        registry = getattr(importlib.import_module(module), attr or "CHAINS")
        if not isinstance(registry, Mapping):
            raise TypeError(f"{spec} is not a mapping of chain names to functions")
        return registry
    return spec


def resolve_chain(chains: Mapping[str, Callable[[Any], None]], name: str) -> Callable[[Any], None]:
    """Chain function for ``name``: registry key (case-insensitive) or the function's ``__name__``."""
    if name in chains:
        return chains[name]
    for key, func in chains.items():
        if key.lower() == name.lower() or getattr(func, "__name__", None) == name:
            return func
    raise UnknownChainError(f"unknown chain {name!r}; available: {', '.join(sorted(chains)) or 'none'}")


def _config_from_dir(config_dir: str | os.PathLike | None, name: str):
    """(chain name, properties element) from ``config_dir/<name>.xml`` if that file exists, else None."""
    if not config_dir:
        return None
    path = Path(config_dir) / f"{name}.xml"
    if not path.is_file():
        return None
    target, config = parse_config_text(path.read_text(encoding="utf-8"))
    logger.info("configuration %s -> chain %r", path, target)
    return target, config


def handle_client(
    sock: socket.socket,
    peer: str,
    chains: ChainSpec = None,
    *,
    number: int = 0,
    timeout: float | None = None,
    linger: float = 2.0,
    config_dir: str | None = None,
) -> ConnectionReport:
    """Serve one client to the end; never raises (failures go to the client as TEXT and into the report).

    Parameters
    ----------
    sock : socket.socket
        Accepted client socket (closed on return).
    peer : str
        ``host:port`` of the client, for logs.
    chains : mapping, str or None
        Chain registry (see :func:`load_chains`).
    timeout : float or None
        Seconds a single read or write may block.
    linger : float
        Seconds to discard unread client input after CLOSE before closing (lets the client read the CLOSE).
    config_dir : str or None
        Folder of ``<name>.xml`` stream configurations used when the client sent only a name.
    """
    start = time.monotonic()
    report = ConnectionReport(number=number, peer=peer)
    stream = SocketStream(sock, timeout)
    conn: MRDConnection | None = None
    try:
        conn = MRDConnection(stream)
        report.chain = conn.chain_name
        if conn.config is None:
            found = _config_from_dir(config_dir, conn.chain_name)
            if found is not None:
                report.chain, conn.config = found
        chain = resolve_chain(load_chains(chains), report.chain)
        logger.info("connection #%d from %s: running chain %r (parameters %s)", number, peer, report.chain,
                    conn.parameters)
        chain(conn)
        report.status = "eof" if conn.ended_by == "eof" else "ok"
    except ClientDisconnected as exc:
        report.status, report.error = "disconnected", str(exc)
        logger.warning("connection #%d from %s: client gone: %s", number, peer, exc)
    except Exception as exc:  # the boundary of one connection: report to the client, keep serving
        report.status, report.error = "error", f"{type(exc).__name__}: {exc}"
        expected = isinstance(exc, (ProtocolError, UnknownChainError, ServerShutdown))
        logger.error("connection #%d from %s: %s", number, peer, report.error, exc_info=not expected)
        try:
            write_text(stream, f"qmapinr error: {report.error}")
        except ClientDisconnected as send_exc:
            logger.warning("connection #%d: could not send the error to the client: %s", number, send_exc)
    finally:
        if conn is not None:
            report.acquisitions = conn.counts[1008]
            report.images = conn.images_sent
            conn.close(linger)
        else:
            try:
                write_close(stream)
                stream.close(linger)
            except ClientDisconnected:
                stream.close()
        report.duration_s = time.monotonic() - start
    return report


def _raise_shutdown(signum, frame):
    raise ServerShutdown("server shutting down")


def _process_worker(sock, peer, number, chains, options, reports, log_level, thread_env) -> None:
    """Entry of a spawned worker process: serve one client, put the report on ``reports``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_shutdown)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    os.environ.update(thread_env)  # sessions sharing the CPUs (+ explicit threads): the chain picks its threads
    report = handle_client(sock, peer, chains, number=number, **options)
    reports.put(report)


def _reject(sock: socket.socket, message: str, linger: float) -> None:
    stream = SocketStream(sock, timeout=10.0)
    try:
        write_text(stream, message)
        write_close(stream)
        stream.close(linger)
    except ClientDisconnected:
        stream.close()

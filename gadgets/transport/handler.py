"""Per-connection side of the standalone MRD server: chain lookup, one client's session, worker processes.

:func:`handle_client` runs one client's whole session over a
:class:`~qmapinr.gadgets.transport.connection.MRDConnection` (config -> chain -> stream -> CLOSE) and returns a
:class:`ConnectionReport`. Every session ends with maps, or with one TEXT that says why not, then CLOSE: an
exception from the chain, a chain that produced no images (empty stream, only a noise pre-scan), a passed
deadline, a client that left, a server shutdown. :mod:`qmapinr.gadgets.transport.server` owns the listening
socket, concurrency limits, shutdown and the backstop for workers that die (it holds a duplicate of the socket).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import resource
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qmapinr.gadgets.transport import codec
from qmapinr.gadgets.transport.connection import (
    ClientDisconnected,
    MRDConnection,
    SocketStream,
)
from qmapinr.gadgets.transport.handshake import parse_config_text
from qmapinr.gadgets.transport.recorder import StreamRecorder

logger = logging.getLogger(__name__)

DEFAULT_CHAINS = "qmapinr.gadgets.chains:CHAINS"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(name)s] %(message)s"

ChainSpec = Mapping[str, Callable[[Any], None]] | str | None

ABORT_NONE, ABORT_SHUTDOWN, ABORT_DEADLINE, ABORT_GONE = 0, 1, 2, 3
ABORT_TEXT = {ABORT_SHUTDOWN: "server shutting down", ABORT_DEADLINE: "session deadline passed",
              ABORT_GONE: "client gone"}
ABORT_STATUS = {ABORT_SHUTDOWN: "shutdown", ABORT_DEADLINE: "deadline", ABORT_GONE: "gone"}


class UnknownChainError(LookupError):
    """The configuration names no registered chain."""


class ServerShutdown(Exception):
    """Raised inside a process worker when the server terminates it during shutdown."""


class SessionAborted(Exception):
    """The session was stopped from outside the chain (deadline, client gone, shutdown); ``code`` says which."""

    def __init__(self, code: int):
        super().__init__(ABORT_TEXT.get(code, "aborted"))
        self.code = code


class SessionState:
    """Shared memory between the server and one process worker (lock-free ``RawValue`` fields).

    ``abort``: why the server stops the worker (``ABORT_*``; 0 = a SIGTERM is from the process group and is
    ignored); ``write``: :data:`~qmapinr.gadgets.transport.connection.WRITE_IDLE` / ``WRITE_BUSY`` /
    ``WRITE_CLOSED`` (may the server still frame a TEXT on its duplicate of the socket?); ``deadline``
    (``time.monotonic()``, 0 = none yet), ``acquisitions``, ``images`` and ``chain`` for the report of a worker
    that died.
    """

    def __init__(self, ctx=None) -> None:
        ctx = ctx or multiprocessing.get_context("spawn")
        self.abort = ctx.RawValue("i", ABORT_NONE)
        self.write = ctx.RawValue("i", 0)
        self.deadline = ctx.RawValue("d", 0.0)
        self.acquisitions = ctx.RawValue("i", 0)
        self.images = ctx.RawValue("i", 0)
        self.chain = ctx.RawArray("c", 64)


@dataclass
class SessionOptions:
    """Per-session limits of the server (seconds; None = no limit).

    ``timeout``: one read/write; ``handshake_timeout``: connect -> config + header; ``stream_timeout``: connect ->
    the client's CLOSE; ``session_timeout``: connect -> the end of the session (None: sized from the chain's
    estimate, ``compute_factor`` x estimated compute seconds + ``compute_slack`` after CLOSE); ``save_stream``:
    folder for :class:`~qmapinr.gadgets.transport.recorder.StreamRecorder` files; ``limits``: admission limits
    (:class:`qmapinr.recon.methods.budget.Limits`; None = the chain's defaults).
    """

    timeout: float | None = 600.0
    linger: float = 2.0
    config_dir: str | None = None
    handshake_timeout: float | None = 30.0
    stream_timeout: float | None = 1800.0
    session_timeout: float | None = None
    compute_factor: float = 4.0
    compute_slack: float = 120.0
    save_stream: str | None = None
    limits: Any = None
    extra: dict = field(default_factory=dict)


@dataclass
class ConnectionReport:
    """What happened on one connection (logged by the server, kept in :attr:`MRDServer.reports`).

    ``status``: "ok" (maps sent), "empty" (the chain produced no images; the client was told), "disconnected"
    (the client left), "gone" (the client left while the chain ran; the work was stopped), "deadline",
    "shutdown", "error" (sent to the client as TEXT), "rejected" (server busy), "crashed" (the worker died; the
    server told the client if it could; ``error`` holds the exit code).
    """

    number: int
    peer: str
    chain: str | None = None
    status: str = "ok"
    acquisitions: int = 0
    images: int = 0
    duration_s: float = 0.0
    error: str | None = None
    peak_rss_bytes: int = 0
    """Peak resident memory of the process that ran the session (process workers: the worker alone)."""

    def summary(self) -> str:
        text = (f"connection #{self.number} from {self.peer}: chain={self.chain} status={self.status} "
                f"acquisitions={self.acquisitions} images={self.images} duration={self.duration_s:.2f} s "
                f"peak_rss={self.peak_rss_bytes / 2**20:.0f} MiB")
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


def is_user_error(exc: BaseException) -> bool:
    """Validation-type failures (bad data, bad configuration, limits), and every exception class the project
    defines itself (e.g. recon's ``ReconstructionError``): logged as one line, no traceback."""
    own = type(exc).__module__.startswith("qmapinr.")
    return own or isinstance(exc, (ValueError, LookupError, ServerShutdown, SessionAborted, TimeoutError))


class _Watch(threading.Thread):
    """Worker-side watch of a running chain: publishes counts; after CLOSE, stops the chain (SIGUSR1 to the main
    thread) when the client leaves or the deadline passes. Only in process workers (a signal cannot stop a
    thread)."""

    def __init__(self, conn: MRDConnection, state: SessionState | None, opts: SessionOptions, start: float):
        super().__init__(name="qmapinr-session-watch", daemon=True)
        self.conn, self.state, self.opts, self.start_time = conn, state, opts, start
        self.done = threading.Event()
        self.reason = ABORT_NONE

    def deadline(self) -> float | None:
        if self.opts.session_timeout is not None:
            return self.start_time + self.opts.session_timeout
        if self.conn.close_time is None:
            return None
        estimate = float(getattr(self.conn, "estimated_seconds", 0.0) or 0.0)
        return self.conn.close_time + self.opts.compute_factor * estimate + self.opts.compute_slack

    def run(self) -> None:
        while not self.done.wait(0.2):
            if self.state is not None:
                self.state.images.value = self.conn.images_sent
                deadline = self.deadline()
                self.state.deadline.value = deadline or 0.0
            if self.conn.ended_by != "close" or self.done.is_set():
                continue
            deadline = self.deadline()
            if deadline is not None and time.monotonic() > deadline:
                self._stop(ABORT_DEADLINE)
            elif self.conn.socket.client_left("qmapinr: still reconstructing"):
                self._stop(ABORT_GONE)

    def _stop(self, code: int) -> None:
        self.reason = code
        logger.warning("session: %s; stopping the chain", ABORT_TEXT[code])
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        self.done.wait()


_WATCH: list[_Watch] = []


def _on_sigusr1(signum, frame):
    if _WATCH and not _WATCH[0].done.is_set() and _WATCH[0].reason:
        raise SessionAborted(_WATCH[0].reason)


def handle_client(
    sock: socket.socket,
    peer: str,
    chains: ChainSpec = None,
    *,
    number: int = 0,
    options: SessionOptions | None = None,
    state: SessionState | None = None,
    **legacy: Any,
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
    options : SessionOptions
        Timeouts, deadlines, limits, ``save_stream``; keyword arguments of the same names are accepted too.
    state : SessionState or None
        Shared with the server in process workers (enables the watch that stops the chain after CLOSE).
    """
    opts = options or SessionOptions(**legacy)
    start = time.monotonic()
    report = ConnectionReport(number=number, peer=peer)
    stream = SocketStream(sock, opts.timeout, state=None if state is None else state.write)
    conn: MRDConnection | None = None
    watch: _Watch | None = None
    recorder: StreamRecorder | None = None
    try:
        conn = MRDConnection(stream, handshake_timeout=opts.handshake_timeout, stream_timeout=opts.stream_timeout,
                             max_channels=getattr(opts.limits, "max_channels", None))
        report.chain = conn.chain_name
        if conn.config is None:
            found = _config_from_dir(opts.config_dir, conn.chain_name)
            if found is not None:
                report.chain, conn.config = found
        if state is not None:
            state.chain.value = report.chain.encode("utf-8", "replace")[:63]
        conn.limits = opts.limits
        if opts.save_stream:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            recorder = StreamRecorder(Path(opts.save_stream) / f"conn-{number}-{stamp}.h5", conn.header_text,
                                      report.chain, conn.config_text, conn.parameters)
        conn.on_acquisition = _on_acquisition(recorder, state)
        chain = resolve_chain(load_chains(chains), report.chain)
        logger.info("connection #%d from %s: running chain %r (parameters %s)", number, peer, report.chain,
                    conn.parameters)
        if state is not None and threading.current_thread() is threading.main_thread():
            watch = _Watch(conn, state, opts, start)
            _WATCH[:] = [watch]
            watch.start()
        chain(conn)
        if watch is not None:
            watch.done.set()
        if conn.images_sent == 0:
            noise = conn.counts["noise"]
            report.status = "empty"
            report.error = (f"chain {report.chain!r} produced no images from {conn.counts[codec.ACQUISITION]} "
                            f"acquisitions ({noise} noise); nothing to reconstruct")
            conn.send_text(f"qmapinr error: {report.error}")
        else:
            report.status = "ok"
    except ClientDisconnected as exc:
        report.status, report.error = "disconnected", str(exc)
        logger.warning("connection #%d from %s: client gone: %s", number, peer, exc)
        _tell(stream, f"qmapinr error: {exc}; nothing reconstructed", number)
    except (Exception, SessionAborted) as exc:  # the boundary of one connection: report to the client, keep serving
        if watch is not None:
            watch.done.set()
        if isinstance(exc, SessionAborted):
            report.status, report.error = ABORT_STATUS.get(exc.code, "error"), str(exc)
        elif isinstance(exc, ServerShutdown):
            report.status, report.error = "shutdown", str(exc)
        else:
            report.status, report.error = "error", f"{type(exc).__name__}: {exc}"
        trace = not is_user_error(exc) or logger.isEnabledFor(logging.DEBUG)
        logger.error("connection #%d from %s: %s", number, peer, report.error, exc_info=trace)
        _tell(stream, f"qmapinr error: {report.error}", number)
    finally:
        if watch is not None:
            watch.done.set()
        _WATCH[:] = []
        if recorder is not None:
            recorder.close()
        if conn is not None:
            report.acquisitions = conn.counts[codec.ACQUISITION]
            report.images = conn.images_sent
            conn.close(opts.linger)
        else:
            try:
                codec.send_close(stream)
                stream.close(opts.linger)
            except ClientDisconnected:
                stream.close()
        report.duration_s = time.monotonic() - start
        report.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report


def _on_acquisition(recorder: StreamRecorder | None, state: SessionState | None):
    """Per accepted acquisition: save it (``--save-stream``) and count it where the server can read it."""
    if recorder is None and state is None:
        return None

    def hook(acq) -> None:
        if recorder is not None:
            recorder.add(acq)
        if state is not None:
            state.acquisitions.value += 1

    return hook


def _tell(stream: SocketStream, text: str, number: int) -> None:
    try:
        codec.send_text(stream, text)
    except ClientDisconnected as exc:
        logger.info("connection #%d: could not send the error to the client: %s", number, exc)


def _on_sigterm(state: SessionState):
    def handler(signum, frame):
        if state.abort.value:
            raise ServerShutdown(ABORT_TEXT.get(state.abort.value, "server shutting down"))
        logger.info("SIGTERM to the process group: this worker drains (the server decides when to stop it)")

    return handler


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One log line per warning (instead of the two-line ``warnings`` output with the source line)."""
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message,
                                             os.path.basename(filename), lineno)


def configure_worker_logging(log_level: int) -> None:
    """Log format of the server and its workers; Python/numpy warnings become one log line each."""
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    warnings.showwarning = _log_warning


def process_worker(sock, peer, number, chains, options, reports, log_level, thread_env, state) -> None:
    """Entry of a spawned worker process: serve one client, put the report on ``reports``.

    SIGINT is ignored and SIGTERM only stops the session when the server asked for it (``state.abort``), so a
    signal to the whole process group (Ctrl-C, systemd's KillMode) leaves the drain to the server.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm(state))
    signal.signal(signal.SIGUSR1, _on_sigusr1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    configure_worker_logging(log_level)
    os.environ.update(thread_env)  # sessions sharing the CPUs (+ explicit threads): the chain picks its threads
    report = handle_client(sock, peer, chains, number=number, options=options, state=state)
    reports.put(report)


def reject(sock: socket.socket, message: str, linger: float) -> None:
    """TEXT ``message`` + CLOSE to a client that is not served (busy server, worker failure)."""
    stream = SocketStream(sock, timeout=10.0)
    try:
        codec.send_text(stream, message)
        codec.send_close(stream)
        stream.close(linger)
    except ClientDisconnected:
        stream.close()

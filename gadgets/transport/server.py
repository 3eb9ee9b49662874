"""Standalone MRD server: ``qmapinr serve`` runs the project's chains for MRD clients without Gadgetron.

A client connects, sends CONFIG (id 1: a file name such as ``summit.xml``; or id 2: a chain name or a
Gadgetron stream configuration), HEADER (3), optionally a TEXT (5) with JSON parameters, then ACQUISITIONS
(1008) and CLOSE (4); it receives IMAGES (1022), TEXT (5) status/errors and CLOSE (4). The chain named by the
configuration (``qmapinr.gadgets.chains.CHAINS``) runs over a
:class:`qmapinr.gadgets.transport.connection.MRDConnection` exactly as it would under Gadgetron 4's external Python
gadget.

Each client is served in its own ``spawn``-ed process (``workers="thread"``: threads of the server process,
for debugging); why processes and why ``spawn``: docs/service.md.

At most ``max_connections`` clients are served at once. With ``when_busy="wait"`` (default) further clients
are not accepted until a slot frees: they wait in the listen backlog (their connect succeeds, their data waits
in kernel buffers). With ``when_busy="reject"`` they are accepted and immediately get TEXT "busy ..." followed
by CLOSE.

Errors, deadlines, endings and signals: docs/service.md (every session ends with maps or with ONE TEXT that
says why, then CLOSE; deadlines; a dead worker is still answered; SIGTERM drains).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import pickle
import queue
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from qmapinr.gadgets.threads import session_environ
from qmapinr.gadgets.transport import codec
from qmapinr.gadgets.transport.connection import WRITE_BUSY, WRITE_CLOSED, SocketStream
from qmapinr.gadgets.transport.handler import (
    ABORT_DEADLINE,
    ABORT_SHUTDOWN,
    ChainSpec,
    ConnectionReport,
    SessionOptions,
    SessionState,
    configure_worker_logging,
    handle_client,
    process_worker,
    reject,
)
from qmapinr.gadgets.transport.serve_cli import DEFAULT_PORT, add_serve_arguments, server_options

logger = logging.getLogger(__name__)

BACKSTOP_S = 30.0
"""Seconds past a session's deadline after which the server kills a worker that did not stop itself."""

_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass
class _Session:
    worker: Any
    peer: str
    sock: socket.socket | None  # the server's duplicate (process workers): lets it tell the client if the worker dies
    state: SessionState | None
    start: float


def describe_exit(code: int | None) -> str:
    """Exit code of a worker in words (``-9`` -> killed by SIGKILL, e.g. the out-of-memory killer)."""
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (e.g. the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class MRDServer:
    """TCP server running one chain per client connection (see the module docstring for the policy).

    Parameters
    ----------
    host, port : str, int
        Address to listen on (``port=0``: any free port; read :attr:`address` after :meth:`bind`).
    max_connections : int
        Clients served at the same time.
    chains : mapping, "module:ATTRIBUTE" or None
        Chain registry; None imports ``qmapinr.gadgets.chains.CHAINS`` lazily in each worker. With process
        workers a mapping must be picklable (module-level functions).
    workers : {"process", "thread"}
    when_busy : {"wait", "reject"}
    shutdown_timeout : float
        Seconds running connections get to finish after SIGTERM/SIGINT before they are terminated.
    idle_timeout : float or None
        Seconds a single read/write on a client socket may block before the connection is failed.
    linger : float
        Seconds to wait for the client to close after CLOSE was sent.
    config_dir : str or None
        Folder of ``<name>.xml`` configurations applied when a client sends only a chain name.
    threads_per_connection : int or None
        torch/OpenMP threads per connection (default: :func:`qmapinr.gadgets.threads.choose_threads` with
        ``max_connections`` sessions, i.e. usable CPUs // max_connections, at least 1).
    handshake_timeout, stream_timeout, session_timeout : float or None
        Deadlines from connect to the header, to the client's CLOSE, to the end (None: sized from the estimate),
        see :class:`~qmapinr.gadgets.transport.handler.SessionOptions`.
    limits : qmapinr.recon.methods.budget.Limits or None
        Admission limits (``--max-memory`` etc.); None: the defaults (a fraction of the host's RAM).
    save_stream : str or None
        Folder where every received stream is saved as an ISMRMRD file.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_connections: int = 4,
        chains: ChainSpec = None,
        *,
        workers: str = "process",
        when_busy: str = "wait",
        shutdown_timeout: float = 60.0,
        idle_timeout: float | None = 600.0,
        linger: float = 2.0,
        config_dir: str | None = None,
        threads_per_connection: int | None = None,
        handshake_timeout: float | None = 30.0,
        stream_timeout: float | None = 1800.0,
        session_timeout: float | None = None,
        limits: Any = None,
        save_stream: str | None = None,
    ):
        if workers not in ("process", "thread"):
            raise ValueError(f"workers must be 'process' or 'thread', got {workers!r}")
        if when_busy not in ("wait", "reject"):
            raise ValueError(f"when_busy must be 'wait' or 'reject', got {when_busy!r}")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if workers == "process" and chains is not None and not isinstance(chains, str):
            try:
                pickle.dumps(chains)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                hint = "process workers need picklable chains (module-level functions)"
                raise ValueError(f"{hint}: {exc}") from exc
        self.host, self.port, self.max_connections = host, port, max_connections
        self.chains, self.workers, self.when_busy = chains, workers, when_busy
        self.shutdown_timeout = shutdown_timeout
        self.options = SessionOptions(timeout=idle_timeout, linger=linger, config_dir=config_dir,
                                      handshake_timeout=handshake_timeout, stream_timeout=stream_timeout,
                                      session_timeout=session_timeout, save_stream=save_stream, limits=limits)
        self.thread_env = session_environ(max_connections, threads_per_connection)  # read by each session's chain
        if workers == "thread":  # all sessions in this process: its own environment carries the share
            os.environ.update(self.thread_env)
        self.reports: list[ConnectionReport] = []
        self._listener: socket.socket | None = None
        self._active: dict[int, _Session] = {}
        self._exiting: list[Any] = []
        self._count = 0
        self._stop = threading.Event()
        self._force = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._queue = self._ctx.SimpleQueue() if workers == "process" else queue.SimpleQueue()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound."""
        if self._listener is None:
            raise RuntimeError("server is not bound; call bind() first")
        return self._listener.getsockname()[:2]

    @property
    def active(self) -> int:
        """Sessions running now (a slot is free as soon as a session has ended, before its process exits)."""
        return len(self._active)

    def bind(self) -> tuple[str, int]:
        """Create the listening socket (IPv4 or IPv6 by ``host``); returns the bound address."""
        if self._listener is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._listener = socket.create_server((self.host, self.port), family=family,
                                                  backlog=max(16, 4 * self.max_connections))
            logger.info("qmapinr MRD server listening on %s:%d (max %d connections, %s workers)",
                        *self.address, self.max_connections, self.workers)
        return self.address

    def shutdown(self) -> None:
        """Ask :meth:`serve_forever` to stop (graceful; safe from any thread)."""
        self._stop.set()

    def serve_forever(self, stop_event: threading.Event | None = None) -> int:
        """Accept and serve clients until ``stop_event``/:meth:`shutdown`/SIGTERM/SIGINT; returns 0."""
        self.bind()
        stops = [self._stop] + ([stop_event] if stop_event is not None else [])
        previous = self._install_signal_handlers()
        try:
            while not any(s.is_set() for s in stops):
                self._reap()
                if len(self._active) >= self.max_connections and self.when_busy == "wait":
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select([self._listener], [], [], 0.1)
                if readable:
                    self._accept()
        finally:
            self._listener.close()
            self._finish()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        logger.info("qmapinr MRD server stopped after %d connections", self._count)
        return 0

    # -- internals -------------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop.is_set():
                logger.warning("second %s: terminating running connections now", signal.Signals(signum).name)
                self._force.set()
            else:
                logger.info("%s: no new connections; waiting for %d running", signal.Signals(signum).name,
                            len(self._active))
                self._stop.set()

        return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except OSError as exc:
            logger.warning("accept failed: %s", exc)
            return
        self._count += 1
        number, peer = self._count, f"{addr[0]}:{addr[1]}"
        if SocketStream(sock).peer_gone():  # closed or reset before sending anything
            sock.close()
            self._record(ConnectionReport(number, peer, status="gone", error="client left before being served"))
            return
        if len(self._active) >= self.max_connections:
            message = f"busy: {len(self._active)} connections running (max {self.max_connections}); try later"
            logger.warning("connection #%d from %s rejected: %s", number, peer, message)
            threading.Thread(target=reject, args=(sock, message, self.options.linger), daemon=True).start()
            self._record(ConnectionReport(number, peer, status="rejected", error=message))
            return
        logger.info("connection #%d from %s accepted (%d running)", number, peer, len(self._active) + 1)
        state = None
        try:
            if self.workers == "process":
                state = SessionState(self._ctx)
                worker = self._ctx.Process(
                    target=process_worker, name=f"qmapinr-conn-{number}",
                    args=(sock, peer, number, self.chains, self.options, self._queue,
                          logging.getLogger().getEffectiveLevel(), self.thread_env, state),
                )
                # the child starts with SIGTERM/SIGINT blocked and unblocks them once its handlers are installed
                old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
                try:
                    worker.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                keep: socket.socket | None = sock  # the child holds its own duplicate; this one is the backstop
            else:
                worker = threading.Thread(target=self._thread_worker, args=(sock, peer, number),
                                          name=f"qmapinr-conn-{number}", daemon=True)
                worker.start()
                keep = None
        except (OSError, RuntimeError, pickle.PicklingError) as exc:  # e.g. no more processes/threads
            message = f"qmapinr error: could not start a worker: {exc}"
            logger.error("connection #%d from %s: %s", number, peer, message)
            threading.Thread(target=reject, args=(sock, message, 0.0), daemon=True).start()
            self._record(ConnectionReport(number, peer, status="error", error=message))
            return
        self._active[number] = _Session(worker, peer, keep, state, time.monotonic())

    def _thread_worker(self, sock, peer, number) -> None:
        self._queue.put(handle_client(sock, peer, self.chains, number=number, options=self.options))

    def _record(self, report: ConnectionReport) -> None:
        self.reports.append(report)
        level = logging.INFO if report.status in ("ok", "rejected") else logging.WARNING
        logger.log(level, report.summary())

    def _drain_reports(self) -> None:
        while not self._queue.empty():
            report = self._queue.get()
            self._record(report)
            session = self._active.pop(report.number, None)  # the slot is free now, whatever the process does
            if session is not None:
                if session.sock is not None:
                    session.sock.close()
                self._exiting.append(session.worker)

    def _reap(self) -> None:
        self._drain_reports()
        dead = [n for n, s in self._active.items() if not s.worker.is_alive()]
        if dead:
            self._drain_reports()  # a report may have arrived just before the worker exited
        for number in dead:
            session = self._active.pop(number, None)
            if session is not None:
                session.worker.join()
                self._crashed(number, session)
        now = time.monotonic()
        for number, session in list(self._active.items()):
            state = session.state
            if state is not None and state.deadline.value and now > state.deadline.value + BACKSTOP_S:
                logger.warning("connection #%d: %.0f s past its deadline; killing the worker", number,
                               now - state.deadline.value)
                state.abort.value = ABORT_DEADLINE
                session.worker.kill()
        self._exiting = [w for w in self._exiting if w.is_alive() or w.join() or False]

    def _crashed(self, number: int, session: _Session) -> None:
        """A worker ended without a report: tell the client (if the stream allows a TEXT), log a full report."""
        state = session.state
        why = describe_exit(getattr(session.worker, "exitcode", None))
        if state is not None and state.abort.value == ABORT_DEADLINE:
            why = f"session deadline passed; worker {why}"
        message = f"qmapinr error: the reconstruction worker died ({why}); no maps"
        told = False
        if session.sock is not None:
            writing = state.write.value if state is not None else 0
            if writing not in (WRITE_BUSY, WRITE_CLOSED):
                try:
                    stream = SocketStream(session.sock, timeout=5.0)
                    codec.send_text(stream, message)
                    codec.send_close(stream)
                    told = True
                    stream.close(self.options.linger)
                except (OSError, ConnectionError) as exc:
                    logger.info("connection #%d: could not tell the client: %s", number, exc)
            session.sock.close()
        chain = state.chain.value.decode("utf-8", "replace") if state is not None and state.chain.value else None
        self._record(ConnectionReport(
            number, session.peer, chain=chain, status="crashed",
            acquisitions=state.acquisitions.value if state is not None else 0,
            images=state.images.value if state is not None else 0,
            duration_s=time.monotonic() - session.start,
            error=f"worker {why}" + ("" if told else " (client not told: stream was mid-message or closed)")))

    def _finish(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        while self._active and time.monotonic() < deadline and not self._force.is_set():
            self._reap()
            time.sleep(0.05)
        self._reap()
        for number, session in list(self._active.items()):
            if self.workers == "process":
                logger.warning("terminating connection #%d from %s", number, session.peer)
                session.state.abort.value = ABORT_SHUTDOWN
                session.worker.terminate()
                session.worker.join(5.0)
                if session.worker.is_alive():
                    session.worker.kill()
                    session.worker.join()
            else:
                logger.warning("abandoning connection #%d from %s (thread workers cannot be stopped)",
                               number, session.peer)
                self._active.pop(number)
        self._reap()
        for worker in self._exiting:
            worker.join(10.0)
        self._exiting = []


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to a CLI; the parsed namespace runs with :func:`run_serve`."""
    parser = subparsers.add_parser(
        "serve", help="run the standalone MRD server",
        description="Serve MRD clients (gadgetron_ismrmrd_client, python-ismrmrd-server clients) with the "
                    "qmapinr chains; the config name (e.g. summit.xml) picks the chain.",
    )
    add_serve_arguments(parser)
    parser.set_defaults(func=run_serve)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    """Run the server from parsed ``serve`` arguments; returns the process exit code (2: bad options)."""
    configure_worker_logging(getattr(logging, args.log_level))
    try:
        server = MRDServer(**server_options(args))
        server.bind()
    except (ValueError, OSError) as exc:
        logger.error("qmapinr serve: %s", exc, exc_info=logger.isEnabledFor(logging.DEBUG))
        return 2
    return server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """``python -m qmapinr.gadgets.transport.server [options]`` (same options as ``qmapinr serve``)."""
    parser = argparse.ArgumentParser(prog="python -m qmapinr.gadgets.transport.server",
                                     description=__doc__.split("\n")[0])
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: worker processes pickle functions and reports by
    # their module name, which must be importable as qmapinr.gadgets.transport.server on both sides.
    from qmapinr.gadgets.transport import server as _server

    raise SystemExit(_server.main())

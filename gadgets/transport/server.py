"""Standalone MRD server: ``qmapinr serve`` runs the project's chains for MRD clients without Gadgetron.

A client connects, sends CONFIG (id 1: a file name such as ``summit.xml``; or id 2: a chain name or a
Gadgetron stream configuration), HEADER (3), optionally a TEXT (5) with JSON parameters, then ACQUISITIONS
(1008) and CLOSE (4); it receives IMAGES (1022), TEXT (5) status/errors and CLOSE (4). The chain named by the
configuration (``qmapinr.gadgets.chains.CHAINS``) runs over a
:class:`qmapinr.gadgets.transport.connection.MRDConnection` exactly as it would under Gadgetron 4's external Python
gadget.

Concurrency
-----------
Each client is served in its own process (``multiprocessing`` with the ``spawn`` start method; the accepted
socket is handed to the child). The reconstruction is CPU-bound PyTorch with many small Python-level steps per
epoch, so threads would contend for the GIL; separate processes also isolate failures (an exception, a crash
or running out of memory ends one connection, never the server), return all memory when a connection ends, and
let each connection get its own torch thread budget (:mod:`qmapinr.gadgets.threads`: usable CPUs //
max_connections unless set explicitly). ``spawn`` (not ``fork``) because forking a process that may hold
torch/OpenMP thread pools is unsafe; its cost (a fresh interpreter importing the chain, about 1-3 s) is small
next to a reconstruction.
``workers="thread"`` serves clients in threads of the server process instead (for debugging or where processes
are unwanted).

At most ``max_connections`` clients are served at once. With ``when_busy="wait"`` (default) further clients
are not accepted until a slot frees: they wait in the listen backlog (their connect succeeds, their data waits
in kernel buffers). With ``when_busy="reject"`` they are accepted and immediately get TEXT "busy ..." followed
by CLOSE.

Errors and disconnects
----------------------
Any failure of one connection (unknown chain, garbled message, bad header, an exception in the chain) is sent
to that client as a TEXT message followed by CLOSE, logged, and ends only that connection. A client that
disconnects mid-stream ends the stream: the chain's buffer stage still processes everything received (nothing
received is dropped); sending the results then fails, which is logged. Every connection is logged at the end
with its peer, chain, status, acquisitions received, images sent and duration; :attr:`MRDServer.reports` keeps
these records.

Signals
-------
SIGTERM or SIGINT (when serving in the main thread): stop accepting, let running connections finish for up to
``shutdown_timeout`` s, then terminate the remaining workers (a process worker answers its client with TEXT
"server shutting down" and CLOSE), and return 0. A second signal skips the wait. Workers ignore SIGINT, so a
Ctrl-C in a terminal reaches only the server's shutdown logic. Clients still waiting in the listen backlog
when the listener closes are reset by the kernel (they were never accepted).
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
from typing import Any

from qmapinr.gadgets.threads import session_environ
from qmapinr.gadgets.transport.handler import (  # noqa: F401  (re-exported: public names of the server module)
    DEFAULT_CHAINS,
    LOG_FORMAT,
    ChainSpec,
    ConnectionReport,
    ServerShutdown,
    UnknownChainError,
    _process_worker,
    _reject,
    handle_client,
    load_chains,
    resolve_chain,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9002


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
        self.options = {"timeout": idle_timeout, "linger": linger, "config_dir": config_dir}
        self.thread_env = session_environ(max_connections, threads_per_connection)  # read by each session's chain
        if workers == "thread":  # all sessions in this process: its own environment carries the share
            os.environ.update(self.thread_env)
        self.reports: list[ConnectionReport] = []
        self._listener: socket.socket | None = None
        self._active: dict[int, Any] = {}
        self._reported: set[int] = set()
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
        if len(self._active) >= self.max_connections:
            message = f"busy: {len(self._active)} connections running (max {self.max_connections}); try later"
            logger.warning("connection #%d from %s rejected: %s", number, peer, message)
            linger = self.options["linger"]
            threading.Thread(target=_reject, args=(sock, message, linger), daemon=True).start()
            self._record(ConnectionReport(number, peer, status="rejected", error=message))
            return
        logger.info("connection #%d from %s accepted (%d running)", number, peer, len(self._active) + 1)
        try:
            if self.workers == "process":
                worker = self._ctx.Process(
                    target=_process_worker, name=f"qmapinr-conn-{number}",
                    args=(sock, peer, number, self.chains, self.options, self._queue,
                          logging.getLogger().getEffectiveLevel(), self.thread_env),
                )
                worker.start()
                sock.close()  # the child holds its own duplicate
            else:
                worker = threading.Thread(target=self._thread_worker, args=(sock, peer, number),
                                          name=f"qmapinr-conn-{number}", daemon=True)
                worker.start()
        except (OSError, RuntimeError, pickle.PicklingError) as exc:  # e.g. no more processes/threads
            message = f"qmapinr error: could not start a worker: {exc}"
            logger.error("connection #%d from %s: %s", number, peer, message)
            threading.Thread(target=_reject, args=(sock, message, 0.0), daemon=True).start()
            self._record(ConnectionReport(number, peer, status="error", error=message))
            return
        self._active[number] = (worker, peer)

    def _thread_worker(self, sock, peer, number) -> None:
        self._queue.put(handle_client(sock, peer, self.chains, number=number, **self.options))

    def _record(self, report: ConnectionReport) -> None:
        self.reports.append(report)
        level = logging.INFO if report.status in ("ok", "rejected") else logging.WARNING
        logger.log(level, report.summary())

    def _drain_reports(self) -> None:
        while not self._queue.empty():
            report = self._queue.get()
            self._reported.add(report.number)
            self._record(report)

    def _reap(self) -> None:
        finished = [n for n, (w, _) in self._active.items() if not w.is_alive()]
        self._drain_reports()
        for number in finished:
            worker, peer = self._active.pop(number)
            worker.join()
            if number not in self._reported:
                self._drain_reports()  # the report may have arrived after the first drain
            if number not in self._reported:
                self._record(ConnectionReport(number, peer, status="crashed",
                                              error=f"worker exit code {getattr(worker, 'exitcode', None)}"))
            self._reported.discard(number)

    def _finish(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        while self._active and time.monotonic() < deadline and not self._force.is_set():
            self._reap()
            time.sleep(0.05)
        self._reap()
        for number, (worker, peer) in list(self._active.items()):
            if self.workers == "process":
                logger.warning("terminating connection #%d from %s", number, peer)
                worker.terminate()
                worker.join(5.0)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
            else:
                logger.warning("abandoning connection #%d from %s (thread workers cannot be stopped)",
                               number, peer)
                self._active.pop(number)
        self._reap()


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    max_connections: int = 4,
    chains: ChainSpec = None,
    stop_event: threading.Event | None = None,
    **options: Any,
) -> int:
    """Run an :class:`MRDServer` until ``stop_event`` is set or SIGTERM/SIGINT; returns the exit code (0).

    ``options`` are the keyword-only arguments of :class:`MRDServer` (workers, when_busy, shutdown_timeout,
    idle_timeout, linger, config_dir, threads_per_connection).
    """
    server = MRDServer(host, port, max_connections, chains, **options)
    return server.serve_forever(stop_event)


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to a CLI; the parsed namespace runs with :func:`run_serve`."""
    parser = subparsers.add_parser(
        "serve", help="run the standalone MRD server",
        description="Serve MRD clients (gadgetron_ismrmrd_client, python-ismrmrd-server clients) with the "
                    "qmapinr chains; the config name (e.g. summit.xml) picks the chain.",
    )
    _add_serve_arguments(parser)
    parser.set_defaults(func=run_serve)
    return parser


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (default %(default)s; 0 = any free port)")
    parser.add_argument("--max-connections", type=int, default=4, help="clients served at once (default 4)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--when-busy", choices=["wait", "reject"], default="wait",
                        help="extra clients wait in the backlog or get TEXT 'busy' + CLOSE (default wait)")
    parser.add_argument("--workers", choices=["process", "thread"], default="process")
    parser.add_argument("--chains", default=None,
                        help=f"chain registry MODULE:ATTR (default {DEFAULT_CHAINS})")
    parser.add_argument("--config-dir", default=None,
                        help="folder of NAME.xml stream configurations used when a client sends only a name")
    parser.add_argument("--shutdown-timeout", type=float, default=60.0,
                        help="seconds running connections may finish after SIGTERM (default 60)")
    parser.add_argument("--idle-timeout", type=float, default=600.0,
                        help="seconds a read/write on a client may block (default 600; 0 = no limit)")


def run_serve(args: argparse.Namespace) -> int:
    """Run the server from parsed ``serve`` arguments; returns the process exit code."""
    logging.basicConfig(level=getattr(logging, args.log_level), format=LOG_FORMAT)
    return serve(
        host=args.host, port=args.port, max_connections=args.max_connections, chains=args.chains,
        workers=args.workers, when_busy=args.when_busy, shutdown_timeout=args.shutdown_timeout,
        idle_timeout=args.idle_timeout or None, config_dir=args.config_dir,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m qmapinr.gadgets.transport.server [options]`` (same options as ``qmapinr serve``)."""
    parser = argparse.ArgumentParser(prog="python -m qmapinr.gadgets.transport.server",
                                     description=__doc__.split("\n")[0])
    _add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: worker processes pickle functions and reports by
    # their module name, which must be importable as qmapinr.gadgets.transport.server on both sides.
    from qmapinr.gadgets.transport import server as _server

    raise SystemExit(_server.main())

"""Start an external Python gadget the way Gadgetron 4 does, and accept its connection.

Gadgetron 4 listens on a port, runs ``python -m gadgetron PORT MODULE TARGET`` and the gadget connects to
``('localhost', PORT)``. :func:`listen_loopback` listens on every loopback address ``localhost`` resolves to
(IPv4 and/or IPv6, one port), :class:`SubprocessGadget` runs exactly that command with its output forwarded
to logging, :class:`InProcessGadget` runs ``gadgetron.external.Connection`` and the target in a thread
instead (tests, debugging).
"""

from __future__ import annotations

import collections
import importlib
import inspect
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import traceback

from qmapinr.gadgets.transport.socketstream import linger_close

logger = logging.getLogger(__name__)
gadget_logger = logging.getLogger("qmapinr.gadgets.transport.replay.gadget")

_TAIL_LINES = 60


class LaunchError(RuntimeError):
    """The gadget could not be started or did not connect."""


def listen_loopback() -> tuple[list[socket.socket], int]:
    """Listen on every loopback address ``localhost`` resolves to, all on one free port."""
    infos = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)
    seen, addrs = set(), []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr[0]) not in seen:
            seen.add((family, sockaddr[0]))
            addrs.append((family, sockaddr[0]))
    if not addrs:
        addrs = [(socket.AF_INET, "127.0.0.1")]
    listeners: list[socket.socket] = []
    port = 0
    for family, host in addrs:
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            s.listen(1)
        except OSError as exc:
            s.close()
            if not listeners:
                raise
            logger.debug("could not also listen on %s port %d: %s", host, port, exc)
            continue
        port = s.getsockname()[1]
        listeners.append(s)
    logger.debug("listening on %s port %d", [h for _, h in addrs], port)
    return listeners, port


def accept_one(listeners: list[socket.socket], deadline: float, alive) -> socket.socket:
    """Accept one connection on any listener; ``alive()`` returns an error text if the gadget is gone."""
    with selectors.DefaultSelector() as sel:
        for s in listeners:
            sel.register(s, selectors.EVENT_READ)
        while True:
            gone = alive()
            if gone:
                raise LaunchError(gone)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LaunchError("the gadget did not connect before the connect timeout")
            for key, _ in sel.select(timeout=min(remaining, 0.2)):
                conn, addr = key.fileobj.accept()  # type: ignore[union-attr]
                logger.debug("gadget connected from %s", addr)
                conn.setblocking(True)
                return conn


class _EofAwareSocket:
    """Socket proxy for ``gadgetron.external.Connection`` in inprocess mode.

    ``Connection.SocketWrapper.read`` loops on ``recv`` until it has enough bytes and spins forever on EOF;
    this proxy raises ``ConnectionError`` instead so that the gadget thread ends.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, n: int, flags: int = 0) -> bytes:
        data = self._sock.recv(n, flags)
        if n and not data:
            raise ConnectionError("the replay side closed the connection")
        return data

    def close(self, linger: float = 2.0) -> None:
        """Lingering close (:func:`~qmapinr.gadgets.transport.socketstream.linger_close`): a gadget that fails
        while acquisitions still arrive must not reset the connection before its images are read."""
        linger_close(self._sock, linger)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def load_target(module: str, target: str):
    """Resolve ``module.target`` like ``python -m gadgetron`` does (function, or class with ``handle``)."""
    obj = getattr(importlib.import_module(module), target, None)
    if inspect.isclass(obj):
        return lambda conn: obj().handle(conn)
    if callable(obj):
        return obj
    raise TypeError(f"{module}.{target} is neither a function nor a class with handle(connection)")


class InProcessGadget(threading.Thread):
    """``gadgetron.external.Connection`` + the target in a daemon thread (``mode='inprocess'``)."""

    def __init__(self, port: int, module: str, target: str) -> None:
        super().__init__(name=f"gadget-{module}.{target}", daemon=True)
        self.port, self.module, self.target = port, module, target
        self.error: str | None = None
        self.returncode: int | None = None
        self.log_tail = ""

    def run(self) -> None:
        from gadgetron.external import Connection

        try:
            func = load_target(self.module, self.target)
            sock = socket.create_connection(("localhost", self.port), 30)
            with Connection(_EofAwareSocket(sock)) as conn:
                func(conn)
        except Exception as exc:  # report whatever the gadget raised to the replay caller
            self.error = f"{type(exc).__name__}: {exc}"
            self.log_tail = traceback.format_exc()
            logger.debug("in-process gadget %s.%s failed: %s", self.module, self.target, self.error)

    def gone(self) -> str | None:
        if self.is_alive():
            return None
        return f"the in-process gadget ended before connecting: {self.error}"

    def finish(self, abort: bool) -> list[str]:
        self.join(5.0 if abort else 60.0)
        errors = []
        if self.error:
            errors.append(f"gadget {self.module}.{self.target} raised {self.error}")
        if self.is_alive():
            errors.append(f"the in-process gadget {self.module}.{self.target} is still running "
                          "(thread abandoned)")
        return errors


class SubprocessGadget:
    """``sys.executable -m gadgetron PORT MODULE TARGET`` with its output forwarded to logging."""

    def __init__(self, port: int, module: str, target: str, env: dict[str, str] | None) -> None:
        self.cmd = [sys.executable, "-m", "gadgetron", str(port), module, target]
        self.env = dict(os.environ)
        self.env.setdefault("GADGETRON_EXTERNAL_LOG_LEVEL", "INFO")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.update(env or {})
        self.tail: collections.deque = collections.deque(maxlen=_TAIL_LINES)
        self.proc: subprocess.Popen | None = None
        self.log_thread: threading.Thread | None = None
        self.returncode: int | None = None
        self.log_tail = ""

    def start(self) -> None:
        logger.info("starting gadget: %s", " ".join(self.cmd))
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                                     text=True, errors="replace", bufsize=1)
        self.log_thread = threading.Thread(target=_forward_log, args=(self.proc.stdout, self.tail),
                                           daemon=True, name="gadget-log")
        self.log_thread.start()

    def gone(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"the gadget process exited with code {code} before connecting"

    def finish(self, abort: bool) -> list[str]:
        proc = self.proc
        terminated = False
        try:
            self.returncode = proc.wait(timeout=0.5 if abort else 60.0)
        except subprocess.TimeoutExpired:
            logger.warning("gadget process %d still running; terminating it", proc.pid)
            terminated = True
            proc.terminate()
            try:
                self.returncode = proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.returncode = proc.wait()
        self.log_thread.join(5.0)
        self.log_tail = "\n".join(self.tail)
        if self.returncode != 0 and not terminated:
            return [f"the gadget process exited with code {self.returncode}{_last_error(self.tail)}"]
        return []


def _forward_log(stream, tail: collections.deque) -> None:
    for line in iter(stream.readline, ""):
        line = line.rstrip("\n")
        tail.append(line)
        level = logging.INFO
        if line.startswith(("Traceback", " ", "\t")):  # traceback lines: only with --log-level DEBUG
            level = logging.DEBUG
        for word, lvl in ((" CRITICAL ", logging.CRITICAL), (" ERROR ", logging.ERROR),
                          (" WARNING ", logging.WARNING), (" DEBUG ", logging.DEBUG)):
            if word in line:
                level = lvl
                break
        gadget_logger.log(level, "%s", line)
    stream.close()


def _last_error(tail) -> str:
    """`` (<last line of a traceback>)`` if the gadget's log ends with one, else ``""``."""
    lines = [line for line in tail if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return f" ({lines[-1].strip()})"
    return ""

"""A client socket with an idle timeout, an overall deadline and gone-client detection (the server side).

:class:`SocketStream` is what :class:`~qmapinr.gadgets.transport.connection.MRDConnection` reads from and what the
codec's send functions write to (``write``); the exceptions here are the transport's error vocabulary.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Any

from qmapinr.gadgets.transport import codec

logger = logging.getLogger(__name__)

# write states shared with the parent process (see handler.SessionState)
WRITE_IDLE, WRITE_BUSY, WRITE_CLOSED = 0, 1, 2


class ProtocolError(ValueError):
    """The client sent something the MRD protocol (or this server's limits) does not allow here."""


class DeadlineExceeded(ProtocolError):
    """The handshake or the session took longer than its deadline."""


class ClientDisconnected(ConnectionError):
    """The peer closed the connection (EOF while reading, or a failed write)."""


class SocketStream:
    """``read(n)`` / ``write(b)`` over a socket with an idle timeout and an overall deadline.

    Parameters
    ----------
    sock : socket.socket
        Connected TCP socket (owned: :meth:`close` closes it).
    timeout : float or None
        Seconds a single ``recv``/``send`` may block (None: forever).
    deadline : float or None
        ``time.monotonic()`` after which reads fail with :class:`DeadlineExceeded`; :attr:`deadline_what` names it.
    state : object with a writable ``value`` attribute, optional
        Set to :data:`WRITE_BUSY` while a message is being written and :data:`WRITE_CLOSED` once CLOSE went out,
        so that a parent process holding a duplicate of the socket knows whether it may still frame a message.
    """

    def __init__(self, sock: socket.socket, timeout: float | None = None, deadline: float | None = None,
                 state: Any = None):
        self.socket = sock
        self.timeout = timeout
        self.deadline = deadline
        self.deadline_what = "session"
        self.state = state
        self.bytes_read = 0
        self._lock = threading.Lock()
        self.half_closed = False
        self.socket.settimeout(timeout)

    def _recv_timeout(self) -> float | None:
        if self.deadline is None:
            return self.timeout
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{self.deadline_what} deadline passed ({self.bytes_read} bytes received)")
        return remaining if self.timeout is None else min(self.timeout, remaining)

    def read(self, nbytes: int) -> bytes:
        chunks, got = [], 0
        while got < nbytes:
            limit = self._recv_timeout()
            if limit != self.socket.gettimeout():
                self.socket.settimeout(limit)
            try:
                chunk = self.socket.recv(min(nbytes - got, 1 << 20))
            except TimeoutError as exc:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise DeadlineExceeded(f"{self.deadline_what} deadline passed "
                                           f"({self.bytes_read + got} bytes received)") from exc
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
        """Write one whole message (the lock keeps messages of two threads from interleaving)."""
        with self._lock:
            if self.state is not None:
                self.state.value = WRITE_BUSY
            try:
                self.socket.sendall(data)
            except TimeoutError as exc:
                raise ClientDisconnected(f"client did not read for {self.timeout} s") from exc
            except OSError as exc:
                raise ClientDisconnected(f"write failed: {exc}") from exc
            if self.state is not None:
                self.state.value = WRITE_IDLE

    def client_left(self, probe_text: str, wait: float = 0.5) -> bool:
        """True if the client closed its socket; False if it is alive or only shut down its sending side.

        An EOF alone cannot tell a client that left from one that half-closed after its CLOSE and still reads.
        On EOF a TEXT ``probe_text`` is sent: a closed socket answers with a reset (seen within ``wait`` s on the
        next peek), a half-closed one reads it.
        """
        if not self.peer_gone():
            return False
        if self.half_closed:  # probed before and alive: only a reset counts from now on
            return self._reset_pending()
        try:
            codec.send_text(self, probe_text)
        except ClientDisconnected:
            return True
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if self._reset_pending():
                return True
            time.sleep(0.02)
        self.half_closed = True
        return False

    def _reset_pending(self) -> bool:
        """The peer answered with a reset (POLLERR/POLLHUP; a peek would still return the earlier EOF)."""
        poller = select.poll()
        poller.register(self.socket, select.POLLIN)
        events = poller.poll(0)
        return bool(events and events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL))

    def peer_gone(self) -> bool:
        """True if the client closed or reset its side (EOF or error pending; data pending means alive).

        Never blocks and never changes the socket's timeout (safe from a second thread while the first writes).
        """
        poller = select.poll()
        poller.register(self.socket, select.POLLIN | select.POLLPRI)
        events = poller.poll(0)
        if not events:
            return False
        if events[0][1] & (select.POLLERR | select.POLLNVAL):
            return True
        try:
            return self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError, TimeoutError):
            return False
        except OSError:
            return True

    def close(self, linger: float = 0.0) -> None:
        """Close; with ``linger`` > 0 first shut down the sending side and discard input until the peer
        closes (at most ``linger`` s), so that closing with unread input does not reset the connection before
        the peer has read what was sent (e.g. an error TEXT followed by CLOSE)."""
        linger_close(self.socket, linger)


def linger_close(sock: socket.socket, linger: float) -> None:
    """Close ``sock``; with ``linger`` > 0 first shut down the sending side and discard input until the peer
    closes (at most ``linger`` s): a plain close with unread input resets the connection, and the peer may lose
    what was sent last (an error TEXT, the images of a gadget that then failed)."""
    if linger > 0:
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.2)
            deadline = time.monotonic() + linger
            while time.monotonic() < deadline:
                try:
                    if not sock.recv(1 << 16):
                        break
                except TimeoutError:
                    continue
        except OSError as exc:
            logger.debug("lingering close: %s", exc)
    sock.close()

"""Chains for the fault corpus that run inside the server's worker processes (light imports: numpy, ismrmrd).

Spawned workers import this module by name (``fault_chains:PROC_CHAINS``); importing torch here would cost every
worker seconds. Each chain reads the whole stream first, then misbehaves in one way.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time

import ismrmrd
import numpy as np


def _drain(connection) -> int:
    return sum(1 for _ in connection)


def _one_image(connection, n: int) -> None:
    image = ismrmrd.Image.from_array(np.full((2, 2), n, np.float32))
    image.image_index = n
    connection.send(image)


def kill_chain(connection) -> None:
    """Dies as the OOM killer would kill it (SIGKILL) after reading the stream."""
    _drain(connection)
    os.kill(os.getpid(), signal.SIGKILL)


def oom_chain(connection) -> None:
    """Runs out of (address-space-limited) memory after reading the stream."""
    _drain(connection)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, hard))
    try:
        np.ones(1 << 33)  # 64 GiB
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def sleep_chain(connection) -> None:
    """Works for ``delay`` s (JSON parameter, default 0; interruptible) and sends one image (index = #acqs)."""
    n = _drain(connection)
    end = time.monotonic() + float(connection.parameters.get("delay", 0))
    while time.monotonic() < end:
        time.sleep(0.05)
    _one_image(connection, n)


def slow_exit_chain(connection) -> None:
    """One image, but the worker process lives on for 3 s after the session (a non-daemon thread)."""
    threading.Thread(target=time.sleep, args=(3.0,), daemon=False).start()
    _one_image(connection, _drain(connection))


PROC_CHAINS = {"kill": kill_chain, "oom": oom_chain, "sleep": sleep_chain, "slow_exit": slow_exit_chain}

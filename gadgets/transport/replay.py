"""Replay an ISMRMRD file through a gadget chain, acting as the Gadgetron side of the codec.

The replay opens a real loopback TCP listener and starts the chain the way Gadgetron 4 starts an external
Python gadget (``python -m gadgetron PORT MODULE TARGET``; the gadget connects to ``('localhost', PORT)``),
or, in ``inprocess`` mode, runs ``gadgetron.external.Connection`` + the target in a thread over the same kind
of socket. It then sends CONFIG_TEXT (2), HEADER (3), every acquisition (1008) streamed from the file and
CLOSE (4), while a reader thread collects IMAGE (1022) and TEXT (5) messages until the gadget's CLOSE (4).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
from tqdm import tqdm

from qmapinr.gadgets.transport import codec
from qmapinr.gadgets.transport.launch import InProcessGadget, LaunchError, SubprocessGadget, accept_one, listen_loopback
from qmapinr.gadgets.transport.recorder import StreamRecorder

logger = logging.getLogger(__name__)


class ReplayError(RuntimeError):
    """The replay did not complete: the gadget failed, closed early or timed out."""


class ReplayInputError(ValueError):
    """The input file cannot be replayed (missing, not HDF5, truncated, not ISMRMRD, no acquisitions)."""


def check_input(h5_path, dataset: str = "dataset") -> int:
    """Check that ``h5_path`` is a readable ISMRMRD file with a header and acquisitions; returns their number.

    Raises
    ------
    ReplayInputError
        One line naming the file and what is wrong with it.
    """
    path = str(h5_path)
    if not Path(path).is_file():
        raise ReplayInputError(f"{path}: no such file")
    try:
        if not h5py.is_hdf5(path):
            raise ReplayInputError(f"{path} is not an HDF5 file")
        with h5py.File(path, "r") as f:
            group = f.get(dataset)
            if not isinstance(group, h5py.Group) or "xml" not in group:
                raise ReplayInputError(f"{path} is not an ISMRMRD file (no /{dataset}/xml header)")
            n = int(group["data"].shape[0]) if "data" in group else 0
            if n:
                group["data"][n - 1]  # the last record is readable: the file is not cut short
    except FileNotFoundError:
        raise ReplayInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise ReplayInputError(f"{path} cannot be read (truncated or corrupt HDF5: {exc})") from None
    if n == 0:
        raise ReplayInputError(f"{path} has a header but no acquisitions: nothing to replay")
    return n


@dataclass
class ReplayResult:
    """What came back from the gadget chain.

    Attributes
    ----------
    images : ``ismrmrd.Image`` messages received (kept even when the replay failed).
    texts : TEXT (5) messages received.
    seconds : wall time of the whole replay.
    error : None on success, else a message (includes the tail of the gadget's log for subprocess mode).
    n_sent, n_acquisitions : acquisitions sent / in the file.
    returncode : exit code of the gadget process (subprocess mode).
    log_tail : last lines the gadget wrote to stdout/stderr (subprocess) or the traceback (inprocess).
    others : ``(message id, payload)`` of any other message the gadget sent back (e.g. passed-through
        acquisitions).
    """

    images: list[ismrmrd.Image]
    texts: list[str]
    seconds: float
    error: str | None = None
    n_sent: int = 0
    n_acquisitions: int = 0
    returncode: int | None = None
    log_tail: str = ""
    others: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> None:
        """Raise :class:`ReplayError` carrying :attr:`error` if the replay failed."""
        if self.error is not None:
            raise ReplayError(self.error)


# ------------------------------------------------------------------------------------------------- the file


def read_header_xml(h5_path, dataset: str = "dataset") -> str:
    """The XML header of an ISMRMRD file (trailing NULs removed)."""
    with ismrmrd.Dataset(str(h5_path), dataset, create_if_needed=False, mode="r") as ds:
        raw = ds.read_xml_header()
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return text.rstrip("\x00")


def iter_acquisitions(h5_path, dataset: str = "dataset", chunk: int = 512) -> Iterator[ismrmrd.Acquisition]:
    """Stream the acquisitions of an ISMRMRD file in stored order, ``chunk`` records at a time.

    Reads the ``/<dataset>/data`` compound records (head, traj, data) as ``ismrmrd.Dataset.read_acquisition``
    does, but in slabs: one record at a time costs ~10 ms through ``ismrmrd.Dataset`` versus ~0.2 ms here.
    Only one slab is in memory at a time.
    """
    with h5py.File(h5_path, "r") as f:
        group = f[dataset]
        if "data" not in group:
            return
        records = group["data"]
        for start in range(0, records.shape[0], chunk):
            for rec in records[start:start + chunk]:
                acq = ismrmrd.Acquisition(rec["head"])
                shape = (acq.active_channels, acq.number_of_samples)
                acq.data[:] = rec["data"].view(np.complex64).reshape(shape)
                if acq.trajectory_dimensions:
                    acq.traj[:] = rec["traj"].reshape(acq.number_of_samples, acq.trajectory_dimensions)
                yield acq


class _Reader(threading.Thread):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="replay-reader", daemon=True)
        self.file = sock.makefile("rb")
        self.images: list[ismrmrd.Image] = []
        self.texts: list[str] = []
        self.others: list = []
        self.closed = False
        self.error: str | None = None

    def run(self) -> None:
        try:
            while True:
                mid, payload = codec.read_message(self.file)
                if mid == codec.CLOSE:
                    self.closed = True
                    return
                if mid == codec.IMAGE:
                    logger.debug("received image series %d", payload.image_series_index)
                    self.images.append(payload)
                elif mid == codec.TEXT:
                    self.texts.append(payload)
                else:
                    self.others.append((mid, payload))
        except (codec.TruncatedStreamError, OSError) as exc:
            self.error = (f"the connection to the gadget was lost before its CLOSE (4) message, after "
                          f"{len(self.images)} images ({type(exc).__name__}: {exc})")
        except Exception as exc:  # anything else: record it, never end silently
            self.error = (f"reading from the gadget failed after {len(self.images)} images "
                          f"({type(exc).__name__}: {exc})")


class _Sender(threading.Thread):
    def __init__(self, sock, config_text: str, header_xml: str, acquisitions, total: int,
                 progress: bool, recorder: StreamRecorder | None = None) -> None:
        super().__init__(name="replay-sender", daemon=True)
        self.sock, self.config_text, self.header_xml = sock, config_text, header_xml
        self.acquisitions, self.total, self.progress = acquisitions, total, progress
        self.recorder = recorder
        self.n_sent = 0
        self.error: str | None = None
        self.local_failure = False

    def _next(self, it):
        try:
            return next(it)
        except StopIteration:
            return None
        except Exception as exc:  # reading the file failed: a local failure, not the gadget's
            raise _LocalFailure(f"{type(exc).__name__}: {exc}") from exc

    def run(self) -> None:
        try:
            codec.send_config_text(self.sock, self.config_text)
            codec.send_header(self.sock, self.header_xml)
            it = iter(self.acquisitions)
            with tqdm(total=self.total, unit="acq", desc="replay", disable=not self.progress) as bar:
                while (acq := self._next(it)) is not None:
                    codec.send_acquisition(self.sock, acq)
                    self.n_sent += 1
                    if self.recorder is not None:
                        self.recorder.add(acq)
                    bar.update(1)
            codec.send_close(self.sock)
        except _LocalFailure as exc:  # end the exchange so that neither side waits forever
            self.local_failure = True
            self.error = f"the replay failed after sending {self.n_sent} of {self.total} acquisitions ({exc})"
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except OSError as exc:
            self.error = (f"the gadget closed the connection after {self.n_sent} of {self.total} "
                          f"acquisitions ({type(exc).__name__}: {exc})")


class _LocalFailure(Exception):
    """The replay side itself failed while producing acquisitions."""


# ---------------------------------------------------------------------------------------------------- replay


def replay(
    h5_path,
    module: str = "qmapinr.gadgets.chains",
    target: str = "summit",
    properties: dict[str, str] | None = None,
    mode: str = "subprocess",
    timeout: float | None = None,
    connect_timeout: float = 120.0,
    progress: bool | None = None,
    env: dict[str, str] | None = None,
    dataset: str = "dataset",
    save_stream=None,
) -> ReplayResult:
    """Stream an ISMRMRD file through ``module.target`` over a loopback socket and collect what comes back.

    Parameters
    ----------
    h5_path : ISMRMRD HDF5 file (header + acquisitions under ``/<dataset>``).
    module, target : the external gadget, as in ``<execute name="MODULE" target="TARGET" type="python"/>``.
    properties : sent as the CONFIG_TEXT ``<configuration><property name=".." value=".."/>`` element.
    mode : ``"subprocess"`` (``sys.executable -m gadgetron PORT MODULE TARGET``, as Gadgetron 4 does) or
        ``"inprocess"`` (``gadgetron.external.Connection`` and the target in a thread; for tests/debugging).
    timeout : wall-clock limit in s for the whole replay (None = no limit).
    connect_timeout : how long to wait for the gadget to connect, s.
    progress : tqdm bar for acquisitions sent; None = only when stderr is a TTY.
    env : extra environment variables for the gadget process (merged over ``os.environ``).
    dataset : group name inside the file.
    save_stream : path of an ISMRMRD file that receives the header and every acquisition sent (None: none).

    Returns
    -------
    ReplayResult; ``error`` is set (and the images received so far are kept) if the gadget
    failed, closed early, exited with a non-zero code or the timeout expired. Call
    ``result.raise_for_error()`` to turn it into an exception.
    """
    if mode not in ("subprocess", "inprocess"):
        raise ValueError(f"mode must be 'subprocess' or 'inprocess', not {mode!r}")
    t0 = time.monotonic()
    deadline = t0 + timeout if timeout is not None else float("inf")
    total = check_input(h5_path, dataset)
    header_xml = read_header_xml(h5_path, dataset)
    progress = sys.stderr.isatty() if progress is None else progress

    listeners, port = listen_loopback()
    if mode == "subprocess":
        gadget: SubprocessGadget | InProcessGadget = SubprocessGadget(port, module, target, env)
    else:
        gadget = InProcessGadget(port, module, target)
    errors: list[str] = []
    sock = None
    try:
        gadget.start()
        sock = accept_one(listeners, min(deadline, time.monotonic() + connect_timeout), gadget.gone)
    except LaunchError as exc:
        errors.append(str(exc))
    finally:
        for s in listeners:
            s.close()

    reader = sender = None
    abort = sock is None
    if sock is not None:
        reader = _Reader(sock)
        config_text = codec.config_xml(properties)
        recorder = None if save_stream is None else StreamRecorder(save_stream, header_xml, target, config_text,
                                                                   properties)
        sender = _Sender(sock, config_text, header_xml, iter_acquisitions(h5_path, dataset), total, progress,
                         recorder)
        reader.start()
        sender.start()
        for thread in (sender, reader):
            thread.join(None if timeout is None else max(deadline - time.monotonic(), 0.0))
        if sender.is_alive() or reader.is_alive():
            abort = True
            errors.append(f"timeout after {timeout} s ({sender.n_sent} of {total} acquisitions sent, "
                          f"{len(reader.images)} images received)")
            try:
                sock.shutdown(socket.SHUT_RDWR)  # unblocks both threads
            except OSError:
                pass
            sender.join(5.0)
            reader.join(5.0)
        else:
            errors.extend(err for err in (sender.error, reader.error) if err)
            abort = sender.local_failure
        if recorder is not None:
            recorder.close()
        sock.close()
    gadget_errors = gadget.finish(abort)
    local = sender is not None and sender.local_failure
    errors = errors + gadget_errors if local else gadget_errors + errors  # the root cause first

    error = None
    if errors:
        error = "; ".join(errors)
        if gadget.log_tail:
            error += f"\n--- gadget log (last lines) ---\n{gadget.log_tail}"
        logger.debug("replay of %s through %s.%s failed: %s", h5_path, module, target, errors[0])
    seconds = time.monotonic() - t0
    result = ReplayResult(
        images=reader.images if reader else [],
        texts=reader.texts if reader else [],
        seconds=seconds,
        error=error,
        n_sent=sender.n_sent if sender else 0,
        n_acquisitions=total,
        returncode=gadget.returncode,
        log_tail=gadget.log_tail,
        others=reader.others if reader else [],
    )
    logger.info("replay: %d/%d acquisitions sent, %d images and %d texts received in %.1f s",
                result.n_sent, total, len(result.images), len(result.texts), seconds)
    return result

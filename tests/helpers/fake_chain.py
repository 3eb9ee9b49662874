"""A fake recon chain for the stream-side tests (importable by ``python -m gadgetron PORT fake_chain ...``).

It runs the real stages ``split_noise -> buffer_kspace -> (fake recon) -> maps_to_images`` and replaces the
reconstruction by simple statistics of the buffered data, so a test can check what crossed the wire:
T1 = number of lines, T2 = number of coils, T2star = number of noise samples (0 if none), A = coil-combined
magnitude of the zero-filled echo-0 image summed over tau and n, B0 = 0, Phase0 = its phase, Residual = 1.
"""

from __future__ import annotations

import logging
import os
import time

import ismrmrd
import numpy as np

from qmapinr.gadgets.chains import drain_on_failure
from qmapinr.gadgets.stages import buffer_kspace, maps_to_images, split_noise
from qmapinr.recon.kspace import KSpace6D, QuantMaps

logger = logging.getLogger(__name__)


def fake_maps(ks: KSpace6D) -> QuantMaps:
    """Statistics of ``ks`` as :class:`QuantMaps` (float32 ``(nz, ny, nx)``), with ``info['geometry']``."""
    nx, ny, nz = ks.geometry.matrix
    dense = ks.dense()[:, 0].sum(axis=(1, 2))  # (coils, nz, ny, nx)
    axes = (1, 2, 3)
    img = np.fft.ifftn(np.fft.ifftshift(dense, axes=axes), axes=axes, norm="ortho")
    img = np.fft.fftshift(img, axes=axes)
    mag = np.sqrt((np.abs(img) ** 2).sum(axis=0)).astype(np.float32)
    phase = np.angle(img.sum(axis=0)).astype(np.float32)
    full = np.ones((nz, ny, nx), dtype=np.float32)
    nnoise = 0 if ks.noise is None else ks.noise.shape[1]
    maps = {
        "T1": full * ks.nlines, "T2": full * ks.ncoils, "T2star": full * nnoise, "A": mag,
        "B0": full * 0, "Phase0": phase, "Residual": full,
    }
    return QuantMaps(maps=maps, mask=mag > 0, geometry=ks.geometry)


def fake_recon(items, header):
    """KSpace6D -> QuantMaps via :func:`fake_maps`; other items pass through."""
    del header
    for item in items:
        yield fake_maps(item) if isinstance(item, KSpace6D) else item


def fake_chain(connection):
    """Gadget entry point: the real stages around the fake recon."""
    header = connection.header
    connection.filter(ismrmrd.Acquisition)
    items = split_noise(iter(connection), header)
    items = buffer_kspace(items, header)
    items = fake_recon(items, header)
    items = maps_to_images(items, header)
    for item in items:
        if isinstance(item, ismrmrd.Image):
            connection.send(item)
        else:
            logger.info("fake_chain: not sending %s", type(item).__name__)


def fake_chain_fail(connection):
    """Sends one image, then raises (to test error reporting and that received images are kept); fails the way
    the real chains do (:func:`~qmapinr.gadgets.chains.drain_on_failure`)."""
    with drain_on_failure(connection):
        for item in maps_to_images([fake_maps(_first_kspace(connection))], connection.header):
            connection.send(item)
            raise RuntimeError("fake failure after the first image")


BIG_IMAGE_SHAPE = (2048, 2048)
"""16 MiB of float32: more than the loopback socket buffers hold, so part of it is still queued at the failure."""


def _send_big_then_fail(connection):
    next(iter(connection))  # the first acquisition: the client is still sending the rest
    img = ismrmrd.Image.from_array(np.arange(np.prod(BIG_IMAGE_SHAPE), dtype=np.float32).reshape(BIG_IMAGE_SHAPE))
    connection.send(img)
    raise RuntimeError("fake failure mid-stream after a big image")


def fake_chain_fail_big(connection):
    """Mid-stream failure after a 16 MiB image, handled like the real chains (the image must arrive whole)."""
    with drain_on_failure(connection):
        _send_big_then_fail(connection)


def fake_chain_fail_big_raw(connection):
    """The same without the drain (a plain upstream close with unread input: shows the reset, not tested)."""
    _send_big_then_fail(connection)


def _first_kspace(connection) -> KSpace6D:
    items = buffer_kspace(split_noise(iter(connection), connection.header), connection.header)
    return next(i for i in items if isinstance(i, KSpace6D))


class FakeChainClass:
    """Class form of the target (``python -m gadgetron`` instantiates it and calls ``handle``)."""

    def handle(self, connection):
        fake_chain(connection)


def fake_chain_crash(connection):
    """Raises before reading any acquisition (the gadget closes early)."""
    raise ValueError(f"fake crash on header with {len(connection.header.encoding)} encoding(s)")


def fake_chain_exit(connection):
    """Dies without sending CLOSE (hard process death)."""
    os._exit(3)


def fake_chain_hang(connection):
    """Never finishes (to test the replay timeout)."""
    time.sleep(600)


def echo_config(connection):
    """Sends one image whose meta echoes the received properties, header matrix and acquisition count."""
    from qmapinr.gadgets.properties import properties_from_config

    count = sum(1 for item in connection if isinstance(item, ismrmrd.Acquisition))
    ms = connection.header.encoding[0].encodedSpace.matrixSize
    image = ismrmrd.Image.from_array(np.zeros((2, 2), np.float32), image_series_index=99)
    meta = ismrmrd.Meta({f"prop_{k}": v for k, v in properties_from_config(connection.config).items()})
    meta["matrix"] = f"{ms.x},{ms.y},{ms.z}"
    meta["acquisitions"] = str(count)
    image.attribute_string = meta.serialize()
    connection.send(image)

"""Generator stages of the stream side: ``(iterable, header) -> iterable``.

Each stage is a plain module-level generator function in the style of the ``gadgetron`` package examples
(``gadgetron/examples/recon_acquisitions.py``): it consumes the items it handles and passes every other item
through unchanged, so the stages compose in any chain over a ``gadgetron.external.Connection``::

    items = split_noise(iter(connection), connection.header)
    items = buffer_kspace(items, connection.header)
    items = some_recon(items, connection.header)          # KSpace6D -> QuantMaps
    items = maps_to_images(items, connection.header)      # QuantMaps -> ismrmrd.Image
    for item in items:
        connection.send(item)

ISMRMRD encoding (docs/design.md): ky = ``idx.kspace_encode_step_1``, kz = ``idx.kspace_encode_step_2``,
echo = ``idx.contrast``, readout index n = ``idx.segment``, T2-prep index tau = ``idx.set``; noise pre-scans
carry ``ACQ_IS_NOISE_MEASUREMENT``; the last acquisition carries ``ACQ_LAST_IN_MEASUREMENT``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import ismrmrd
import numpy as np

from qmapinr.gadgets.images import maps_to_mrd_images
from qmapinr.recon.kspace import Geometry, KSpace6D, QuantMaps, SequenceParams
from qmapinr.recon.mrdheader import EncodingInfo, geometry_from_acquisition, parse_header

logger = logging.getLogger(__name__)

_BLOCK_LINES = 256
"""Lines per block of the k-space line store (24 coils x 3 echoes x 128 samples: 19 MB a block)."""

_MAX_LISTED = 5
"""How many offending lines an error message lists before summarising."""


class StreamError(ValueError):
    """The acquisition stream violates the project's ISMRMRD convention (see docs/design.md)."""


@dataclass
class NoiseScan:
    """Noise pre-scan samples, split off the imaging stream by :func:`split_noise`.

    Attributes
    ----------
    data : complex64 ``(coils, nsamples)``, all noise acquisitions concatenated along the samples.
    sample_time_us : dwell time of the noise acquisitions, microseconds.
    n_acquisitions : how many noise acquisitions were merged.
    """

    data: np.ndarray
    sample_time_us: float
    n_acquisitions: int


def _is_noise(acq: ismrmrd.Acquisition) -> bool:
    return bool(acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT))


def _merge_noise(noise: list[ismrmrd.Acquisition]) -> NoiseScan:
    coils = {a.active_channels for a in noise}
    if len(coils) != 1:
        raise StreamError(f"noise acquisitions have different coil counts {sorted(coils)}")
    data = np.concatenate([np.asarray(a.data, dtype=np.complex64) for a in noise], axis=1)
    if not np.all(np.isfinite(data)):
        raise StreamError("noise pre-scan contains NaN or Inf samples")
    return NoiseScan(data=data, sample_time_us=float(noise[0].sample_time_us), n_acquisitions=len(noise))


def split_noise(items: Iterable, header) -> Iterator:
    """Take noise pre-scans out of the stream and hand them on once as a :class:`NoiseScan`.

    Parameters
    ----------
    items : stream of ``ismrmrd.Acquisition`` (and anything else, which passes through).
    header : the ISMRMRD header (unused; kept for the common stage signature).

    Yields
    ------
    The input items without the noise acquisitions. One :class:`NoiseScan` is yielded just before the first
    imaging acquisition, or at the end of the stream if no imaging acquisition came. Noise acquisitions that
    arrive after imaging data started are dropped with a warning.
    """
    del header
    noise: list[ismrmrd.Acquisition] = []
    imaging_started = False
    late = 0
    for item in items:
        if isinstance(item, ismrmrd.Acquisition):
            if _is_noise(item):
                if imaging_started:
                    late += 1
                else:
                    noise.append(item)
                continue
            if not imaging_started:
                imaging_started = True
                if noise:
                    scan = _merge_noise(noise)
                    logger.info("noise pre-scan: %d acquisitions, %d coils x %d samples",
                                scan.n_acquisitions, *scan.data.shape)
                    noise = []
                    yield scan
        yield item
    if noise:
        yield _merge_noise(noise)
    if late:
        logger.warning("dropped %d noise acquisitions that arrived after imaging data", late)


class _LineStore:
    """Line store in fixed blocks of :data:`_BLOCK_LINES` lines, each ``(coils, nte, block, nx)``.

    Blocks are never copied while data arrives (no growth copies); :meth:`gather` assembles the final
    contiguous array and frees each block once it has been copied, so the peak is about twice the final size.
    """

    def __init__(self, ncoils: int, nte: int, nx: int) -> None:
        self.ncoils, self.nte, self.nx = ncoils, nte, nx
        self.block = _BLOCK_LINES
        self.blocks: list[np.ndarray | None] = []
        self.have_blocks: list[np.ndarray] = []
        self.keys: list[tuple[int, int, int, int]] = []  # (ky, kz, seg, tau) per line
        self.index: dict[tuple[int, int, int, int], int] = {}

    @property
    def n(self) -> int:
        return len(self.keys)

    def put(self, key: tuple[int, int, int, int], echo: int, samples: np.ndarray) -> None:
        line = self.index.get(key)
        if line is None:
            line = len(self.keys)
            if line == len(self.blocks) * self.block:
                self.blocks.append(np.zeros((self.ncoils, self.nte, self.block, self.nx), dtype=np.complex64))
                self.have_blocks.append(np.zeros((self.block, self.nte), dtype=bool))
            self.index[key] = line
            self.keys.append(key)
        b, off = divmod(line, self.block)
        have = self.have_blocks[b]
        if have[off, echo]:
            raise StreamError(f"duplicate acquisition for line {_line_name(key)} echo (contrast) {echo}")
        self.blocks[b][:, echo, off, :] = samples
        have[off, echo] = True

    def have(self) -> np.ndarray:
        """bool ``(n, nte)``: which echoes of each line arrived."""
        if not self.have_blocks:
            return np.zeros((0, self.nte), dtype=bool)
        return np.concatenate(self.have_blocks)[: self.n]

    def key_array(self) -> np.ndarray:
        """int64 ``(n, 4)``: ky, kz, seg, tau per line."""
        return np.array(self.keys, dtype=np.int64).reshape(-1, 4)

    def gather(self, order: np.ndarray) -> np.ndarray:
        """complex64 ``(coils, nte, len(order), nx)`` of lines ``order``; the store is emptied."""
        out = np.empty((self.ncoils, self.nte, order.size, self.nx), dtype=np.complex64)
        src_block, src_off = np.divmod(order, self.block)
        for b in range(len(self.blocks)):
            dest = np.flatnonzero(src_block == b)
            blk, src = self.blocks[b], src_off[dest]
            if dest.size and _is_run(dest) and _is_run(src):  # lines arrived in canonical order: slab copy
                out[:, :, dest[0]:dest[-1] + 1, :] = blk[:, :, src[0]:src[-1] + 1, :]
            elif dest.size:
                for c in range(self.ncoils):  # per (coil, echo): ~3x faster than one 4-D fancy index
                    for e in range(self.nte):
                        out[c, e, dest, :] = blk[c, e, src, :]
            self.blocks[b] = None  # free as we go
        self.blocks, self.have_blocks, self.index = [], [], {}
        return out


def _is_run(idx: np.ndarray) -> bool:
    """True if ``idx`` is a run of consecutive increasing integers."""
    return bool(idx[-1] - idx[0] + 1 == idx.size and np.all(np.diff(idx) == 1))


def _line_name(key) -> str:
    ky, kz, seg, tau = (int(k) for k in key)
    return f"(ky={ky}, kz={kz}, segment={seg}, set={tau})"


def _describe_lines(keys: np.ndarray, have: np.ndarray, lines: np.ndarray) -> str:
    parts = []
    for line in lines[:_MAX_LISTED]:
        missing = np.flatnonzero(~have[line]).tolist()
        parts.append(f"{_line_name(keys[line])} missing echoes {missing}")
    more = f" and {len(lines) - _MAX_LISTED} more" if len(lines) > _MAX_LISTED else ""
    return "; ".join(parts) + more


class _Buffer:
    """State of one measurement inside :func:`buffer_kspace`."""

    def __init__(self, seq: SequenceParams, info: EncodingInfo) -> None:
        self.seq, self.info = seq, info
        nx, ny, nz = info.matrix
        self.limits = {  # counter name -> number of allowed values (0..limit-1)
            "kspace_encode_step_1 (ky)": ny,
            "kspace_encode_step_2 (kz)": nz,
            "contrast (echo)": seq.nte,
            "segment (n)": seq.nseg,
            "set (tau)": seq.ntau,
        }
        self.store: _LineStore | None = None
        self.geometry: Geometry | None = None
        self.noise: NoiseScan | None = None
        self.n_acq = 0
        self.center_warned = False

    def add(self, acq: ismrmrd.Acquisition) -> None:
        idx = acq.idx
        ky, kz, echo = int(idx.kspace_encode_step_1), int(idx.kspace_encode_step_2), int(idx.contrast)
        seg, tau = int(idx.segment), int(idx.set)
        for (name, limit), value in zip(self.limits.items(), (ky, kz, echo, seg, tau), strict=True):
            if value >= limit:
                raise StreamError(
                    f"acquisition {acq.scan_counter}: counter {name} = {value} is out of range; "
                    f"the header allows 0..{limit - 1}"
                )
        nx = self.info.matrix[0]
        if acq.number_of_samples != nx:
            raise StreamError(
                f"acquisition {acq.scan_counter}: {acq.number_of_samples} samples but the header's encoded "
                f"matrix has nx={nx} (readout oversampling must be removed upstream)"
            )
        if acq.center_sample != nx // 2 and not self.center_warned:
            self.center_warned = True
            logger.warning("acquisition %d: center_sample=%d, expected nx//2=%d (treated as nx//2)",
                           acq.scan_counter, acq.center_sample, nx // 2)
        data = acq.data
        if not np.all(np.isfinite(data)):
            raise StreamError(
                f"acquisition {acq.scan_counter} line {_line_name((ky, kz, seg, tau))} echo {echo} "
                "contains NaN or Inf samples"
            )
        ncoils = acq.active_channels
        if self.store is None:
            self.store = _LineStore(ncoils, self.seq.nte, nx)
            self.geometry = geometry_from_acquisition(acq, self.info)
            if self.info.ncoils is not None and self.info.ncoils != ncoils:
                logger.warning("header receiverChannels=%d but acquisitions carry %d coils; using %d",
                               self.info.ncoils, ncoils, ncoils)
            if self.noise is not None and self.noise.data.shape[0] != ncoils:
                raise StreamError(
                    f"noise pre-scan has {self.noise.data.shape[0]} coils but imaging data has {ncoils}"
                )
        elif ncoils != self.store.ncoils:
            raise StreamError(
                f"acquisition {acq.scan_counter} has {ncoils} coils but earlier acquisitions had "
                f"{self.store.ncoils}"
            )
        self.store.put((ky, kz, seg, tau), echo, data)
        self.n_acq += 1

    def set_noise(self, scan: NoiseScan) -> None:
        if self.store is not None and scan.data.shape[0] != self.store.ncoils:
            raise StreamError(f"noise pre-scan has {scan.data.shape[0]} coils but imaging data has "
                              f"{self.store.ncoils}")
        self.noise = scan

    def finish(self, last_flag: bool) -> KSpace6D:
        store = self.store
        assert store is not None and self.geometry is not None
        n = store.n
        keys, have = store.key_array(), store.have()
        keep = np.arange(n)
        bad = np.flatnonzero(~have.all(axis=1))
        dropped = 0
        if bad.size:
            text = _describe_lines(keys, have, bad)
            if last_flag:
                raise StreamError(f"{bad.size} of {n} lines lack echoes at the end of the measurement: "
                                  f"{text}")
            logger.warning("stream ended early: dropping %d of %d lines with missing echoes: %s",
                           bad.size, n, text)
            keep = np.setdiff1d(keep, bad)
            dropped = int(bad.size)
            if keep.size == 0:
                raise StreamError(f"stream ended early; none of its {n} lines has all {self.seq.nte} echoes")
        kept = keys[keep]
        # canonical line order (tau, seg, kz, ky); the arrival order is kept in acq_order (which lines were one shot)
        order = keep[np.lexsort((kept[:, 0], kept[:, 1], kept[:, 2], kept[:, 3]))]
        data = store.gather(order)
        keys = keys[order]
        ks = KSpace6D(
            data=data,
            ky=keys[:, 0].copy(), kz=keys[:, 1].copy(), seg=keys[:, 2].copy(), tau=keys[:, 3].copy(),
            seq=self.seq,
            geometry=self.geometry,
            noise=None if self.noise is None else self.noise.data,
            acq_order=order,  # arrival rank of every line's first echo: the scanner's time order
            meta={
                "n_acquisitions": self.n_acq,
                "last_flag_seen": last_flag,
                "dropped_lines": dropped,
                "noise_sample_time_us": None if self.noise is None else self.noise.sample_time_us,
            },
        )
        logger.info("buffered %d acquisitions into %d lines (%d coils, %d echoes, nx=%d), R=%.2f",
                    self.n_acq, ks.nlines, ks.ncoils, self.seq.nte, ks.data.shape[-1], ks.acceleration)
        return ks


def buffer_kspace(items: Iterable, header) -> Iterator:
    """Accumulate acquisitions of one measurement into a :class:`~qmapinr.recon.kspace.KSpace6D`.

    Parameters
    ----------
    items : stream of ``ismrmrd.Acquisition``, :class:`NoiseScan` and anything else (passed through).
    header : ``ismrmrd.xsd.ismrmrdHeader`` (or its XML text); sizes and timing come from
        :func:`qmapinr.recon.mrdheader.parse_header` (a missing field raises ``HeaderError``).

    Yields
    ------
    One ``KSpace6D`` per measurement, emitted when ``ACQ_LAST_IN_MEASUREMENT`` is seen or when the input ends.
    Lines are in canonical order (sorted by tau, then segment, kz, ky) whatever the arrival order; the echoes
    of one line (same ky, kz, segment, set; ``idx.contrast`` differs) form one line of ``data``
    ``(coils, nte, nlines, nx)``. Geometry comes from the first imaging acquisition, ``noise`` from the
    :class:`NoiseScan` (noise acquisitions arriving here directly are merged the same way).

    Raises
    ------
    StreamError
        A counter outside the header limits (names counter, value and limit), a sample count different from
        the encoded nx, a coil count that changes, NaN/Inf samples, a duplicated (line, echo), or - when the
        last-in-measurement flag was seen - lines whose echoes are incomplete (listed by name).

    Notes
    -----
    If the input ends without the last-in-measurement flag (truncated stream) whatever arrived is
    emitted with a warning; lines with missing echoes are then dropped (warning lists them;
    ``meta['dropped_lines']``). Memory: lines go into fixed blocks (no growth copies); assembling the final
    contiguous ``data`` frees the blocks as it goes, so the peak is about 2x the final ``data`` (paper size,
    13k lines x 24 coils x 3 echoes x 128 samples: ~1 GB final).
    """
    seq, info = parse_header(header)
    buf = _Buffer(seq, info)
    pending_noise: list[ismrmrd.Acquisition] = []
    for item in items:
        if isinstance(item, NoiseScan):
            buf.set_noise(item)
            continue
        if not isinstance(item, ismrmrd.Acquisition):
            yield item
            continue
        if _is_noise(item):
            pending_noise.append(item)
            continue
        if pending_noise:
            buf.set_noise(_merge_noise(pending_noise))
            pending_noise = []
        buf.add(item)
        if item.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT):
            yield buf.finish(last_flag=True)
            buf = _Buffer(seq, info)
    if buf.store is not None:
        logger.warning("input ended without the ACQ_LAST_IN_MEASUREMENT flag after %d acquisitions; "
                       "emitting what arrived", buf.n_acq)
        yield buf.finish(last_flag=False)
    elif buf.noise is not None or pending_noise:
        logger.warning("input ended with a noise pre-scan but no imaging acquisitions")


def maps_to_images(items: Iterable, header) -> Iterator:
    """Turn every :class:`~qmapinr.recon.kspace.QuantMaps` into ``ismrmrd.Image`` objects (one per map).

    Placement comes from ``qmaps.geometry`` (a :class:`~qmapinr.recon.kspace.Geometry`, set by the
    recon stage from ``KSpace6D.geometry``); without it the header's encoded matrix and FOV are used at the
    isocentre with identity orientation (warning). ``qmaps.series_offset`` (int, default 0) shifts the
    image series indices. Other items pass through.
    """
    for item in items:
        if not isinstance(item, QuantMaps):
            yield item
            continue
        geometry = item.geometry
        if not isinstance(geometry, Geometry):
            _, info = parse_header(header)
            geometry = Geometry(matrix=info.matrix, fov_mm=info.fov_mm)
            logger.warning("QuantMaps has no geometry; using the header's matrix/FOV at the isocentre")
        offset = item.series_offset
        yield from maps_to_mrd_images(item, geometry, header, series_offset=offset)

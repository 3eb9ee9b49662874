"""Shared fixtures: a seeded, tiny synthetic T2IR ME-GRE measurement as ISMRMRD acquisitions.

The generator follows docs/design.md's encoding table (ky = kspace_encode_step_1, kz = step_2, echo = contrast,
n = segment, tau = set, shot = user[0]; noise pre-scan flagged ACQ_IS_NOISE_MEASUREMENT, last acquisition
flagged ACQ_LAST_IN_MEASUREMENT) and uses random k-space samples: it tests the plumbing, not the physics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from qmapinr.recon.kspace import Geometry, SequenceParams
from qmapinr.recon.mrdheader import build_header, header_to_xml

HELPERS = Path(__file__).resolve().parent / "helpers"
if str(HELPERS) not in sys.path:  # shared test helpers (tiny object, fake chains, loopback MRD client)
    sys.path.insert(0, str(HELPERS))


@dataclass
class SynthMeasurement:
    """A synthetic measurement and the arrays it was made from.

    ``data`` complex64 ``(coils, nte, nlines, nx)`` and ``ky, kz, seg, tau`` ``(nlines,)`` are in canonical
    line order (sorted by tau, seg, kz, ky); ``acquisitions`` is the stream (noise first, then one acquisition
    per line and echo, the last one flagged); ``noise`` is complex64 ``(coils, nsamples)`` or None.
    """

    seq: SequenceParams
    geometry: Geometry
    ncoils: int
    header_xml: str
    acquisitions: list
    data: np.ndarray
    ky: np.ndarray
    kz: np.ndarray
    seg: np.ndarray
    tau: np.ndarray
    noise: np.ndarray | None

    @property
    def header(self):
        return ismrmrd.xsd.CreateFromDocument(self.header_xml)


TEST_GEOMETRY = Geometry(
    matrix=(8, 6, 4), fov_mm=(80.0, 60.0, 20.0), position=(10.0, -5.0, 3.0),
    read_dir=(0.0, 1.0, 0.0), phase_dir=(-1.0, 0.0, 0.0), slice_dir=(0.0, 0.0, 1.0),
    patient_table_position=(0.0, 0.0, -1200.0),
)


def make_measurement(
    seed: int = 0,
    ncoils: int = 3,
    geometry: Geometry = TEST_GEOMETRY,
    te_ms: tuple[float, ...] = (2.0, 5.0),
    tau_ms: tuple[float, ...] = (0.0, 40.0),
    nseg: int = 3,
    lines_per_seg: int = 2,
    noise_samples: int | None = 16,
    shuffle: bool = False,
) -> SynthMeasurement:
    """Build a tiny measurement: per tau, ``nseg * lines_per_seg`` distinct (ky, kz) lines spread over the
    segment positions (``lines_per_seg`` shots), every line acquired once per echo. ``shuffle`` permutes the
    imaging acquisitions (the flag still marks the last one sent)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = geometry.matrix
    seq = SequenceParams(tr_ms=10.0, te_ms=tuple(te_ms), flip_deg=8.0, tau_ms=tuple(tau_ms), nseg=nseg)
    nper = nseg * lines_per_seg
    if nper > ny * nz:
        raise ValueError("more lines per tau than (ky, kz) positions")
    ky, kz, seg, tau, shot = [], [], [], [], []
    for t in range(seq.ntau):
        pts = rng.permutation(ny * nz)[:nper]
        for i, p in enumerate(pts):
            kz.append(p // ny)
            ky.append(p % ny)
            seg.append(i % nseg)
            shot.append(t * lines_per_seg + i // nseg)
            tau.append(t)
    ky, kz, seg, tau, shot = (np.array(a, dtype=np.int64) for a in (ky, kz, seg, tau, shot))
    nlines = ky.size
    data = (rng.standard_normal((ncoils, seq.nte, nlines, nx))
            + 1j * rng.standard_normal((ncoils, seq.nte, nlines, nx))).astype(np.complex64)
    order = np.lexsort((ky, kz, seg, tau))
    canon = dict(data=data[:, :, order], ky=ky[order], kz=kz[order], seg=seg[order], tau=tau[order])

    def base(samples: np.ndarray) -> ismrmrd.Acquisition:
        acq = ismrmrd.Acquisition.from_array(samples)
        acq.sample_time_us = 5.0
        acq.position[:] = geometry.position
        acq.read_dir[:] = geometry.read_dir
        acq.phase_dir[:] = geometry.phase_dir
        acq.slice_dir[:] = geometry.slice_dir
        acq.patient_table_position[:] = geometry.patient_table_position
        return acq

    imaging = []
    for line in range(nlines):
        for e in range(seq.nte):
            acq = base(data[:, e, line, :])
            acq.center_sample = nx // 2
            acq.idx.kspace_encode_step_1 = int(ky[line])
            acq.idx.kspace_encode_step_2 = int(kz[line])
            acq.idx.contrast = e
            acq.idx.segment = int(seg[line])
            acq.idx.set = int(tau[line])
            acq.idx.user[0] = int(shot[line])
            imaging.append(acq)
    if shuffle:
        imaging = [imaging[i] for i in rng.permutation(len(imaging))]
    noise = None
    acquisitions = []
    if noise_samples:
        noise = (rng.standard_normal((ncoils, noise_samples))
                 + 1j * rng.standard_normal((ncoils, noise_samples))).astype(np.complex64)
        nacq = base(noise)
        nacq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        acquisitions.append(nacq)
    acquisitions.extend(imaging)
    acquisitions[-1].set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    for i, acq in enumerate(acquisitions):
        acq.scan_counter = i
    header_xml = header_to_xml(build_header(seq, geometry, ncoils))
    return SynthMeasurement(seq=seq, geometry=geometry, ncoils=ncoils, header_xml=header_xml,
                            acquisitions=acquisitions, noise=noise, **canon)


def write_measurement_h5(meas: SynthMeasurement, path) -> str:
    """Write header and acquisitions to an ISMRMRD HDF5 file (group ``dataset``); returns the path."""
    with ismrmrd.Dataset(str(path), "dataset", mode="w") as ds:
        ds.write_xml_header(meas.header_xml.encode("utf-8"))
        for acq in meas.acquisitions:
            ds.append_acquisition(acq)
    return str(path)


@pytest.fixture
def measurement() -> SynthMeasurement:
    """The default tiny measurement (seed 0, 3 coils, 8x6x4, 2 echoes, 2 taus, 3 segments, noise pre-scan)."""
    return make_measurement()


@pytest.fixture
def synth():
    """The :func:`make_measurement` factory, for tests that need other sizes or orders."""
    return make_measurement


@pytest.fixture
def measurement_h5(tmp_path, measurement) -> str:
    """The default measurement written to ``tmp_path / 'meas.h5'``."""
    return write_measurement_h5(measurement, tmp_path / "meas.h5")


@pytest.fixture
def write_h5():
    """The :func:`write_measurement_h5` writer, for tests that build their own measurement."""
    return write_measurement_h5

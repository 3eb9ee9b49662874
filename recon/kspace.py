"""Containers shared by the simulator, the stream side and the solvers.

The sampled k-space of a T2IR-prepared multi-echo GRE is stored *line by line* (one row per sampled
(ky, kz, n, tau) line, all echoes and coils kept), because the dense 6-D layout of docs/design.md,
``(coils, nte, ntau, nseg, nz, ny, nx)``, is mostly zeros: at paper size it would be 24 GB, the line
store below is under 1 GB. :meth:`KSpace6D.dense` and :attr:`KSpace6D.mask` give the dense views of
docs/design.md for small problems and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np

PrepLoopOrder = Literal["tau-outer", "shot-outer"]
PREP_LOOP_ORDERS: tuple[str, ...] = get_args(PrepLoopOrder)


@dataclass(frozen=True)
class PrepGroups:
    """Line groups of a scan whose start-up transient has not decayed (:mod:`qmapinr.recon.physics.history`).

    With groups, ``SequenceParams.tau_ms`` lists one T2-prep duration per *group* and a line's ``tau`` is its
    group: group ``g`` is either every steady-state shot of physical tau ``group_tau[g]`` (``group_shot[g] =
    -1``, the periodic steady state) or one acquired shot ``group_shot[g]`` (an index into ``shot_tau``) whose
    pre-preparation magnetisation is still the exact one of the scan's history.

    Attributes
    ----------
    tau_ms : the physical T2-prep durations (ms), one per ``idx.set``.
    group_tau : physical tau index of every group, ``(G,)``.
    group_shot : acquired-shot index of every group, -1 for a steady-state group, ``(G,)``.
    shot_tau : physical tau index of every acquired shot in acquisition order, up to the last transient one.
    """

    tau_ms: tuple[float, ...]
    group_tau: tuple[int, ...]
    group_shot: tuple[int, ...]
    shot_tau: tuple[int, ...]


@dataclass(frozen=True)
class SequenceParams:
    """Timing of the T2IR-prepared multi-echo GRE. All times in ms, angles in degrees.

    Attributes
    ----------
    tr_ms : GRE repetition time.
    te_ms : echo times, one per ``idx.contrast``.
    flip_deg : GRE excitation flip angle alpha.
    tau_ms : T2-prep durations, one per ``idx.set`` (0 = no T2-prep).
    nseg : readouts per segment after each preparation (``idx.segment`` = 0..nseg-1).
    inversion_efficiency : B of the signal model (-1 = perfect inversion).
    prep_loop_order : ``None`` (closed form: steady state before every preparation, as in the paper),
        ``"tau-outer"`` or ``"shot-outer"`` (sequence history, :mod:`qmapinr.recon.physics.signal`).
    recovery_delay_ms : free recovery between the end of a segment and the next preparation (>= 0).
    prep_dummies : dummy preparations (segments without acquisition) before the first acquired shot
        (shot-outer) or before every tau block (tau-outer); >= 0.
    prep_groups : None (one group per physical tau) or the transient-shot groups of
        :func:`~qmapinr.recon.physics.history.with_shot_groups` (then ``tau_ms`` has one entry per group).
    """

    tr_ms: float
    te_ms: tuple[float, ...]
    flip_deg: float
    tau_ms: tuple[float, ...]
    nseg: int
    inversion_efficiency: float = -1.0
    prep_loop_order: PrepLoopOrder | None = None
    recovery_delay_ms: float = 0.0
    prep_dummies: int = 0
    prep_groups: PrepGroups | None = None

    def __post_init__(self) -> None:
        if self.prep_loop_order is not None and self.prep_loop_order not in PREP_LOOP_ORDERS:
            raise ValueError(f"prep_loop_order={self.prep_loop_order!r}; expected None or one of {PREP_LOOP_ORDERS}")
        if not self.recovery_delay_ms >= 0.0:
            raise ValueError(f"recovery_delay_ms={self.recovery_delay_ms} must be >= 0")
        if int(self.prep_dummies) != self.prep_dummies or self.prep_dummies < 0:
            raise ValueError(f"prep_dummies={self.prep_dummies} must be an integer >= 0")

    @property
    def nte(self) -> int:
        return len(self.te_ms)

    @property
    def ntau(self) -> int:
        """Number of preparation groups: the physical taus, or the groups of ``prep_groups``."""
        return len(self.tau_ms)

    def physical(self) -> SequenceParams:
        """The sequence without line groups (``tau_ms`` = the physical T2-prep durations)."""
        if self.prep_groups is None:
            return self
        return replace(self, tau_ms=self.prep_groups.tau_ms, prep_groups=None)


@dataclass(frozen=True)
class Geometry:
    """Encoded matrix and patient-space placement of the 3-D volume.

    Attributes
    ----------
    matrix : (nx, ny, nz) encoded matrix size.
    fov_mm : (x, y, z) field of view in mm.
    position : (3,) centre of the volume in patient coordinates, mm.
    read_dir, phase_dir, slice_dir : (3,) unit direction cosines.
    patient_table_position : (3,) mm.
    """

    matrix: tuple[int, int, int]
    fov_mm: tuple[float, float, float]
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    read_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    phase_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    slice_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    patient_table_position: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        return tuple(f / m for f, m in zip(self.fov_mm, self.matrix, strict=True))  # type: ignore[return-value]


@dataclass
class KSpace6D:
    """Sampled k-space of one 3-D T2IR multi-echo GRE measurement, stored per line.

    Attributes
    ----------
    data : complex64 ``(coils, nte, nlines, nx)``, the readouts (kx along the last axis, centre at nx // 2).
    ky, kz : int ``(nlines,)`` phase-encoding indices (0..ny-1, 0..nz-1, centre at n // 2).
    seg : int ``(nlines,)`` readout index n after the preparation (0..nseg-1).
    tau : int ``(nlines,)`` T2-prep index (0..ntau-1).
    seq : sequence timing.
    geometry : matrix and placement; ``geometry.matrix`` is (nx, ny, nz).
    noise : complex64 ``(coils, nsamples)`` noise pre-scan samples, or None.
    field_strength_t : main field B0 in tesla from the header (``systemFieldStrength_T``), or None if not given
        (QSM then assumes 3 T and says so).
    meta : free-form extras of the producer (the simulator's shot counter, sample time); no contract between layers.
    acq_order : int ``(nlines,)`` rank of every line in acquisition time (first echo's arrival), or None when
        unknown; with ``seg`` and ``tau`` it tells which lines were one shot
        (:func:`~qmapinr.recon.physics.history.shot_sequence`).
    """

    data: np.ndarray
    ky: np.ndarray
    kz: np.ndarray
    seg: np.ndarray
    tau: np.ndarray
    seq: SequenceParams
    geometry: Geometry
    noise: np.ndarray | None = None
    field_strength_t: float | None = None
    meta: dict = field(default_factory=dict)
    acq_order: np.ndarray | None = None

    def __post_init__(self) -> None:
        nc, ne, nl, nx = self.data.shape
        for name in ("ky", "kz", "seg", "tau") + (("acq_order",) if self.acq_order is not None else ()):
            arr = getattr(self, name)
            if arr.shape != (nl,):
                raise ValueError(f"KSpace6D.{name} has shape {arr.shape}, expected ({nl},)")
        if ne != self.seq.nte:
            raise ValueError(f"data has {ne} echoes but the sequence lists {self.seq.nte} TEs")
        if nx != self.geometry.matrix[0]:
            raise ValueError(f"data has {nx} readout samples but the matrix says nx={self.geometry.matrix[0]}")

    @property
    def shape_dense(self) -> tuple[int, ...]:
        """Dense layout of docs/design.md: ``(coils, nte, ntau, nseg, nz, ny, nx)``."""
        nx, ny, nz = self.geometry.matrix
        return (self.ncoils, self.seq.nte, self.seq.ntau, self.seq.nseg, nz, ny, nx)

    @property
    def ncoils(self) -> int:
        return self.data.shape[0]

    @property
    def nlines(self) -> int:
        return self.data.shape[2]

    @property
    def mask(self) -> np.ndarray:
        """bool ``(ntau, nseg, nz, ny)``: which (ky, kz) lines were sampled at each (tau, n)."""
        _, ny, nz = self.geometry.matrix
        m = np.zeros((self.seq.ntau, self.seq.nseg, nz, ny), dtype=bool)
        m[self.tau, self.seg, self.kz, self.ky] = True
        return m

    @property
    def acceleration(self) -> float:
        """R = ny * nz / (lines per tau), averaged over tau."""
        _, ny, nz = self.geometry.matrix
        return ny * nz * self.seq.physical().ntau / max(self.nlines, 1)

    def dense(self) -> np.ndarray:
        """complex64 ``(coils, nte, ntau, nseg, nz, ny, nx)`` with zeros where nothing was sampled."""
        out = np.zeros(self.shape_dense, dtype=np.complex64)
        out[:, :, self.tau, self.seg, self.kz, self.ky, :] = self.data
        return out


MAP_UNITS: dict[str, str] = {
    "T1": "ms",
    "T2": "ms",
    "T2star": "ms",
    "A": "a.u.",
    "B0": "Hz",
    "Phase0": "rad",
    "QSM": "ppm",
    "Residual": "a.u.",
    "LocalField": "Hz",
}
"""Name -> unit of every map the reconstruction can return (MRD image meta uses both)."""


@dataclass
class QuantMaps:
    """Reconstructed parameter maps, each float32 ``(nz, ny, nx)``.

    ``maps`` keys are names of :data:`MAP_UNITS` (T1, T2, T2star in ms; A in a.u.; B0 off-resonance in Hz;
    Phase0 in rad; QSM in ppm; LocalField = B0 after background removal in Hz;
    Residual = per-voxel data-consistency residual in a.u.). ``mask`` is the
    bool ``(nz, ny, nx)`` support used by the solver; ``geometry`` the placement of the volume (the image
    emitter falls back to the header's matrix at the isocentre when None); ``series_offset`` is added to every
    image series index; ``info`` holds method diagnostics (timings, loss history, settings) for logs and benchmarks.
    """

    maps: dict[str, np.ndarray]
    mask: np.ndarray | None = None
    geometry: Geometry | None = None
    series_offset: int = 0
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, arr in self.maps.items():
            if name not in MAP_UNITS:
                raise ValueError(f"unknown map {name!r}; known: {sorted(MAP_UNITS)}")
            if arr.ndim != 3:
                raise ValueError(f"map {name} has shape {arr.shape}, expected (nz, ny, nx)")

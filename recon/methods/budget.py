"""Admission control: memory and time a reconstruction will need, estimated from the header before allocating.

:func:`estimate_resources` is the documented model; :func:`admit` compares it with :class:`Limits` and raises
:class:`AdmissionError` (one line naming what is too large) before any array of the reconstruction exists.

Memory model (bytes, peak resident set of the process that runs the chain)::

    M = BASE                                   interpreter, numpy, torch, ismrmrd, the chain's modules
      + VOXEL * V + VOXEL_COIL * V * C          volumes: coil maps, initial/final maps, QSM, WNNM patches
      + KSPACE * K                              line store + gathered array + hybrid data (+ copies)
      + 16 * P                                  INR parameters + gradients + Adam moments (float32)

with V = nx * ny * nz voxels, C coils, K = C * nte * nlines * nx * 8 bytes of k-space and P the INR parameter
count from the config (hash tables: ``n_levels * min(2**log2_hashmap_size, dense level size) *
n_features_per_level``; MLP layers). Time model (s)::

    T = T0 + (T_PREP + T_QSM) * V * Ce + epochs * (T_STEP * steps + T_EPOCH * V * Ce + T_LINE * K * Ce / C / 8)

with Ce the coils the fit runs on (:func:`effective_coils`: the configured coil compression; an energy-based
count is known only from the data, so half the coils, at least ``min_virtual_coils``, is assumed) and steps the
Adam steps per epoch, ``ceil(nx / batch_x)``. The memory constants were fitted on the SUMMIT chain (4 coils,
R = 4, 1 torch thread) at three sizes and are checked against measured peak RSS by ``scripts/bench_service.py``
(docs/benchmarks/service.md: within 2x). The time model is an upper bound that sizes the session deadline:
``T_STEP`` (per-step overhead: WNNM, Python) keeps small volumes at or above the earlier fit, ``T_EPOCH`` and
``T_QSM`` are from the paper-size run (docs/benchmarks/epoch.md round 8, x 2 for one thread, rounded up); the
earlier per-voxel-coil fit from small volumes extrapolated the paper size to 13.8 h against 12 min measured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from qmapinr.recon.calibration.compression import compression_rule
from qmapinr.recon.methods.schedule import step_schedule
from qmapinr.recon.physics.product import CPU_CHUNK_BYTES

MiB = 1 << 20

BASE = 480 * MiB
"""Interpreter + numpy + torch + ismrmrd + qmapinr chain modules, measured before any data (bytes)."""
VOXEL = 2000
"""Bytes per voxel independent of the coil count (maps, QSM, initial estimate, batched evaluation)."""
VOXEL_COIL = 150
"""Bytes per voxel and coil (complex coil maps, their JSENSE refinement and the coil INR output)."""
KSPACE = 6.0
"""Multiple of the k-space bytes resident at the peak (line store, gathered array, hybrid data, copies)."""
BATCH_COPIES = 4.0
"""Copies of one x position's forward inputs alive at the peak of a batch's forward + backward: the coefficient
volume for the exact forward; for the structured forward, whose coefficient volume is formed only one cache-sized
chunk at a time (:mod:`qmapinr.recon.physics.product`), the per-coil images and the recovery atoms."""
T0 = 10.0
"""Fixed seconds (imports, dictionary, QSM)."""
T_PREP = 1.5e-4
"""Seconds per voxel and coil before the first epoch (coil maps, JSENSE, initial maps), 1 thread."""
T_STEP = 2.0
"""Seconds per Adam step of an epoch independent of the size (WNNM block matching, Python), 1 thread."""
T_EPOCH = 6e-6
"""Seconds per voxel, coil and epoch, 1 thread."""
T_QSM = 7e-5
"""Seconds per voxel and coil of the QSM field fit after the solver, 1 thread."""
T_LINE = 2e-8
"""Seconds per k-space sample and epoch (forward model on the sampled lines)."""


class AdmissionError(ValueError):
    """The request exceeds a limit of this service (memory, time, a per-property bound)."""


@dataclass(frozen=True)
class Dims:
    """What the header (and, once known, the stream) says about the size of the problem.

    ``nlines``: k-space lines (one per ky, kz, segment, set); None before the stream is known (then only the part
    of the estimate that does not depend on the data is computed).
    """

    nx: int
    ny: int
    nz: int
    ncoils: int
    nte: int = 1
    nseg: int = 1
    ntau: int = 1
    nlines: int | None = None

    @property
    def voxels(self) -> int:
        return self.nx * self.ny * self.nz

    @property
    def kspace_bytes(self) -> int:
        return self.ncoils * self.nte * (self.nlines or 0) * self.nx * 8


@dataclass(frozen=True)
class Estimate:
    """Estimated peak memory (bytes) and wall time (s, 1 thread) of one reconstruction; ``parts`` in bytes."""

    memory_bytes: int
    seconds: float
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.memory_bytes / MiB:.0f} MiB, {self.seconds:.0f} s"


def host_memory_bytes() -> int:
    """Physical memory of this host (bytes), from ``sysconf``; 8 GiB if unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def parse_size(text: str | int | None) -> int | None:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G/T suffix")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


@dataclass(frozen=True)
class Limits:
    """What one session may ask for. ``max_memory_bytes`` per session; ``max_seconds`` of estimated compute."""

    max_memory_bytes: int
    max_seconds: float = 6 * 3600.0
    max_epochs: int = 5000
    max_matrix: int = 512
    max_channels: int = 128
    max_echoes: int = 64
    max_hidden: int = 1024
    max_layers: int = 16
    max_log2_hashmap_size: int = 24

    @classmethod
    def for_host(cls, max_connections: int = 1, fraction: float = 0.8, *, max_memory: int | None = None,
                 max_epochs: int | None = None, max_matrix: int | None = None) -> Limits:
        """Default limits: ``fraction`` of the host's RAM shared by ``max_connections`` sessions."""
        memory = max_memory or int(host_memory_bytes() * fraction / max(1, max_connections))
        kwargs: dict[str, Any] = {"max_memory_bytes": memory}
        if max_epochs is not None:
            kwargs["max_epochs"] = max_epochs
        if max_matrix is not None:
            kwargs["max_matrix"] = max_matrix
        return cls(**kwargs)


def dims_from_header(header, ncoils: int | None = None, nlines: int | None = None) -> Dims:
    """:class:`Dims` from an ISMRMRD header (object or XML) via :func:`qmapinr.recon.mrdheader.parse_header`.

    ``ncoils`` defaults to the header's ``receiverChannels``, else 1 (the check after buffering uses the real
    count).
    """
    from qmapinr.recon.mrdheader import parse_header

    seq, info = parse_header(header)
    coils = ncoils or info.ncoils or 1
    nx, ny, nz = info.matrix
    return Dims(nx, ny, nz, int(coils), seq.nte, seq.nseg, seq.ntau, nlines)


def dims_from_kspace(kspace) -> Dims:
    """:class:`Dims` of a buffered :class:`~qmapinr.recon.kspace.KSpace6D` (real coil and line counts)."""
    nx, ny, nz = kspace.geometry.matrix
    seq = kspace.seq
    return Dims(nx, ny, nz, kspace.ncoils, seq.nte, seq.nseg, seq.ntau, kspace.nlines)


def _grid_params(grid: Any, dims: Dims) -> int:
    if grid is None:
        return 0
    total = 0
    side = max(dims.nx, dims.ny, dims.nz)
    for level in range(int(grid.n_levels)):
        res = min(int(grid.base_resolution * grid.per_level_scale ** level) + 1, 4 * side + 1)
        dense = res ** 3
        total += min(dense, 1 << int(grid.log2_hashmap_size)) * int(grid.n_features_per_level)
    return total


def inr_parameters(cfg: Any, dims: Dims) -> int:
    """INR parameter count from a SUMMIT-like config (hash grids + MLP heads); 0 for methods without an INR."""
    grids = _grid_params(getattr(cfg, "map_grid", None), dims) + _grid_params(getattr(cfg, "coil_grid", None), dims)
    hidden, layers = int(getattr(cfg, "hidden", 0) or 0), int(getattr(cfg, "layers", 0) or 0)
    mlp = 2 * layers * hidden * (hidden + 1)  # map head + coil head, order of magnitude
    return grids + mlp


def batch_bytes_per_x(dims: Dims, cfg: Any) -> int:
    """Peak bytes per readout position of a SUMMIT batch (0 for configs without ``batch_x``).

    ``BATCH_COPIES`` complex64 copies of: exact forward, the coefficient volume ``C * nte * ntau * nseg * nz * ny``
    elements; structured forward, the per-coil images and the atoms ``(C * nte + 1 + ntau * rank) * nz * ny``
    (its coefficient volume is formed one chunk at a time: :func:`batch_chunk_bytes`, once per batch).
    """
    if not hasattr(cfg, "batch_x"):
        return 0
    if getattr(cfg, "forward", "structured") == "exact":
        elements = dims.ncoils * dims.nte * dims.ntau * dims.nseg
    else:
        elements = dims.ncoils * dims.nte + 1 + dims.ntau * int(getattr(cfg, "rank", 8))
    return int(elements * dims.nz * dims.ny * 8 * BATCH_COPIES)


def batch_chunk_bytes(cfg: Any) -> int:
    """Bytes of the structured forward's chunk buffers per batch (coefficient chunk, its FFT and gradient)."""
    if not hasattr(cfg, "batch_x") or getattr(cfg, "forward", "structured") == "exact":
        return 0
    return int(BATCH_COPIES * CPU_CHUNK_BYTES)


def batch_size(dims: Dims, cfg: Any) -> int:
    """The solver's x batch: ``cfg.batch_x`` capped by ``cfg.memory_budget_mb`` (0 = no cap), at least 1."""
    bx = int(getattr(cfg, "batch_x", 0) or 0)
    budget = float(getattr(cfg, "memory_budget_mb", 0) or 0)
    per_x = batch_bytes_per_x(dims, cfg)
    if bx and budget > 0 and per_x > 0:
        bx = max(1, min(bx, int(budget * MiB // per_x)))
    return bx


def effective_coils(dims: Dims, cfg: Any) -> int:
    """The coils the fit will run on: ``virtual_coils`` when set, half the coils (at least ``min_virtual_coils``)
    when ``coil_energy`` compresses data with more than ``compress_above_coils``, else all."""
    c = dims.ncoils
    nv = int(getattr(cfg, "virtual_coils", 0) or 0)
    floor = int(getattr(cfg, "min_virtual_coils", 1) or 1)
    how = compression_rule(c, nv, float(getattr(cfg, "coil_energy", 0) or 0), floor,
                           int(getattr(cfg, "compress_above_coils", 0) or 0))
    return {"count": nv, "energy": max(floor, -(-c // 2))}.get(how, c)


def estimate_resources(dims: Dims, method: str, cfg: Any) -> Estimate:
    """Estimated peak memory and time of ``method`` with ``cfg`` on a problem of size ``dims`` (module docstring).

    Parameters
    ----------
    dims : sizes from the header (:func:`dims_from_header`); ``nlines=None`` leaves out the k-space term.
    method : chain / method name (``summit``, ``baseline``, ...). Methods without an INR use the same volume
        and k-space terms and no parameter term.
    cfg : the method's typed config (``epochs``, hash grids, ``hidden``, ``layers`` are read when present).
    """
    del method  # one model for all registered methods; the INR term reads the config
    v, c = dims.voxels, dims.ncoils
    k = dims.kspace_bytes
    params = inr_parameters(cfg, dims)
    bx = batch_size(dims, cfg)
    parts = {
        "base": BASE,
        "volumes": int(VOXEL * v + VOXEL_COIL * v * c),
        "kspace": int(KSPACE * k),
        "parameters": 16 * params,
        "batch": bx * batch_bytes_per_x(dims, cfg) + batch_chunk_bytes(cfg),
    }
    if hasattr(cfg, "schedule_steps_per_epoch"):  # the epochs the run will do (recon/methods/schedule.py)
        cfg = step_schedule(cfg, dims.nx, bx)[0]
    epochs = max(int(getattr(cfg, "epochs", 1) or 1), 1)
    iterations = max(epochs, int(getattr(cfg, "iterations", 0) or 0))
    ce = effective_coils(dims, cfg)
    steps = -(-dims.nx // bx) if bx else 0
    seconds = (T0 + (T_PREP + T_QSM) * v * ce
               + iterations * (T_STEP * steps + T_EPOCH * v * ce + T_LINE * k * ce / max(c, 1) / 8))
    return Estimate(memory_bytes=sum(parts.values()), seconds=float(seconds), parts=parts)


def check_properties(dims: Dims, cfg: Any, limits: Limits) -> None:
    """Per-property bounds of the service (sizes a client may ask for); AdmissionError names the first one."""
    checks = [
        ("matrix size", max(dims.nx, dims.ny, dims.nz), limits.max_matrix),
        ("coils", dims.ncoils, limits.max_channels),
        ("echoes", dims.nte, limits.max_echoes),
        ("epochs", getattr(cfg, "epochs", None), limits.max_epochs),
        ("hidden", getattr(cfg, "hidden", None), limits.max_hidden),
        ("layers", getattr(cfg, "layers", None), limits.max_layers),
    ]
    for grid in ("map_grid", "coil_grid"):
        g = getattr(cfg, grid, None)
        if g is not None:
            checks.append((f"{grid}.log2_hashmap_size", g.log2_hashmap_size, limits.max_log2_hashmap_size))
    for name, value, bound in checks:
        if value is not None and int(value) > bound:
            raise AdmissionError(f"{name} = {value} exceeds this server's limit of {bound}")


def admit(dims: Dims, method: str, cfg: Any, limits: Limits) -> Estimate:
    """Estimate and check against ``limits``; returns the estimate or raises :class:`AdmissionError`."""
    check_properties(dims, cfg, limits)
    est = estimate_resources(dims, method, cfg)
    size = f"{dims.nz}x{dims.ny}x{dims.nx}, {dims.ncoils} coils" + (f", {dims.nlines} lines" if dims.nlines else "")
    if est.memory_bytes > limits.max_memory_bytes:
        raise AdmissionError(
            f"refused: {method} on {size} needs an estimated {est.memory_bytes / MiB:.0f} MiB, more than this "
            f"server's limit of {limits.max_memory_bytes / MiB:.0f} MiB per session (--max-memory)")
    if est.seconds > limits.max_seconds:
        raise AdmissionError(
            f"refused: {method} on {size} needs an estimated {est.seconds / 3600:.1f} h, more than this server's "
            f"limit of {limits.max_seconds / 3600:.1f} h per session")
    return est


def max_stream_bytes(dims: Dims, method: str, cfg: Any, limits: Limits) -> int:
    """Acquisition bytes the stream may carry before the k-space term alone would exceed the memory limit."""
    fixed = estimate_resources(Dims(**{**dims.__dict__, "nlines": None}), method, cfg).memory_bytes
    return max(int((limits.max_memory_bytes - fixed) / KSPACE), 0)

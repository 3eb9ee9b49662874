"""The method registry and the one call from buffered k-space to every output map (solver, then QSM from B0)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qmapinr.recon.calibration.compression import compress_as_configured
from qmapinr.recon.config import SummitConfig
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.methods.lorein.config import LoreinConfig
from qmapinr.recon.methods.lorein.solver import lorein_recon
from qmapinr.recon.methods.subspace import SubspaceConfig, subspace_recon
from qmapinr.recon.methods.summit.solver import estimate_sensitivities, summit_recon
from qmapinr.recon.methods.validate import check_maps, validate
from qmapinr.recon.physics.dipole import b0_dir_from_geometry
from qmapinr.recon.qsm.echoes import field_update
from qmapinr.recon.qsm.pipeline import QsmUnavailable, qsm_pipeline

log = logging.getLogger(__name__)


#: Maps a method must return for the echo-based field refinement (:func:`~qmapinr.recon.qsm.echoes.field_update`).
SIGNAL_MAPS = ("A", "T1", "T2", "T2star", "Phase0", "B0")
#: Coil compression of the field fit (geometric, this energy, at least this many virtual coils; data with fewer
#: coils are used as they are): its cost is K FFTs per coil, echo and CG step, so 24 coils cost 3x 8.
FIELD_FIT_ENERGY, FIELD_FIT_MIN_COILS = 0.98, 8
#: Anatomical maps whose edges weight the TV inversion (MEDI-type, :func:`~qmapinr.recon.qsm.tv.edge_weights`).
EDGE_MAPS = ("A", "T1", "T2star")


def qsm_field(maps: QuantMaps, kspace: KSpace6D, sens: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """The total field (Hz, ``(nz, ny, nx)``) QSM starts from, and how it was obtained.

    With every map of :data:`SIGNAL_MAPS`: the method's B0 plus the per-voxel field correction fitted to the raw
    lines of all echoes (:func:`~qmapinr.recon.qsm.echoes.field_update`; coil maps ``sens``, or SUMMIT's
    estimate on the data compressed to :data:`FIELD_FIT_ENERGY` / at least :data:`FIELD_FIT_MIN_COILS` coils).
    An INR's B0 is smooth by construction and misses the voxel-scale dipole detail (QSM from it: 97 %
    NRMSE, deep-GM slope 0.0 at R = 4; docs/benchmarks/qsm.md). Otherwise, or if the fit fails: the B0 map.
    """
    b0 = np.asarray(maps.maps["B0"], dtype=np.float32)
    if any(k not in maps.maps for k in SIGNAL_MAPS) or kspace.data.size == 0:
        return b0, "the method's B0 map (no signal maps for an echo fit)"
    try:
        if sens is None:
            kspace = compress_as_configured(kspace, 0, FIELD_FIT_ENERGY, FIELD_FIT_MIN_COILS, "geometric")
            sens = estimate_sensitivities(kspace, SummitConfig(threads=torch.get_num_threads())).numpy()
        df, info = field_update(kspace, maps.maps, maps.mask, sens)
    except (ValueError, RuntimeError) as exc:  # a failed refinement must not cost the other maps
        log.warning("QSM field refinement failed (%s): using the B0 map", exc)
        return b0, f"the method's B0 map (echo fit failed: {exc})"
    note = (f"B0 map + echo fit on the raw lines (relative residual {info['residual'][0]:.4g} -> "
            f"{info['residual'][-1]:.4g}, {info['seconds']:.1f} s)")
    return (b0 + df).astype(np.float32), note


def add_qsm(maps: QuantMaps, kspace: KSpace6D, b0_t: float = 3.0, sens: np.ndarray | None = None,
            refine: bool = True) -> QuantMaps:
    """Add ``QSM`` (ppm) and ``LocalField`` (Hz) from the field map, or record why they are missing.

    Field: :func:`qsm_field` (``refine=False``: the B0 map as it is). Pipeline
    :func:`~qmapinr.recon.qsm.pipeline.qsm_pipeline` (brain mask from the support and A, V-SHARP or PDF, TV
    inversion with MEDI edge weights from :data:`EDGE_MAPS` when present, the weight chosen by the discrepancy
    principle) with B0 along patient z expressed in the image frame of ``kspace.geometry``. Its choices go to
    ``maps.info['qsm']``; when QSM cannot be computed the reason goes to ``maps.info['qsm_unavailable']`` (the
    chains send it to the client as TEXT). The ``B0`` map itself is left as the method returned it.
    """
    reason = None
    if "B0" not in maps.maps or maps.mask is None or not maps.mask.any():
        reason = "QSM not computed: the method returned no B0 map or an empty mask"
    else:
        g = kspace.geometry
        b0_dir = b0_dir_from_geometry(g.read_dir, g.phase_dir, g.slice_dir)  # B0 (patient z) in the image frame
        magnitude = maps.maps.get("A", maps.mask.astype(np.float32))
        edges = np.stack([maps.maps[k] for k in EDGE_MAPS]) if all(k in maps.maps for k in EDGE_MAPS) else None
        field, note = qsm_field(maps, kspace, sens) if refine else (maps.maps["B0"], "the method's B0 map")
        try:
            res = qsm_pipeline(field, maps.mask, magnitude, g.voxel_mm, b0_t=b0_t, b0_dir=b0_dir,
                               edge_images=edges)
        except QsmUnavailable as exc:
            reason = str(exc)
        else:
            maps.maps["QSM"] = res.chi_ppm
            maps.maps["LocalField"] = res.local_hz
            maps.info["qsm"] = dict(res.info, field=note)
            maps.info["qsm_mask_voxels"] = int(res.mask.sum())
            maps.info.setdefault("timings", {})["qsm_s"] = res.info["seconds"]
    if reason is not None:
        log.warning("%s", reason)
        maps.info["qsm_unavailable"] = reason
    return maps


@dataclass(frozen=True)
class Method:
    """A registered reconstruction method: its typed config (whose fields are the chain properties) and solver.

    ``solve(kspace, cfg) -> QuantMaps``.
    """

    name: str
    config: type
    solve: Callable[[KSpace6D, Any], QuantMaps]
    description: str


METHODS: dict[str, Method] = {
    "summit": Method("summit", SummitConfig, summit_recon, "SUMMIT hash-grid INR + Bloch signal model, L1 DC + WNNM"),
    "lorein": Method("lorein", LoreinConfig, lorein_recon,
                     "LoREIN: low-rank (LRR) block + SUMMIT's parametric-map INR, fitted jointly"),
    "baseline": Method("baseline", SubspaceConfig, subspace_recon,
                       "temporal-subspace SENSE + 3-D TV (ADMM) + dictionary matching"),
}
"""The one method registry: method name -> :class:`Method` (chains, server, CLI and bench read it)."""


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def reconstruct(kspace: KSpace6D, chain: str, cfg: Any, progress=None) -> QuantMaps:
    """Validate (:func:`~qmapinr.recon.methods.validate.validate`), run the solver of method ``chain`` with its
    typed ``cfg``, check the maps (:func:`~qmapinr.recon.methods.validate.check_maps`); adds QSM and geometry.

    ``info['warnings']`` lists what the validation adjusted or found missing (truncated scan, clipped WNNM
    patch); the image stage writes it to the meta ``Warning`` of every image. ``progress`` (a
    :data:`~qmapinr.recon.methods.progress.ProgressCallback`) is passed to solvers that take one.
    """
    solve = get_method(chain).solve
    cfg, warnings = validate(cfg, kspace)
    takes = progress is not None and "progress" in inspect.signature(solve).parameters
    maps = solve(kspace, cfg, progress=progress) if takes else solve(kspace, cfg)
    check_maps(maps, chain)
    notes = maps.info.setdefault("warnings", [])
    notes.extend(w for w in warnings if w not in notes)
    if kspace.field_strength_t is None:
        log.info("no systemFieldStrength_T in the header: QSM assumes 3 T")
    maps = add_qsm(maps, kspace, b0_t=kspace.field_strength_t or 3.0)
    maps.geometry = kspace.geometry
    return maps

"""The method registry and the one call from buffered k-space to every output map (solver, then QSM from B0)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.methods.lorein.config import LoreinConfig
from qmapinr.recon.methods.lorein.solver import lorein_recon
from qmapinr.recon.methods.subspace import SubspaceConfig, subspace_recon
from qmapinr.recon.methods.summit.solver import summit_recon
from qmapinr.recon.methods.validate import check_maps, validate
from qmapinr.recon.physics.dipole import b0_dir_from_geometry
from qmapinr.recon.qsm.pipeline import QsmUnavailable, qsm_pipeline

log = logging.getLogger(__name__)


def add_qsm(maps: QuantMaps, kspace: KSpace6D, b0_t: float = 3.0) -> QuantMaps:
    """Add ``QSM`` (ppm) and ``LocalField`` (Hz) from the ``B0`` map (Hz), or record why they are missing.

    Pipeline :func:`~qmapinr.recon.qsm.pipeline.qsm_pipeline` (brain mask from the support and A, V-SHARP or
    PDF, TV inversion with the weight chosen by the discrepancy principle) with B0 along patient z expressed
    in the image frame of ``kspace.geometry``. Its choices go to ``maps.info['qsm']``; when QSM cannot be
    computed the reason goes to ``maps.info['qsm_unavailable']`` (the chains send it to the client as TEXT).
    """
    reason = None
    if "B0" not in maps.maps or maps.mask is None or not maps.mask.any():
        reason = "QSM not computed: the method returned no B0 map or an empty mask"
    else:
        g = kspace.geometry
        b0_dir = b0_dir_from_geometry(g.read_dir, g.phase_dir, g.slice_dir)  # B0 (patient z) in the image frame
        magnitude = maps.maps.get("A", maps.mask.astype(np.float32))
        try:
            res = qsm_pipeline(maps.maps["B0"], maps.mask, magnitude, g.voxel_mm, b0_t=b0_t, b0_dir=b0_dir)
        except QsmUnavailable as exc:
            reason = str(exc)
        else:
            maps.maps["QSM"] = res.chi_ppm
            maps.maps["LocalField"] = res.local_hz
            maps.info["qsm"] = res.info
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

"""One call from buffered k-space to every output map: solver for the chain, then QSM from the B0 map."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.qsm.dipole import b0_dir_from_geometry
from qmapinr.recon.qsm.inversion import qsm_from_field

log = logging.getLogger(__name__)


def add_qsm(maps: QuantMaps, kspace: KSpace6D, b0_t: float = 3.0) -> QuantMaps:
    """Add ``QSM`` (ppm, 0 outside the eroded mask) computed from the ``B0`` map (Hz) inside ``maps.mask``."""
    if "B0" not in maps.maps or maps.mask is None or not maps.mask.any():
        log.warning("no B0 map or empty mask: QSM skipped")
        return maps
    t0 = time.time()
    try:
        g = kspace.geometry
        b0_dir = b0_dir_from_geometry(g.read_dir, g.phase_dir, g.slice_dir)  # B0 (patient z) in the image frame
        chi, eroded = qsm_from_field(maps.maps["B0"], maps.mask, g.voxel_mm, b0_t=b0_t, b0_dir=b0_dir)
    except ValueError as exc:  # e.g. mask too small to erode for V-SHARP
        log.warning("QSM skipped: %s", exc)
        return maps
    maps.maps["QSM"] = np.where(eroded, chi, 0.0).astype(np.float32)
    maps.info["qsm_mask_voxels"] = int(eroded.sum())
    maps.info.setdefault("timings", {})["qsm_s"] = time.time() - t0
    return maps


def reconstruct(kspace: KSpace6D, chain: str, cfg: Any) -> QuantMaps:
    """Run the solver of ``chain`` ('summit' or 'baseline') with its typed ``cfg``; adds QSM and geometry."""
    if chain == "summit":
        from qmapinr.recon.solvers.summit import summit_recon

        maps = summit_recon(kspace, cfg)
    elif chain == "baseline":
        from qmapinr.recon.baselines.subspace import subspace_recon

        maps = subspace_recon(kspace, cfg)
    else:
        raise ValueError(f"unknown chain {chain!r}; known: summit, baseline")
    maps = add_qsm(maps, kspace, b0_t=float(kspace.meta.get("field_strength_t", 3.0)))
    maps.info["geometry"] = kspace.geometry
    return maps

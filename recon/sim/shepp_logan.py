"""MR Shepp–Logan head from a public package (phantominator's ``mr_shepp_logan``, Gach et al. 2008).

phantominator gives M0, T1 and T2 (s) per voxel for a 3-D ellipsoid head at a field strength; this module
turns them into a :class:`~qmapinr.recon.sim.phantom.Phantom` (times in ms) with labels named after the
tissue of the Gach table nearest in (log T1, log T2): scalp, marrow, CSF, GM, WM, tumour. Voxels where the
package's additive ellipsoids overlap keep the package's own values and get the nearest label.

Choices made here (not from the package): the slab is the package's z range ``zlims`` (default the central
band -0.45..-0.05 that holds the ventricles and the small tumours); T2* = 1 / (1/T2 + 1/T2') with
T2' = 165 ms for tissue (the value that maps WM/GM T2 of phantoms.md onto their T2*) and 2000 ms for CSF
(T2* near 1 s, as the brain phantom); phantominator's own ``T2star=True`` is not used (it returns about T2).
chi (ppm) for WM, GM and CSF from phantoms.md [Q], 0 elsewhere; B0 and Phase0 as in
:func:`~qmapinr.recon.sim.phantom.brain_phantom` (dipole field of chi + seeded linear shim, seeded smooth phase).

The package is an optional dependency (``pip install qmapinr[phantoms]``); it is imported on first use.
"""

from __future__ import annotations

import numpy as np

from qmapinr.recon.sim.field import background_field_hz, dipole_field_hz, smooth_phase
from qmapinr.recon.sim.phantom import BRAIN_TISSUES, Phantom

# Gach 2008 table at 3 T (T1 = A B0^C s, T2 s) as phantominator implements it; used only to name labels.
_GACH = {"scalp": (0.324, 0.137, 0.07), "marrow": (0.533, 0.088, 0.05), "CSF": (None, 4.2, 1.99),
         "GM": (0.857, 0.376, 0.10), "WM": (0.583, 0.382, 0.08), "tumor": (0.926, 0.217, 0.10)}
T2_PRIME_MS = {"CSF": 2000.0}
T2_PRIME_TISSUE_MS = 165.0


def _gach_t1_t2_ms(b0_t: float) -> dict[str, tuple[float, float]]:
    out = {}
    for name, (a, c, t2) in _GACH.items():
        t1 = c if a is None else a * b0_t**c
        out[name] = (1e3 * t1, 1e3 * t2)
    return out


def shepp_logan_phantom(
    shape: tuple[int, int, int] = (16, 64, 64),
    seed: int = 0,
    voxel_mm: tuple[float, float, float] | None = None,
    b0_t: float = 3.0,
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0),
    background_hz: float = 10.0,
    phase_rad: float = 1.0,
    zlims: tuple[float, float] = (-0.45, -0.05),
) -> Phantom:
    """MR Shepp–Logan slab ``(nz, ny, nx)`` with ground truth maps (module docstring for the choices).

    Parameters as :func:`~qmapinr.recon.sim.phantom.brain_phantom`; ``zlims`` is the package's z range.
    Raises ImportError (with the install command) when phantominator is not installed.
    """
    try:
        from phantominator import mr_shepp_logan
    except ImportError as exc:  # optional dependency
        raise ImportError("the 'shepp-logan' phantom needs phantominator: pip install 'qmapinr[phantoms]'") from exc
    nz, ny, nx = shape
    voxel_mm = voxel_mm or (220.0 / nx, 220.0 / ny, 4.0)
    m0, t1, t2 = (np.transpose(v, (2, 0, 1)) for v in mr_shepp_logan((ny, nx, nz), B0=b0_t, zlims=zlims))
    obj = (m0 > 0) & (t1 > 0) & (t2 > 0)
    table = _gach_t1_t2_ms(b0_t)
    names = list(table)
    ref = np.log(np.array([table[n] for n in names]))  # (ntissue, 2)
    lt = np.log(np.stack([np.where(obj, t1, 1.0) * 1e3, np.where(obj, t2, 1.0) * 1e3], -1))  # (..., 2)
    nearest = np.argmin(((lt[..., None, :] - ref) ** 2).sum(-1), axis=-1)
    labels = np.where(obj, nearest + 1, 0).astype(np.int16)
    label_names = {0: "background", **{i + 1: n for i, n in enumerate(names)}}
    t1_ms = np.where(obj, t1 * 1e3, 0.0)
    t2_ms = np.where(obj, t2 * 1e3, 0.0)
    t2p = np.full(shape, T2_PRIME_TISSUE_MS)
    chi = np.zeros(shape)
    for i, n in enumerate(names):
        sel = labels == i + 1
        t2p[sel] = T2_PRIME_MS.get(n, T2_PRIME_TISSUE_MS)
        if n in BRAIN_TISSUES:
            chi[sel] = BRAIN_TISSUES[n]["chi"]
    t2s = np.where(obj, 1.0 / (1.0 / np.maximum(t2_ms, 1e-9) + 1.0 / t2p), 0.0)
    rng = np.random.default_rng(seed)
    maps = {"A": np.where(obj, m0, 0.0), "T1": t1_ms, "T2": t2_ms, "T2star": t2s, "chi": chi}
    maps = {k: v.astype(np.float32) for k, v in maps.items()}
    maps["B0"] = (dipole_field_hz(maps["chi"], voxel_mm, b0_t=b0_t, b0_dir=b0_dir)
                  + background_field_hz(shape, rng, background_hz)).astype(np.float32)
    maps["Phase0"] = smooth_phase(shape, rng, phase_rad)
    tissues = {}
    for i, n in enumerate(names):
        sel = labels == i + 1
        if sel.any():
            tissues[n] = {k: float(np.median(maps[k][sel])) for k in ("A", "T1", "T2", "T2star", "chi")}
    return Phantom(labels=labels, label_names=label_names, maps=maps, mask=obj, tissues=tissues,
                   info={"kind": "shepp-logan", "source": "phantominator.mr_shepp_logan", "seed": seed,
                         "voxel_mm": tuple(voxel_mm), "b0_t": b0_t, "b0_dir": tuple(b0_dir), "zlims": zlims})

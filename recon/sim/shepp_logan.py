"""MR Shepp–Logan head from a public package (phantominator's ``mr_shepp_logan``, Gach et al. 2008).

phantominator gives M0, T1 and T2 (s) per voxel for a 3-D ellipsoid head at a field strength; this module
turns them into a :class:`~qmapinr.recon.sim.phantom.Phantom` (times in ms) with labels named after the
tissue of the Gach table nearest in (log T1, log T2): scalp, marrow, CSF, GM, WM, tumour. Maps are piecewise
constant per label (the label's median package value), as the project's other phantoms; the few voxels where the
package's additive ellipsoids overlap into odd values take their nearest label's values.

Choices made here (not from the package): the slab is the package's z range ``zlims`` (default the central
band -0.45..-0.05 that holds the ventricles and the small tumours); T2* = 1 / (1/T2 + 1/T2') with
T2' = 165 ms for tissue (the value that maps WM/GM T2 of docs/phantoms.md onto their T2*) and 2000 ms for CSF
(T2* near 1 s, as the brain phantom); phantominator's own ``T2star=True`` is not used (it returns about T2).
chi (ppm) for WM, GM and CSF from docs/phantoms.md [Q], 0 elsewhere; B0 and Phase0 as in
:func:`~qmapinr.recon.sim.phantom.brain_phantom` (dipole field of chi + seeded linear shim, seeded smooth phase).

The package is an optional dependency (``pip install qmapinr[phantoms]``); it is imported on first use.
"""

from __future__ import annotations

import numpy as np

from qmapinr.recon.sim.phantom import BRAIN_TISSUES, Phantom, _fill_maps

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
    m0, t1_s, t2_s = (np.transpose(v, (2, 0, 1)) for v in mr_shepp_logan((ny, nx, nz), B0=b0_t, zlims=zlims))
    obj = (m0 > 0) & (t1_s > 0) & (t2_s > 0)
    table = _gach_t1_t2_ms(b0_t)
    names = list(table)
    ref = np.log(np.array([table[n] for n in names]))  # (ntissue, 2)
    lt = np.log(np.stack([np.where(obj, t1_s, 1.0) * 1e3, np.where(obj, t2_s, 1.0) * 1e3], -1))  # (..., 2)
    nearest = np.argmin(((lt[..., None, :] - ref) ** 2).sum(-1), axis=-1)
    labels = np.where(obj, nearest + 1, 0).astype(np.int16)
    label_names = {0: "background", **{i + 1: n for i, n in enumerate(names)}}
    tissues = {}
    for i, n in enumerate(names):
        sel = labels == i + 1
        if not sel.any():
            continue
        t2 = float(np.median(t2_s[sel])) * 1e3
        t2p = T2_PRIME_MS.get(n, T2_PRIME_TISSUE_MS)
        tissues[n] = {"A": float(np.median(m0[sel])), "T1": float(np.median(t1_s[sel])) * 1e3, "T2": t2,
                      "T2star": 1.0 / (1.0 / t2 + 1.0 / t2p), "chi": BRAIN_TISSUES.get(n, {"chi": 0.0})["chi"]}
    present = {k: v for k, v in label_names.items() if k == 0 or v in tissues}
    maps = _fill_maps(labels, present, tissues, np.random.default_rng(seed), voxel_mm, b0_t, b0_dir,
                      background_hz, phase_rad)
    return Phantom(labels=labels, label_names=present, maps=maps, mask=obj, tissues=tissues,
                   info={"kind": "shepp-logan", "source": "phantominator.mr_shepp_logan", "seed": seed,
                         "voxel_mm": tuple(voxel_mm), "b0_t": b0_t, "b0_dir": tuple(b0_dir), "zlims": zlims})

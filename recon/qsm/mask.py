"""Brain mask for QSM: the reconstruction's support, eroded, thresholded on magnitude (and field-fit residual).

The support of a reconstruction (where it has signal) includes the skull-side rim and, in a real head, scalp
and vessels with unreliable phase. QSM wants a mask that (1) stays a few mm inside the support, so that
background removal does not read the noisy edge, (2) drops voxels with little signal (their field is noise),
and (3) drops voxels whose multi-echo phase does not follow a line (flow, fat, residual wraps), as
SEPIA/QSMxT do with "magnitude + phase-quality" masks. The rule here:

``mask = largest connected component of (erode(support, erode_mm) & A >= mag_frac * median(A)
& residual <= residual_max)``

with defaults ``erode_mm = vmin`` (the smallest voxel size: one voxel in-plane),
``mag_frac = 0.2`` and no residual threshold unless a residual map is given (``residual_max = 0.5`` rad).
The erosion uses the same spherical footprint as V-SHARP (:func:`~qmapinr.recon.qsm.background.erode_sphere`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from qmapinr.recon.qsm.background import erode_sphere

__all__ = ["brain_mask"]


def brain_mask(support: np.ndarray, magnitude: np.ndarray, voxel_mm: Sequence[float], erode_mm: float | None = None,
               mag_frac: float = 0.2, residual: np.ndarray | None = None, residual_max: float = 0.5
               ) -> np.ndarray:
    """bool ``(nz, ny, nx)`` QSM mask (module docstring); raises ValueError if nothing is left.

    Parameters
    ----------
    support : bool ``(nz, ny, nx)`` reconstruction support.
    magnitude : float ``(nz, ny, nx)`` e.g. the A map (any unit).
    voxel_mm : (x, y, z) mm.
    erode_mm : erosion radius (mm); default ``min(voxel_mm)``; 0 = no erosion.
    mag_frac : keep voxels with ``magnitude >= mag_frac * median(magnitude[support])``.
    residual, residual_max : optional phase-fit residual map (rad) and its upper limit.
    """
    s = np.asarray(support).astype(bool)
    a = np.asarray(magnitude, dtype=np.float64)
    if s.shape != a.shape or s.ndim != 3:
        raise ValueError(f"support and magnitude must both be (nz, ny, nx); got {s.shape} and {a.shape}")
    if not s.any():
        raise ValueError("brain_mask: empty support")
    vmin = float(np.min(np.asarray(voxel_mm, dtype=np.float64)))
    r = vmin if erode_mm is None else float(erode_mm)
    m = erode_sphere(s, voxel_mm, r) if r > 0 else s.copy()
    m &= a >= mag_frac * float(np.median(a[s]))
    if residual is not None:
        m &= np.asarray(residual) <= residual_max
    lab, n = ndimage.label(m)
    if n == 0:
        raise ValueError(f"brain_mask: nothing left after eroding the support by {r:.3g} mm and thresholding "
                         f"the magnitude at {mag_frac} x median")
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))

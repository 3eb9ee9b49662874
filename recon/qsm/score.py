"""QSM scores against a true susceptibility map (QSM reconstruction challenge 2.0 definitions).

- :func:`nrmse_demeaned` -- ``100 ||(x - mean x) - (t - mean t)|| / ||t - mean t||`` over the mask (%), the
  challenge's "demeaned NRMSE" (Marques et al., MRM 2021;86:526): the reference of QSM is arbitrary, so both maps
  are demeaned inside the mask before comparing.
- :func:`region_fit` -- region means of the estimate against the truth over labelled regions (e.g. deep grey
  matter), both demeaned by their mask means, and the regression slope, intercept and R^2 of estimate ~ truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["nrmse_demeaned", "region_fit"]


def nrmse_demeaned(est: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Demeaned NRMSE in % over ``mask`` (all arrays ``(nz, ny, nx)``)."""
    m = np.asarray(mask).astype(bool)
    if not m.any():
        raise ValueError("nrmse_demeaned: empty mask")
    e = np.asarray(est, dtype=np.float64)[m]
    t = np.asarray(truth, dtype=np.float64)[m]
    e, t = e - e.mean(), t - t.mean()
    return float(100.0 * np.linalg.norm(e - t) / np.linalg.norm(t))


def region_fit(est: np.ndarray, truth: np.ndarray, mask: np.ndarray, regions: Sequence[np.ndarray]) -> dict:
    """Region means (demeaned over ``mask``) and the linear fit ``est_mean = slope * truth_mean + intercept``.

    ``regions`` : bool ``(nz, ny, nx)`` masks (intersected with ``mask``; empty ones are skipped).
    Returns dict: 'est', 'truth' (lists of region means, ppm), 'slope', 'intercept', 'r2'.
    """
    m = np.asarray(mask).astype(bool)
    e = np.asarray(est, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    e0, t0 = e[m].mean(), t[m].mean()
    em, tm = [], []
    for r in regions:
        sel = np.asarray(r).astype(bool) & m
        if sel.any():
            em.append(float(e[sel].mean() - e0))
            tm.append(float(t[sel].mean() - t0))
    if len(em) < 2:
        raise ValueError("region_fit: need at least two non-empty regions inside the mask")
    x, y = np.array(tm), np.array(em)
    slope, icpt = np.polyfit(x, y, 1)
    pred = slope * x + icpt
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else float("nan")
    return {"est": em, "truth": tm, "slope": float(slope), "intercept": float(icpt), "r2": r2}

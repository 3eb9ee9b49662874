"""Scores of reconstructed maps against a phantom's ground truth (docs/design.md: report whole mask, WM+GM, tissues).

All maps are float ``(nz, ny, nx)``; NRMSE = ||est - true||_2 / ||true||_2 over the voxels of a region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCORED = ("T1", "T2", "T2star", "A")


def nrmse(est: np.ndarray, true: np.ndarray, region: np.ndarray) -> float:
    """Normalised RMSE over the bool ``region``; NaN for an empty region."""
    if not region.any():
        return float("nan")
    d = est[region].astype(np.float64) - true[region]
    return float(np.linalg.norm(d) / max(np.linalg.norm(true[region].astype(np.float64)), 1e-12))


@dataclass
class Scores:
    """NRMSE per map over the mask and over WM+GM; median relative bias per (map, tissue); sphere fits."""

    nrmse_mask: dict[str, float] = field(default_factory=dict)
    nrmse_wmgm: dict[str, float] = field(default_factory=dict)
    bias: dict[str, dict[str, float]] = field(default_factory=dict)
    medians: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    spheres: dict[str, dict[str, float]] = field(default_factory=dict)


def _linfit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Slope, intercept and R^2 of y ~ a x + b."""
    a, b = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (a * x + b)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1e-12
    return {"slope": float(a), "intercept": float(b), "r2": 1.0 - ss_res / ss_tot, "n": int(x.size)}


def score(maps: dict[str, np.ndarray], truth: dict[str, np.ndarray], labels: np.ndarray,
          label_names: dict[int, str], mask: np.ndarray, names: tuple[str, ...] = SCORED,
          sphere_prefix: tuple[str, ...] = ("T1-", "T2-"),
          sphere_limits: dict[str, tuple[float, float]] | None = None) -> Scores:
    """Score ``maps`` inside ``mask`` (reconstruction support AND phantom mask).

    Tissue medians use voxels of each label inside ``mask``; labels named with ``sphere_prefix`` (NIST-like
    phantom) are also fitted as (true mean -> estimated mean) lines with R^2 and slope, restricted to spheres
    whose true value lies in ``sphere_limits[name]`` (the range the protocol can resolve; docs/phantoms.md).
    """
    s = Scores()
    by_name = {v: k for k, v in label_names.items()}
    wmgm = mask & np.isin(labels, [by_name[n] for n in ("WM", "GM") if n in by_name])
    limits = sphere_limits or {"T1": (100.0, 2500.0), "T2": (10.0, 400.0), "T2star": (5.0, 300.0)}
    for name in names:
        if name not in maps or name not in truth:
            continue
        est, true = maps[name], truth[name]
        s.nrmse_mask[name] = nrmse(est, true, mask)
        s.nrmse_wmgm[name] = nrmse(est, true, wmgm)
        s.bias[name], s.medians[name] = {}, {}
        sx, sy = [], []
        for lab, tissue in label_names.items():
            region = mask & (labels == lab)
            if tissue == "background" or region.sum() < 3:
                continue
            me, mt = float(np.median(est[region])), float(np.median(true[region]))
            s.medians[name][tissue] = (me, mt)
            s.bias[name][tissue] = (me - mt) / mt if mt else float("nan")
            lo, hi = limits.get(name, (-np.inf, np.inf))
            if name != "A" and tissue.startswith(sphere_prefix) and lo <= mt <= hi:
                sx.append(float(np.mean(true[region])))
                sy.append(float(np.mean(est[region])))
        if len(sx) >= 3:
            s.spheres[name] = _linfit(np.array(sx), np.array(sy))
    return s


def format_scores(s: Scores, title: str = "") -> str:
    """Plain-text table (one row per map) for logs, the CLI and BENCHMARKS.md."""
    lines = [title] if title else []
    tissues = sorted({t for d in s.bias.values() for t in d})
    lines.append("| map | NRMSE mask | NRMSE WM+GM | " + " | ".join(f"bias {t}" for t in tissues) + " |")
    lines.append("|---" * (3 + len(tissues)) + "|")
    for name in s.nrmse_mask:
        b = " | ".join(f"{100 * s.bias[name].get(t, float('nan')):+.1f} %" for t in tissues)
        lines.append(f"| {name} | {s.nrmse_mask[name]:.3f} | {s.nrmse_wmgm[name]:.3f} | {b} |")
    return "\n".join(lines)

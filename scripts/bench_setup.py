"""Cost and quality of SUMMIT's setup stage (coil maps, initial maps, amplitude gain) per matrix size.

For each case the simulated k-space is cached (``--cache``, a pickle per case) so that before/after runs see the
same bits. The data are grouped into transient line groups as ``run_inr`` does (``with_shot_groups``, counted in
the init column). Prints one markdown row per case: seconds per setup stage, peak RSS above the start, the coil-map
alignment with the simulator's true maps (median per-voxel ``|<s_est, s_true>|`` over the object), the support
size, and — with ``--epochs N`` — the WM+GM / whole-mask NRMSE of a full SUMMIT reconstruction (N epochs).

    nice -n 5 python scripts/bench_setup.py --cases 8x32x32/4,16x64x64/8 --R 4 [--calib 0] [--epochs 60]
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import time

import numpy as np
import torch

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.evaluation.benchmark import PeakMemory
from qmapinr.recon.evaluation.metrics import score
from qmapinr.recon.physics.history import with_shot_groups
from qmapinr.recon.sim.simulate import SimulationConfig, simulate


def _alignment(est: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float:
    """Median over ``mask`` of ``|<s_est, s_true>| / (|s_est| |s_true|)`` (1 = same maps up to a phase)."""
    ip = np.abs(np.sum(est.conj() * true, axis=0))
    den = np.sqrt(np.sum(np.abs(est) ** 2, axis=0) * np.sum(np.abs(true) ** 2, axis=0)) + 1e-12
    return float(np.median((ip / den)[mask]))


def _case(text: str, args) -> SimulationConfig:
    shape, coils = text.split("/")
    nz, ny, nx = (int(v) for v in shape.split("x"))
    calib = (args.calib, args.calib)
    return SimulationConfig(shape=(nz, ny, nx), ncoils=int(coils), R=args.R, snr=30.0, seed=args.seed,
                            preset=args.preset, calib=calib)


def _load(sim: SimulationConfig, cache: str):
    os.makedirs(cache, exist_ok=True)
    key = (f"{sim.shape[0]}x{sim.shape[1]}x{sim.shape[2]}_c{sim.ncoils}_R{sim.R:g}_{sim.preset}"
           f"_cal{sim.calib[0]}_s{sim.seed}.pkl")
    path = os.path.join(cache, key)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    t0 = time.perf_counter()
    out = simulate(sim)
    logging.info("simulated %s in %.1f s", key, time.perf_counter() - t0)
    with open(path, "wb") as f:
        pickle.dump(out, f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", default="8x32x32/4,16x64x64/8", help="nz x ny x nx / coils, comma separated")
    ap.add_argument("--R", type=float, default=4.0)
    ap.add_argument("--calib", type=int, default=3, help="fully sampled centre width (0 = none)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=0, help="> 0: also run a full SUMMIT fit and score it")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/qmapinr_setup_bench")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    from qmapinr.recon.methods.summit import solver

    print(f"R={a.R:g}, calib={a.calib}, preset {a.preset}, seed {a.seed}, {a.threads} thread(s)\n")
    print("| case | lines | coil maps s | init s | gain s | setup s | peak RSS MB | coil align | mask vox | "
          "fit s | NRMSE WM+GM T1/T2/T2* | NRMSE mask T1/T2/T2* |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for text in a.cases.split(","):
        sim = _case(text, a)
        ks, ph = _load(sim, a.cache)
        cfg = SummitConfig(epochs=a.epochs, seed=a.seed, threads=a.threads)
        torch.manual_seed(cfg.seed)
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            prep = solver.prepare(with_shot_groups(ks), cfg)  # as run_inr: transient shots modelled exactly
            t1 = time.perf_counter()
            model = solver.build_field(prep, cfg)
            t2 = time.perf_counter()
        coil_s = prep.timings["coil_maps_s"]
        init_s = t1 - t0 - coil_s
        align = _alignment(prep.sens.numpy(), ph.sens, ph.mask)
        row = (f"| {text} | {ks.nlines} | {coil_s:.2f} | {init_s:.2f} | {t2 - t1:.2f} | {t2 - t0:.2f} | "
               f"{mem.peak_mb:.0f} | {align:.4f} | {int(prep.mask.sum())} |")
        if a.epochs > 0:
            t3 = time.perf_counter()
            res = solver.fit(model, solver.SummitLoss(prep, cfg), ks.geometry.matrix[0], cfg, prep.device)
            out = solver.final_maps(model, prep.hybrid, prep.fwd, prep.kspace, prep.mask, prep.scale, cfg.batch_x)
            fit_s = time.perf_counter() - t3
            mask = ph.mask & out.mask
            s = score(out.maps, ph.maps, ph.labels, ph.label_names, mask)
            wm = "/".join(f"{s.nrmse_wmgm[n]:.4f}" for n in ("T1", "T2", "T2star"))
            wh = "/".join(f"{s.nrmse_mask[n]:.4f}" for n in ("T1", "T2", "T2star"))
            row += f" {fit_s:.1f} | {wm} | {wh} |"
            del res
        else:
            row += " — | — | — |"
        print(row, flush=True)
        del prep, model


if __name__ == "__main__":
    main()

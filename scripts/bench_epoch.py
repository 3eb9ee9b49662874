"""Seconds per SUMMIT epoch with a per-stage breakdown, peak RSS and (optionally) a cProfile of one epoch.

The setup (coil-map estimation, initial maps) is bypassed: the true coil maps and the true maps (in-mask medians
outside the object) start the fit, so the table isolates the epoch cost. Prints one markdown row per size and the
growth exponent of s/epoch against voxels x coils.

    python scripts/bench_epoch.py --sizes 8x32x32/4,16x64x64/8 [--epochs 2] [--threads 1] [--wnnm] [--profile]
    python scripts/bench_epoch.py --sizes 16x64x64/8 --quality      # full summit_recon, NRMSE vs truth

Uses only the solver API (``build_forward``, ``Prepared``, ``build_field``, ``fit``, ``SummitLoss``), so the same
script measures an older checkout (``PYTHONPATH=<old>/src``).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import math
import pstats
import resource
import time

import numpy as np
import torch

from qmapinr.recon.config import SummitConfig, from_properties
from qmapinr.recon.methods.summit.initial import InitialMaps
from qmapinr.recon.methods.summit.solver import (
    Prepared,
    SummitLoss,
    build_field,
    build_forward,
    fit,
    map_noise_levels,
    summit_recon,
)
from qmapinr.recon.physics.fft import readout_ifft
from qmapinr.recon.sim.simulate import SimulationConfig, simulate

NAMES = ("A", "T1", "T2", "T2star", "B0", "Phase0")


def parse_size(text: str) -> tuple[tuple[int, int, int], int]:
    """'16x64x64/8' -> ((16, 64, 64), 8)."""
    shape, coils = text.split("/")
    return tuple(int(v) for v in shape.split("x")), int(coils)  # type: ignore[return-value]


def truth_prepared(ks, ph, cfg: SummitConfig) -> Prepared:
    """A :class:`Prepared` from the ground truth (true coil maps, true maps as priors): no setup cost."""
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    hybrid = readout_ifft(ks)
    scale = float(hybrid.abs().amax()) or 1.0
    hybrid = hybrid / scale
    mask = torch.from_numpy(ph.mask)
    maps = {}
    for n in NAMES:
        m = torch.from_numpy(np.asarray(ph.maps[n], dtype=np.float32).copy())
        if n == "A":
            m = m / scale
        med = float(m[mask].median())
        maps[n] = torch.where(mask, m, torch.full_like(m, med))
    sens = torch.from_numpy(np.asarray(ph.sens, dtype=np.complex64))
    init = InitialMaps(maps=maps, mask=mask)
    fwd = build_forward(ks, cfg, device)
    levels = map_noise_levels(maps, mask, 0.02)
    return Prepared(ks, hybrid.to(device), scale, None, sens, init, fwd, levels, device, {})


def run_size(shape, coils: int, a) -> dict:
    t0 = time.perf_counter()
    ks, ph = simulate(SimulationConfig(shape=shape, ncoils=coils, R=a.R, snr=30, seed=0, phantom=a.phantom,
                                       preset=a.preset))
    t_sim = time.perf_counter() - t0
    extra = {}
    if a.batch_x:
        extra["batch_x"] = a.batch_x
    cfg = SummitConfig(epochs=a.epochs, coil_mode="ratio", wnnm_start_epoch=0 if a.wnnm else 10**6, seed=0,
                       **extra)
    if a.quality:
        props = dict(kv.split("=", 1) for kv in a.set)
        cfg = dataclasses.replace(from_properties(SummitConfig, props), seed=0, threads=a.threads, **extra)
        t0 = time.perf_counter()
        out = summit_recon(ks, cfg)
        from qmapinr.recon.evaluation.metrics import score
        s = score(out.maps, ph.maps, ph.labels, ph.label_names, out.mask & ph.mask)
        return {"sim_s": t_sim, "total_s": time.perf_counter() - t0, "nrmse": s.nrmse_mask,
                "timings": out.info["timings"]}
    prep = truth_prepared(ks, ph, cfg)
    model = build_field(prep, cfg)
    loss = SummitLoss(prep, cfg)
    fit(model, loss, shape[2], dataclasses.replace(cfg, epochs=1), prep.device)  # warm-up epoch
    prof = cProfile.Profile(time.process_time) if a.profile else None
    if prof:
        prof.enable()
    c0 = time.process_time()
    res = fit(model, loss, shape[2], cfg, prep.device)
    cpu = time.process_time() - c0
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    t = res.timings
    n = t["epochs_run"]
    per = {k[:-2]: v / n for k, v in t.items() if k.endswith("_s") and k not in ("loop_s", "callback_s")}
    return {"sim_s": t_sim, "epoch_s": t["loop_s"] / n, "cpu_s": cpu / n, "stages": per, "lines": ks.nlines,
            "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="8x32x32/4,16x64x64/8")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--R", type=float, default=2.0)
    ap.add_argument("--preset", default="phantom")
    ap.add_argument("--phantom", default="nist")
    ap.add_argument("--batch-x", type=int, default=0, help="override SummitConfig.batch_x (0 = config default)")
    ap.add_argument("--wnnm", action="store_true", help="WNNM on from the first epoch")
    ap.add_argument("--profile", action="store_true", help="cProfile the timed epochs (top 18 by own time)")
    ap.add_argument("--quality", action="store_true", help="full summit_recon with defaults, NRMSE vs truth")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="with --quality: a SummitConfig property (repeatable), e.g. --set coil_energy=0.95")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"preset {a.preset}, phantom {a.phantom}, R={a.R}, {a.epochs} epoch(s), {a.threads} thread(s), "
          f"WNNM {'on' if a.wnnm else 'off'}\n")
    print("| size | lines | simulate s | s/epoch (wall) | CPU s/epoch | stages (wall s/epoch) | peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for text in a.sizes.split(","):
        shape, coils = parse_size(text)
        r = run_size(shape, coils, a)
        rows.append((shape, coils, r))
        if a.quality:
            print(f"{text}: simulate {r['sim_s']:.1f} s, recon {r['total_s']:.1f} s, NRMSE "
                  + ", ".join(f"{k} {v:.4f}" for k, v in r["nrmse"].items()), flush=True)
            continue
        st = " | ".join(f"{k} {v:.3f}" for k, v in r["stages"].items() if k != "epochs_run")
        print(f"| {text} | {r['lines']} | {r['sim_s']:.1f} | {r['epoch_s']:.3f} | {r['cpu_s']:.3f} | {st} "
              f"| {r['rss_gb']:.2f} |", flush=True)
    if len(rows) >= 2 and not a.quality:
        w = np.array([math.log(np.prod(s) * c) for s, c, _ in rows])
        for key in ("epoch_s", "cpu_s"):
            e = np.array([math.log(r[key]) for _, _, r in rows])
            print(f"growth exponent of {key} per epoch vs voxels x coils: {np.polyfit(w, e, 1)[0]:.2f}")


if __name__ == "__main__":
    main()

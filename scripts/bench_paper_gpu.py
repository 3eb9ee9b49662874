"""Paper-size SUMMIT case on a GPU: per-stage times and peak GPU memory (CPU-only machines skip with the reason).

The paper's phantom protocol: matrix 40 x 128 x 128 (z, y, x), 24 coils, 5 tau x 128 readouts x 3 echoes,
TR 20 ms, flip 4 deg, R = 2. The simulator runs on the CPU; preparation, the fit (stage timing with one device
sync per stage, ``time_stages=True``) and the final maps run on ``cuda``, with the tiny-cuda-nn hash encoding
when it is importable (``map_grid.implementation='auto'``).

    python scripts/bench_paper_gpu.py [--epochs 5] [--shape 40,128,128] [--coils 24] [--tcnn auto|torch|tcnn]
    python scripts/bench_paper_gpu.py --device cpu --epochs 2      # the same stages on the CPU, peak RSS
    ... --virtual-coils 12 --cache /tmp/paper.pkl                    # SVD coil compression; reuse the simulation
    ... --epochs 60 --coil-energy 0.95                              # compression by energy; 60 epochs of 16 steps
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import resource
import sys
import time

import numpy as np
import torch

from qmapinr.gadgets.threads import session_config
from qmapinr.recon.config import SummitConfig, from_properties
from qmapinr.recon.evaluation.metrics import score
from qmapinr.recon.methods.schedule import step_schedule
from qmapinr.recon.methods.summit.solver import (
    SummitLoss,
    build_field,
    final_maps,
    fit,
    prepare,
    resolve_batch_x,
)
from qmapinr.recon.physics.history import with_shot_groups
from qmapinr.recon.sim.simulate import SimulationConfig, simulate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="40,128,128")
    ap.add_argument("--coils", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-x", type=int, default=4)
    ap.add_argument("--memory-budget-mb", type=float, default=16384.0)
    ap.add_argument("--tcnn", default="auto", choices=("auto", "torch", "tcnn"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--virtual-coils", type=int, default=0, help="SVD coil compression to this many (0 = off)")
    ap.add_argument("--coil-energy", type=float, default=None,
                    help="SVD coil compression to the fewest eigen-coils keeping this energy (default: the config's)")
    ap.add_argument("--no-step-schedule", action="store_true",
                    help="epochs as given (schedule_steps_per_epoch 0) instead of shortened to the reference steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a SummitConfig property (repeatable), e.g. --set coil_mode=jsense")
    ap.add_argument("--save", default="", help="write the maps, the truth, the mask and the labels to this .npz")
    ap.add_argument("--cache", default="", help="pickle of the simulated scan: read if present, else written")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_paper_gpu: skipped: torch.cuda.is_available() is False (no CUDA device or no CUDA build of "
              f"torch {torch.__version__}); run it on a machine with a GPU")
        return 0
    return run(a)


def run(a) -> int:
    """Simulate (CPU), prepare, fit ``a.epochs`` epochs and evaluate on ``a.device``; print per-stage times and
    the peak memory (GPU: allocated/reserved; CPU: resident set of the process, threads by the session policy)."""
    cuda = a.device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    shape = tuple(int(v) for v in a.shape.split(","))
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if a.cache and os.path.exists(a.cache):
        with open(a.cache, "rb") as f:
            ks, ph = pickle.load(f)
    else:
        ks, ph = simulate(SimulationConfig(shape=shape, ncoils=a.coils, R=2.0, snr=30, seed=0, phantom="nist",
                                           preset="phantom"))
        if a.cache:
            with open(a.cache, "wb") as f:
                pickle.dump((ks, ph), f)
    ks = with_shot_groups(ks)  # as run_inr does: transient shots modelled exactly
    times["simulate (CPU)" if not a.cache else "simulate or read the cache (CPU)"] = time.perf_counter() - t0
    base = SummitConfig(device=a.device, epochs=a.epochs, batch_x=a.batch_x, memory_budget_mb=a.memory_budget_mb,
                        virtual_coils=a.virtual_coils)
    if a.set:  # top-level fields, parsed as chain properties
        sets = dict(kv.split("=", 1) for kv in a.set)
        parsed = from_properties(SummitConfig, sets)
        base = dataclasses.replace(base, **{k: getattr(parsed, k) for k in sets})
    if a.coil_energy is not None:
        base = dataclasses.replace(base, coil_energy=a.coil_energy)
    if a.no_step_schedule:
        base = dataclasses.replace(base, schedule_steps_per_epoch=0)
    cfg = dataclasses.replace(base, map_grid=dataclasses.replace(base.map_grid, implementation=a.tcnn))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        cfg = session_config(cfg, "paper-size")
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    prep = prepare(ks, cfg)
    cfg = dataclasses.replace(cfg, batch_x=resolve_batch_x(prep.kspace, cfg))
    cfg, note = step_schedule(cfg, shape[2], cfg.batch_x)  # as run_inr does
    if note:
        print(note)
    sync()
    times["prepare (coil maps, init)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = build_field(prep, cfg)
    sync()
    times["build_field (+ gain)"] = time.perf_counter() - t0
    res = fit(model, SummitLoss(prep, cfg), shape[2], cfg, prep.device, time_stages=True)
    t0 = time.perf_counter()
    out = final_maps(model, prep.hybrid, prep.fwd, prep.kspace, prep.mask, prep.scale, cfg.batch_x)
    sync()
    times["final_maps"] = time.perf_counter() - t0
    n = res.timings["epochs_run"]
    where = (f"device {torch.cuda.get_device_name()}" if cuda else f"cpu, {cfg.threads} thread(s) max")
    print(f"{where}, shape {shape}, {a.coils} coils ({prep.kspace.ncoils} in the fit), {ks.nlines} lines, "
          f"{prep.kspace.seq.ntau} line groups, "
          f"batch_x {cfg.batch_x}, encoding {type(model.maps.encoding).__name__}, "
          f"coil INR keeps the RSS: {model.coil.keep_rss if model.coil is not None else 'no coil INR'}")
    print("| stage | seconds |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| fit, {n} epochs | {res.timings['loop_s']:.2f} |")
    for k, v in res.timings.items():
        if k.endswith("_s") and k not in ("loop_s", "callback_s"):
            print(f"| per epoch: {k[:-2]} | {v / n:.3f} |")
    if cuda:
        print(f"\npeak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, reserved "
              f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB")
    else:
        print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print("data-consistency loss per epoch:", ", ".join(f"{v:.4g}" for v in res.history))
    s = score(out.maps, ph.maps, ph.labels, ph.label_names, out.mask & ph.mask)
    if a.save:
        np.savez_compressed(a.save, mask=out.mask, truth_mask=ph.mask, labels=ph.labels,
                            **{f"est_{k}": v for k, v in out.maps.items()},
                            **{f"true_{k}": np.asarray(v) for k, v in ph.maps.items()})
    print("NRMSE after", n, "epochs:", ", ".join(f"{k} {v:.4f}" for k, v in s.nrmse_mask.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

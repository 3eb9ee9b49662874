"""Benchmark: SUMMIT vs LoREIN vs the subspace baseline over the acceleration R (docs/benchmarks/lorein.md).

Per R one simulated brain phantom (``qmapinr.recon.sim.simulate``: history-exact, ``prep_loop_order='shot-outer'``,
and calibration-free, ``calib=(0, 0)``, unless ``--calib`` asks for the 3x3 fully sampled centre) is
reconstructed by every method; NRMSE of T1/T2/T2*/A over WM+GM ("encoded tissue", docs/design.md) and over the whole
mask, wall time (s) and peak RSS above the start (MB) are printed as a markdown table and written as JSON (with the
1-minute load average at the end of each run, ``load1``: the machine is shared). Every solver runs with
``threads=--threads`` (default 1).

    PYTHONPATH=src python scripts/bench_lorein.py --R 4 8 16 32 48 --out /tmp/bench_lorein.json
    PYTHONPATH=src python scripts/bench_lorein.py --R 16 --methods lorein -p lorein:cons_grad=pmr

``-p METHOD:KEY=VALUE`` sets a config property of one method (repeatable); ``--variant NAME=METHOD:K=V,K=V`` adds a
named row (e.g. ``lorein-tensor=lorein:lrr_mode=tensor``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from qmapinr.recon.config import from_properties
from qmapinr.recon.evaluation.benchmark import PeakMemory
from qmapinr.recon.evaluation.metrics import SCORED, score
from qmapinr.recon.methods.registry import get_method
from qmapinr.recon.sim.simulate import SimulationConfig, simulate


def _parse_variants(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, str]]]:
    rows: dict[str, tuple[str, dict[str, str]]] = {m: (m, {}) for m in args.methods}
    for item in args.property or []:
        method, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        rows[method][1][key] = value
    for item in args.variant or []:
        name, _, spec = item.partition("=")
        method, _, kvs = spec.partition(":")
        rows[name] = (method, dict(kv.split("=", 1) for kv in kvs.split(",") if kv))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--R", type=float, nargs="+", default=[4, 8, 16, 32, 48])
    p.add_argument("--methods", nargs="*", default=["summit", "lorein", "baseline"])
    p.add_argument("-p", "--property", action="append", metavar="METHOD:KEY=VALUE")
    p.add_argument("--variant", action="append", metavar="NAME=METHOD:K=V,K=V")
    p.add_argument("--snr", type=float, default=30.0)
    p.add_argument("--shape", type=int, nargs=3, default=[8, 32, 32], metavar=("NZ", "NY", "NX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-calib", dest="calib", action="store_false", default=False,
                   help="calibration-free sampling, calib=(0, 0) (the default)")
    p.add_argument("--calib", dest="calib", action="store_true", help="3x3 fully sampled calibration centre")
    p.add_argument("--out", default=None, help="JSON file of all rows")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = _parse_variants(args)
    results = []
    print("| R | method | " + " | ".join(f"{n} WM+GM" for n in SCORED) + " | T1 mask | T2 mask | wall s | peak MB |")
    print("|---" * (6 + len(SCORED)) + "|")
    for r in args.R:
        kspace, phantom = simulate(SimulationConfig(shape=tuple(args.shape), R=r, snr=args.snr, seed=args.seed,
                                                    calib=(3, 3) if args.calib else (0, 0)))
        for name, (method, props) in rows.items():
            m = get_method(method)
            fields = {"threads": str(args.threads)} if "threads" in m.config.__dataclass_fields__ else {}
            cfg = from_properties(m.config, {**fields, **props})
            t0 = time.perf_counter()
            with PeakMemory() as mem:
                maps = m.solve(kspace, cfg)
            seconds = time.perf_counter() - t0
            mask = phantom.mask & maps.mask
            s = score(maps.maps, phantom.maps, phantom.labels, phantom.label_names, mask)
            row = {"R": r, "calib": args.calib, "load1": os.getloadavg()[0],
                   "R_effective": kspace.acceleration, "method": name, "properties": props,
                   "nrmse_wmgm": s.nrmse_wmgm, "nrmse_mask": s.nrmse_mask, "bias": s.bias, "seconds": seconds,
                   "peak_mb": mem.peak_mb}
            results.append(row)
            vals = " | ".join(f"{s.nrmse_wmgm.get(n, float('nan')):.3f}" for n in SCORED)
            print(f"| {r:g} ({kspace.acceleration:.1f}) | {name} | {vals} | {s.nrmse_mask['T1']:.3f} | "
                  f"{s.nrmse_mask['T2']:.3f} | {seconds:.0f} | {mem.peak_mb:.0f} |", flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()

"""Micro-benchmark of the pure-PyTorch hash encoding: forward, forward+backward and optimiser step per batch.

Run ``python -m qmapinr.recon.inr.bench_encoding [--threads 2] [--points 20000] [--repeats 5]``. Prints one table
row per (config, gradient mode): median wall times in ms over ``--repeats`` runs after one warm-up. Coordinates are
seeded uniform random points in [0, 1]^3; the loss is the sum of squares of the encoding (the MLP cost is not
included). "step" is the optimiser step alone; "total" = zero_grad + forward + backward + step.

Gradient modes: ``dense-adam`` (dense table gradient, ``torch.optim.Adam`` foreach), ``dense-fused`` (same,
``Adam(fused=True)``), ``sparse-adam`` (sparse COO table gradient, ``torch.optim.SparseAdam``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from qmapinr.recon.config import HashGridConfig
from qmapinr.recon.inr.hashgrid import HashEncoding

#: (label, config) pairs benchmarked by default. 16L/2^19 is the MoCo-MP-qMRI map grid (base 16, scale 2).
CONFIGS: list[tuple[str, HashGridConfig]] = [
    ("16L 2^19 b16 s2.0", HashGridConfig(16, 2, 19, 16, 2.0, "torch")),
    ("12L 2^17 b16 s1.3", HashGridConfig(12, 2, 17, 16, 1.3, "torch")),
    ("8L 2^15 b4 s1.5", HashGridConfig(8, 2, 15, 4, 1.5, "torch")),
    ("8L 2^14 b16 s1.5", HashGridConfig(8, 2, 14, 16, 1.5, "torch")),
]
MODES = ("dense-adam", "dense-fused", "sparse-adam")


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_one(cfg: HashGridConfig, mode: str, n_points: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Time one config in one gradient mode; returns ms for fwd, fwd_bwd, step, total and the parameter count."""
    enc = HashEncoding(cfg, sparse_grad=(mode == "sparse-adam"), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_points, 3, generator=gen)
    if mode == "sparse-adam":
        opt: torch.optim.Optimizer = torch.optim.SparseAdam([enc.table], lr=1e-3)
    else:
        opt = torch.optim.Adam([enc.table], lr=1e-3, fused=(mode == "dense-fused"))

    def fwd() -> None:
        with torch.no_grad():
            enc(x)

    def fwd_bwd() -> None:
        opt.zero_grad(set_to_none=True)
        enc(x).square().sum().backward()

    def total() -> None:
        fwd_bwd()
        opt.step()

    out = {"fwd": _median_ms(fwd, repeats), "fwd_bwd": _median_ms(fwd_bwd, repeats)}
    fwd_bwd()
    grad = enc.table.grad

    def step() -> None:
        enc.table.grad = grad
        opt.step()

    out["step"] = _median_ms(step, repeats)
    out["total"] = _median_ms(total, repeats)
    out["params"] = float(enc.table.numel())
    out["dense_levels"] = float(enc.dense_levels)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")
    head = (f"{'config':<18} {'dense':>5} {'params':>10} {'N':>6} {'mode':<12} {'fwd ms':>8} {'fwd+bwd':>8} "
            f"{'step ms':>8} {'total ms':>9}")
    print(f"torch {torch.__version__}, threads {args.threads}, median of {args.repeats}")
    print(head)
    print("-" * len(head))
    for label, cfg in CONFIGS:
        for m in modes:
            r = bench_one(cfg, m, args.points, args.repeats)
            print(f"{label:<18} {int(r['dense_levels']):>5} {int(r['params']):>10} {args.points:>6} {m:<12} "
                  f"{r['fwd']:>8.1f} {r['fwd_bwd']:>8.1f} {r['step']:>8.1f} {r['total']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()

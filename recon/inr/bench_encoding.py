"""Micro-benchmark of the pure-PyTorch hash encoding: forward, forward+backward and optimiser step per batch.

Run ``python -m qmapinr.recon.inr.bench_encoding [--threads 2] [--points 20000] [--repeats 5]``. Prints one
table row per (config, gradient mode): best (minimum) wall time in ms of ``--repeats`` runs after one warm-up
(the minimum is the least disturbed by other processes on a shared machine).
Coordinates (``--coords``): ``uniform`` = seeded uniform random points in [0, 1]^3; ``planes`` = the voxels of
``ceil(N / (128 * 40))`` consecutive x positions of a 40 x 128 x 128 volume with 5 x 2 x 2 mm voxels (the
phantom protocol's solver batch: 4 x-planes = 20480 points), normalised by :func:`voxel_coordinates`. The loss
is the sum of squares of the encoding (the MLP cost is not included). "step" is the optimiser step alone;
"total" = zero_grad + forward + backward + step. ``--heads`` adds one row timing :class:`ParameterHeads`
(4 + 1 MLPs, 3 x 64) on the same N.

Gradient modes: ``dense-adam`` (dense table gradient, ``torch.optim.Adam`` foreach), ``dense-fused`` (same,
``Adam(fused=True)``), ``sparse-adam`` (sparse COO table gradient, ``torch.optim.SparseAdam``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from qmapinr.recon.config import HashGridConfig
from qmapinr.recon.inr.hashgrid import HashEncoding, voxel_coordinates
from qmapinr.recon.inr.heads import ParameterHeads

#: (label, config) pairs benchmarked by default. 16L/2^19 is the MoCo-MP-qMRI map grid (base 16, scale 2).
CONFIGS: list[tuple[str, HashGridConfig]] = [
    ("16L 2^19 b16 s2.0", HashGridConfig(16, 2, 19, 16, 2.0, "torch")),
    ("12L 2^17 b16 s1.3", HashGridConfig(12, 2, 17, 16, 1.3, "torch")),
    ("8L 2^15 b4 s1.5", HashGridConfig(8, 2, 15, 4, 1.5, "torch")),
    ("8L 2^14 b16 s1.5", HashGridConfig(8, 2, 14, 16, 1.5, "torch")),
]
MODES = ("dense-adam", "dense-fused", "sparse-adam")


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def make_points(n_points: int, kind: str, seed: int = 0) -> torch.Tensor:
    """Benchmark coordinates float32 (n_points, 3): 'uniform' random or 'planes' (x-planes of a grid)."""
    if kind == "uniform":
        return torch.rand(n_points, 3, generator=torch.Generator().manual_seed(seed))
    if kind == "planes":
        grid = voxel_coordinates((40, 128, 128), (5.0, 2.0, 2.0))  # (nz, ny, nx, 3)
        n_planes = -(-n_points // (40 * 128))
        return grid[:, :, 60:60 + n_planes].permute(2, 0, 1, 3).reshape(-1, 3)[:n_points].contiguous()
    raise ValueError(f"unknown coordinate kind {kind!r}")


def bench_one(cfg: HashGridConfig, mode: str, x: torch.Tensor, repeats: int,
              seed: int = 0) -> dict[str, float]:
    """Time one config in one gradient mode on points x (N, 3): ms for fwd, fwd_bwd, step, total; params;
    ``rows_updated``, the fraction of table rows the timed optimiser steps changed (the steps really ran)."""
    enc = HashEncoding(cfg, sparse_grad=(mode == "sparse-adam"), seed=seed)
    table0 = enc.table.detach().clone()
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

    out = {"fwd": _best_ms(fwd, repeats), "fwd_bwd": _best_ms(fwd_bwd, repeats)}
    fwd_bwd()
    grad = enc.table.grad

    def step() -> None:
        enc.table.grad = grad
        opt.step()

    out["step"] = _best_ms(step, repeats)
    out["total"] = _best_ms(total, repeats)
    out["params"] = float(enc.table.numel())
    out["rows_updated"] = float((enc.table.detach() != table0).any(dim=-1).float().mean())  # fraction of rows
    out["dense_levels"] = float(enc.dense_levels)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--coords", default="uniform", choices=("uniform", "planes"))
    ap.add_argument("--heads", action="store_true", help="also time ParameterHeads (3 x 64 MLPs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")
    head = (f"{'config':<18} {'dense':>5} {'params':>10} {'N':>6} {'mode':<12} {'fwd ms':>8} {'fwd+bwd':>8} "
            f"{'step ms':>8} {'total ms':>9}")
    x = make_points(args.points, args.coords)
    print(f"torch {torch.__version__}, threads {args.threads}, best of {args.repeats}, "
          f"coords {args.coords}")
    print(head)
    print("-" * len(head))
    for label, cfg in CONFIGS:
        for m in modes:
            r = bench_one(cfg, m, x, args.repeats)
            print(f"{label:<18} {int(r['dense_levels']):>5} {int(r['params']):>10} {args.points:>6} {m:<12} "
                  f"{r['fwd']:>8.1f} {r['fwd_bwd']:>8.1f} {r['step']:>8.1f} {r['total']:>9.1f}", flush=True)

    if args.heads:
        heads = ParameterHeads(32)
        feats = torch.randn(x.shape[0], 32, generator=torch.Generator().manual_seed(0))

        def heads_fwd_bwd() -> None:
            heads.zero_grad(set_to_none=True)
            sum(v.sum() for v in heads(feats).values()).backward()

        with torch.no_grad():
            t_fwd = _best_ms(lambda: heads(feats), args.repeats)
        t_fb = _best_ms(heads_fwd_bwd, args.repeats)
        n_par = sum(p.numel() for p in heads.parameters())
        print(f"{'heads 5x(3x64)':<18} {'-':>5} {n_par:>10} {x.shape[0]:>6} {'dense-adam':<12} "
              f"{t_fwd:>8.1f} {t_fb:>8.1f} {'-':>8} {'-':>9}")


if __name__ == "__main__":
    main()

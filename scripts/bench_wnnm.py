"""What WNNM costs per SUMMIT epoch, and what share of it is block matching (issue 11 item 2).

1. ``wnnm_loss`` forward + backward vs ``block_match`` alone on random slices ``(b, P, nz, ny)``;
2. SUMMIT epochs on the calibration-free brain phantom with WNNM from epoch 0 vs all WNNM weights 0 (1 thread,
   adaptive threads off), loop seconds and the solver's per-stage timings.

    python scripts/bench_wnnm.py --shape 16,64,64 --epochs 3
"""

from __future__ import annotations

import argparse
import time

import torch

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.losses.wnnm import block_match, wnnm_loss
from qmapinr.recon.methods.summit.solver import summit_recon
from qmapinr.recon.sim.simulate import SimulationConfig, simulate


def micro(shapes, repeats: int = 5) -> None:
    print("| slices (b, P, nz, ny) | block_match ms | wnnm_loss fwd+bwd ms | block-match share |")
    print("|---|---|---|---|")
    for shp in shapes:
        x = torch.rand(*shp, requires_grad=True)
        t0 = time.perf_counter()
        for _ in range(repeats):
            block_match(x.detach(), 5, 7, 3, 2)
        t_bm = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            wnnm_loss(x, 0.01, scale=None).backward()
        t_all = (time.perf_counter() - t0) / repeats
        print(f"| {shp} | {1e3 * t_bm:.1f} | {1e3 * t_all:.1f} | {t_bm / t_all:.0%} |")


def epochs(shape, ncoils: int, n_epochs: int) -> None:
    ks, _ = simulate(SimulationConfig(shape=shape, ncoils=ncoils, R=4, snr=30.0, seed=0, phantom="brain",
                                      calib=(0, 0)))
    print(f"\n| {'x'.join(map(str, shape))}, {ncoils} coils, {n_epochs} epochs | loop s | loss s | forward s | "
          "backward + step s |")
    print("|---|---|---|---|---|")
    for name, kw in (("WNNM on from epoch 0", {"wnnm_start_epoch": 0}),
                     ("WNNM off (weights 0)", {"lambda_a": 0.0, "lambda_t1_phase": 0.0, "lambda_t2": 0.0})):
        t = summit_recon(ks, SummitConfig(epochs=n_epochs, threads=1, adaptive_threads=False, **kw)).info["timings"]
        print(f"| {name} | {t['loop_s']:.2f} | {t['loss_s']:.2f} | {t['forward_s']:.2f} | {t['backward_step_s']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="16,64,64")
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    micro([(4, 2, 16, 64), (4, 2, 40, 128)])
    epochs(tuple(int(v) for v in a.shape.split(",")), a.coils, a.epochs)


if __name__ == "__main__":
    main()

"""Per-epoch time breakdown of the SUMMIT loop (INR = encoding + heads, forward model, loss incl. WNNM,
backward + Adam step) for the speed variants, on the demo phantom. Prints a markdown table.

    python scripts/bench_epoch.py [--shape 8,32,32] [--epochs 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.methods.summit.solver import summit_recon
from qmapinr.recon.sim.simulate import SimulationConfig, simulate

VARIANTS = {
    "exact forward (per n, tau, TE FFTs)": dict(forward="exact"),
    "structured rank-8 forward": dict(forward="structured"),
    "structured + 2 virtual coils": dict(forward="structured", virtual_coils=2),
    "structured, batch_x 8": dict(forward="structured", batch_x=8),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="8,32,32")
    ap.add_argument("--coils", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shape = tuple(int(v) for v in a.shape.split(","))
    ks, _ = simulate(SimulationConfig(shape=shape, ncoils=a.coils, R=4, snr=30, seed=0))
    # WNNM on from the first epoch so that its cost shows
    base = SummitConfig(epochs=a.epochs, wnnm_start_epoch=0, coil_mode="ratio")
    print(f"shape {shape}, {a.coils} coils, R=4, {ks.nlines} lines, {a.epochs} epochs, {a.threads} thread(s)\n")
    print("| variant | s/epoch | INR (enc+heads) | forward | loss (DC+WNNM) | backward+step |")
    print("|---|---|---|---|---|---|")
    for name, kw in VARIANTS.items():
        cfg = dataclasses.replace(base, **kw)
        out = summit_recon(ks, cfg)
        t = out.info["timings"]
        n = t["epochs_run"]
        print(f"| {name} | {t['loop_s'] / n:.2f} | {t['inr_s'] / n:.2f} | {t['forward_s'] / n:.2f} | "
              f"{t['loss_s'] / n:.2f} | {t['backward_step_s'] / n:.2f} |", flush=True)


if __name__ == "__main__":
    main()

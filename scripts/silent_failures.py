"""The silent-failure inputs of issue 10 through the chain's reconstruct call; prints what comes back.

    python scripts/silent_failures.py [--chain summit|baseline] [--epochs 3]

Inputs (4x16x16, 2 coils, R = 4, demo protocol, seed 1): all-zero k-space, one sample set to 3e38, the first
half of the shots (every tau present, the stream ended early), one T2-prep only.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np
import torch

from qmapinr.recon.config import SummitConfig
from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.methods.registry import reconstruct
from qmapinr.recon.methods.subspace import SubspaceConfig
from qmapinr.recon.sim.simulate import SimulationConfig, simulate


def variants(ks: KSpace6D) -> dict[str, KSpace6D]:
    shot = np.asarray(ks.meta["shot"])
    huge = ks.data.copy()
    huge[0, 0, 5, 3] = 3e38

    def subset(keep, **meta):
        return KSpace6D(ks.data[:, :, keep], ks.ky[keep], ks.kz[keep], ks.seg[keep], ks.tau[keep], ks.seq,
                        ks.geometry, noise=ks.noise, meta=meta)

    return {"all-zero k-space": dataclasses.replace(ks, data=np.zeros_like(ks.data), meta={}),
            "one sample 3e38": dataclasses.replace(ks, data=huge, meta={}),
            "first half of the shots (aborted)": subset(shot < shot.max() / 2, last_flag_seen=False),
            "one T2-prep only": subset(ks.tau == 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chain", default="summit", choices=("summit", "baseline"))
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    ks, _ = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=4.0, seed=1, nseg=8))
    cfg = (SummitConfig(epochs=args.epochs, coil_refine_iters=1, threads=1) if args.chain == "summit"
           else SubspaceConfig(admm_iters=2, coil_refine_iters=0))
    print(f"| input ({args.chain}) | result |\n|---|---|")
    for name, k in variants(ks).items():
        try:
            out = reconstruct(k, args.chain, cfg)
            nonzero = {n: int(np.count_nonzero(v)) for n, v in out.maps.items()}
            print(f"| {name} | maps, non-zero voxels {nonzero}; warnings {out.info.get('warnings')} |")
        except Exception as exc:  # the point of the script: show the error the client gets
            print(f"| {name} | {type(exc).__name__}: {exc} |")


if __name__ == "__main__":
    main()

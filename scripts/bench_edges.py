"""Edge errors of SUMMIT on a Shepp-Logan-like head: NRMSE and the error on the rims (outer voxels, rings next
to the bright scalp) before/after a change. Prints a markdown table.

    python scripts/bench_edges.py [--shape 8,32,32] [--R 4] [--epochs 60] [--seed 0] [-p key=value ...]

The head (built here; a public-package phantom comes later): the modified Shepp-Logan ellipses in (x, y),
extended along the slab z; a bright short-T1 'scalp' shell (about 1 voxel thick at 32x32) around a GM-like
brain with two CSF ventricles, a WM-like ellipse and small lesions. Regions scored:
``outer``: object voxels with a background neighbour in (y, x) (the outer 1 voxel); ``outer2``: within 2
voxels; ``ring``: brain voxels next to the scalp; ``csf_ring``: non-CSF voxels next to the (bright, long-T2)
ventricles; ``interior``: the rest of the object. CSF itself is left out of every score (barely encoded).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

import qmapinr.recon.sim.simulate as simulate_mod
from qmapinr.recon.config import SummitConfig, from_properties
from qmapinr.recon.methods.registry import reconstruct
from qmapinr.recon.sim.field import normalised_coords
from qmapinr.recon.sim.phantom import Phantom, _fill_maps

TISSUES = {
    "scalp": {"A": 0.95, "T1": 350.0, "T2": 70.0, "T2star": 35.0, "chi": 0.0},
    "brain": {"A": 0.78, "T1": 1331.0, "T2": 110.0, "T2star": 66.0, "chi": 0.0},
    "ventricle": {"A": 0.97, "T1": 4470.0, "T2": 2030.0, "T2star": 1000.0, "chi": 0.0},
    "wm": {"A": 0.65, "T1": 832.0, "T2": 79.2, "T2star": 53.2, "chi": 0.0},
    "lesion": {"A": 0.85, "T1": 1600.0, "T2": 160.0, "T2star": 90.0, "chi": 0.0},
}
LABELS = {0: "background", 1: "scalp", 2: "brain", 3: "ventricle", 4: "wm", 5: "lesion"}
# (label, x0, y0, a, b, phi_deg, z semi-axis) in normalised coordinates, painted in order
ELLIPSES = [
    (1, 0.0, 0.0, 0.69, 0.92, 0.0, 3.0),
    (2, 0.0, -0.0184, 0.62, 0.84, 0.0, 3.0),
    (3, 0.22, 0.0, 0.11, 0.31, -18.0, 3.0),
    (3, -0.22, 0.0, 0.16, 0.41, 18.0, 3.0),
    (4, 0.0, 0.35, 0.21, 0.25, 0.0, 3.0),
    (5, 0.0, 0.1, 0.07, 0.07, 0.0, 0.8),
    (5, 0.0, -0.1, 0.07, 0.07, 0.0, 0.8),
    (5, 0.06, -0.605, 0.05, 0.07, 0.0, 0.8),
]


THIN_BRAIN = (2, 0.0, -0.0184, 0.6624, 0.874, 0.0, 3.0)  # the standard Shepp-Logan skull: a sub-voxel shell
ELLIPSE_SET = {"thick": ELLIPSES, "thin": [ELLIPSES[0], THIN_BRAIN, *ELLIPSES[2:]]}
SHELL = "thick"


def shepp_head(shape, seed=0, voxel_mm=(1.0, 1.0, 4.0), b0_t=3.0, **_):
    rng = np.random.default_rng(seed)
    z, y, x = normalised_coords(shape)
    labels = np.zeros(shape, dtype=np.int16)
    for lab, x0, y0, a, b, phi, c in ELLIPSE_SET[SHELL]:
        ph = np.deg2rad(phi)
        u = (x - x0) * np.cos(ph) + (y - y0) * np.sin(ph)
        v = -(x - x0) * np.sin(ph) + (y - y0) * np.cos(ph)
        labels[(u / a) ** 2 + (v / b) ** 2 + (z / c) ** 2 <= 1.0] = lab
    maps = _fill_maps(labels, LABELS, TISSUES, rng, voxel_mm, b0_t, (0.0, 0.0, 1.0), 10.0, 1.0)
    return Phantom(labels=labels, label_names=dict(LABELS), maps=maps, mask=labels > 0,
                   tissues={k: dict(v) for k, v in TISSUES.items()}, info={"kind": "shepp-like", "seed": seed})


def regions(labels: np.ndarray) -> dict[str, np.ndarray]:
    obj = labels > 0
    st = np.zeros((1, 3, 3), bool)
    st[0, 1, :] = st[0, :, 1] = True  # 4-neighbourhood in (y, x)
    outer = obj & ndimage.binary_dilation(~obj, st)
    outer2 = obj & ndimage.binary_dilation(~obj, st, iterations=2)
    ring = (labels > 1) & ndimage.binary_dilation(labels == 1, st)
    csf_ring = (labels > 0) & (labels != 3) & ndimage.binary_dilation(labels == 3, st)
    return {"outer": outer, "outer2": outer2, "ring": ring, "csf_ring": csf_ring,
            "interior": obj & ~outer2 & ~ring & ~csf_ring}


def evaluate(maps: dict, truth: Phantom) -> dict:
    reg = regions(truth.labels)
    obj = truth.mask
    out = {}
    for name in ("T1", "T2", "T2star"):
        est, ref = maps[name].astype(float), truth.maps[name].astype(float)
        nz = obj & (truth.labels != 3)  # ventricles (CSF) are barely encoded: scored separately
        err = est - ref
        out[f"{name} NRMSE"] = float(np.sqrt(np.mean(err[nz] ** 2) / np.mean(ref[nz] ** 2)))
        for r in ("outer", "ring", "csf_ring", "interior"):
            sel = reg[r] & nz
            rel = err[sel] / ref[sel]
            out[f"{name} {r} median / mean|.| %"] = f"{np.median(rel) * 100:+.1f} / {np.mean(np.abs(rel)) * 100:.1f}"
        if name == "T2star":
            high = nz & (est > 2 * ref)
            out["T2* >2x voxels"] = int(high.sum())
            out["T2* sq-err share of >2x in outer2 %"] = float(
                100 * np.sum(err[high & reg["outer2"]] ** 2) / max(np.sum(err[nz] ** 2), 1e-12))
    out["mask voxels (recon / truth)"] = f"{int((maps['T1'] > 0).sum())} / {int(obj.sum())}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="8,32,32")
    ap.add_argument("--R", type=float, default=4.0)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--coils", type=int, default=4)
    ap.add_argument("--shell", choices=sorted(ELLIPSE_SET), default="thick",
                    help="scalp shell: 'thick' (~1 voxel at 32x32) or 'thin' (standard Shepp-Logan, sub-voxel)")
    ap.add_argument("-p", action="append", default=[], help="SummitConfig key=value")
    args = ap.parse_args()
    global SHELL
    SHELL = args.shell
    torch.set_num_threads(1)
    simulate_mod.PHANTOMS["shepp"] = shepp_head
    shape = tuple(int(v) for v in args.shape.split(","))
    cfg = simulate_mod.SimulationConfig(shape=shape, ncoils=args.coils, R=args.R, snr=30.0, seed=args.seed,
                                        phantom="shepp")
    ks, ph = simulate_mod.simulate(cfg)
    props = dict(kv.split("=", 1) for kv in args.p)
    props.setdefault("epochs", str(args.epochs))
    props.setdefault("threads", "1")
    scfg = from_properties(SummitConfig, props)
    out = reconstruct(ks, "summit", scfg)
    res = evaluate(out.maps, ph)
    print(f"| shepp-like ({args.shell} shell) {args.shape} R={args.R} seed {args.seed} {' '.join(args.p)} | |")
    print("|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v:.3g} |" if isinstance(v, float) else f"| {k} | {v} |")
    np.savez_compressed(f"/tmp/guards/edges_{args.shell}_{args.seed}_{'_'.join(args.p) or 'default'}.npz",
                        **{k: v for k, v in out.maps.items()}, labels=ph.labels,
                        **{f"true_{k}": v for k, v in ph.maps.items()}, init_A=out.info["init"]["A"],
                        mask=out.mask)


if __name__ == "__main__":
    main()

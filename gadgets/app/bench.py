"""``qmapinr bench``: simulate (seeded) brain and NIST-like phantoms, run SUMMIT, the subspace baseline and BART on
the same data, print one table, write a figure of maps / error maps and SUMMIT's convergence curve."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from qmapinr.gadgets.app.arguments import add_sim_arguments, parse_properties, sim_config

log = logging.getLogger(__name__)

MAPS = ("T1", "T2", "T2star", "A")
WINDOWS = {"T1": (0, 2500), "T2": (0, 200), "T2star": (0, 120), "A": (0, 1.2)}


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="SUMMIT vs subspace baseline vs BART on simulated phantoms: table + figures",
                       description=__doc__)
    add_sim_arguments(p, shape="8,32,32")
    p.set_defaults(R=None)
    p.add_argument("--Rs", default="4", help="comma-separated accelerations (default %(default)s)")
    p.add_argument("--snrs", default="30", help="comma-separated SNRs (default %(default)s)")
    p.add_argument("--phantoms", default="brain", help="comma-separated: brain, nist (default %(default)s)")
    p.add_argument("--methods", default="summit,subspace,bart", help="comma-separated (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="SUMMIT epochs (default: SummitConfig default)")
    p.add_argument("-p", "--property", action="append", metavar="KEY=VALUE", help="SUMMIT property, repeatable")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="output folder (default %(default)s)")
    p.set_defaults(func=run_bench)


def _fmt_row(r) -> str:
    s = r.scores
    if r.error:
        return f"| {r.method} | {r.case} | failed: {r.error} |"
    cells = [f"{s.nrmse_mask.get(m, float('nan')):.3f} / {s.nrmse_wmgm.get(m, float('nan')):.3f}" for m in MAPS]
    bias = "; ".join(f"{t} {100 * s.bias['T1'][t]:+.0f}/{100 * s.bias['T2'][t]:+.0f}/{100 * s.bias['T2star'][t]:+.0f}"
                     for t in ("WM", "GM", "CSF") if t in s.bias.get("T1", {}))
    sph = "; ".join(f"{m} R²={v['r2']:.3f} slope={v['slope']:.3f} (n={v['n']})" for m, v in s.spheres.items())
    ttq = f"{r.time_to_quality_s:.1f}" if r.time_to_quality_s is not None else "-"
    return (f"| {r.method} | {r.case} | " + " | ".join(cells) + f" | {bias or '-'} | {sph or '-'} | "
            f"{r.seconds:.1f} | {ttq} | {r.peak_mb:.0f} |")


HEADER = ("| method | case | T1 NRMSE mask / WM+GM | T2 | T2* | A | median bias T1/T2/T2* % | spheres (mean vs truth) "
          "| wall s | time-to-quality s | peak MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _figure(results, phantom, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if not r.error]
    z = phantom.mask.shape[0] // 2
    fig, axes = plt.subplots(len(MAPS), 1 + 2 * len(ok), figsize=(2.2 * (1 + 2 * len(ok)), 2.1 * len(MAPS)))
    axes = np.atleast_2d(axes)
    for i, m in enumerate(MAPS):
        lo, hi = WINDOWS[m]
        axes[i, 0].imshow(np.where(phantom.mask[z], phantom.maps[m][z], 0), vmin=lo, vmax=hi, origin="lower")
        axes[i, 0].set_title(f"truth {m}", fontsize=8)
        for j, r in enumerate(ok):
            est = r.maps.maps.get(m, np.zeros_like(phantom.maps[m]))
            axes[i, 1 + 2 * j].imshow(np.where(phantom.mask[z], est[z], 0), vmin=lo, vmax=hi, origin="lower")
            axes[i, 1 + 2 * j].set_title(f"{r.method} {m}", fontsize=8)
            err = np.where(phantom.mask[z], est[z] - phantom.maps[m][z], 0)
            axes[i, 2 + 2 * j].imshow(err, vmin=-0.3 * hi, vmax=0.3 * hi, cmap="RdBu_r", origin="lower")
            axes[i, 2 + 2 * j].set_title(f"{r.method} error", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(ok[0].case if ok else "", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curve_figure(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        if r.method != "summit" or not r.curve:
            continue
        t = [c[0] for c in r.curve]
        for m in ("T1", "T2", "T2star"):
            ax.plot(t, [c[1][m] for c in r.curve], marker=".", label=f"{r.case} {m}")
    ax.set_xlabel("wall time in the training loop (s)")
    ax.set_ylabel("NRMSE (brain: WM+GM; NIST: phantom mask)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from qmapinr.recon.config import SummitConfig, from_properties
    from qmapinr.recon.evaluation.benchmark import run_case

    props = parse_properties(args.property)
    if args.epochs is not None:
        props["epochs"] = str(args.epochs)
    summit_cfg = from_properties(SummitConfig, props)
    args.out.mkdir(parents=True, exist_ok=True)
    methods = tuple(m for m in args.methods.split(",") if m)
    rows, all_results = [], []
    for phantom_name in args.phantoms.split(","):
        for snr in (float(s) for s in args.snrs.split(",")):
            for R in (float(r) for r in args.Rs.split(",")):
                sim = dataclasses.replace(sim_config(args), R=R, snr=snr or None, phantom=phantom_name)
                results, phantom = run_case(sim, methods, summit_cfg, progress=lambda s: log.info("bench: %s", s))
                tag = f"{phantom_name}_R{R:g}_snr{snr:g}"
                _figure(results, phantom, args.out / f"maps_{tag}.png")
                all_results += results
                for r in results:
                    rows.append(_fmt_row(r))
                    print(_fmt_row(r), flush=True)
    table = HEADER + "\n" + "\n".join(rows)
    print("\n" + table)
    _curve_figure(all_results, args.out / "convergence.png")
    (args.out / "table.md").write_text(table + "\n")
    summary = [{"method": r.method, "case": r.case, "seconds": r.seconds, "peak_mb": r.peak_mb,
                "time_to_quality_s": r.time_to_quality_s, "error": r.error,
                "nrmse_mask": r.scores.nrmse_mask, "nrmse_wmgm": r.scores.nrmse_wmgm, "bias": r.scores.bias,
                "spheres": r.scores.spheres, "curve": r.curve,
                "summit_config": dataclasses.asdict(summit_cfg) if r.method == "summit" else None}
               for r in all_results]
    (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    return 1 if any(r.error for r in all_results) else 0

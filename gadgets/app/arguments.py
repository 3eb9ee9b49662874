"""Command-line arguments shared by the ``qmapinr`` subcommands (simulate, demo, replay, bench)."""

from __future__ import annotations

import argparse


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"shape must be nz,ny,nx (three positive ints), got {text!r}")
    return parts  # type: ignore[return-value]


def parse_properties(items: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` (repeatable ``-p``) -> ``{key: value}``; a missing ``=`` is an argparse error."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"property must be key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def add_sim_arguments(p: argparse.ArgumentParser, shape: str = "8,32,32") -> None:
    """Phantom / protocol options shared by simulate, demo and bench."""
    p.add_argument("--shape", type=_shape, default=_shape(shape), help="nz,ny,nx (default %(default)s)")
    p.add_argument("--coils", type=int, default=4, help="receive coils (default %(default)s)")
    p.add_argument("--R", type=float, default=4.0, help="acceleration Ny*Nz/lines per tau (default %(default)s)")
    p.add_argument("--snr", type=float, default=30.0, help="SNR; 0 = noiseless (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of phantom, coils, sampling, noise")
    p.add_argument("--phantom", choices=["brain", "nist", "shepp-logan"], default="brain")
    p.add_argument("--preset", choices=["demo", "paper-sim", "phantom"], default="demo",
                   help="sequence timing preset (docs/design.md; default %(default)s)")
    p.add_argument("--nseg", type=int, default=None, help="readouts per segment (overrides the preset)")
    p.add_argument("--loop-order", choices=["shot-outer", "tau-outer", "closed-form"], default="shot-outer",
                   help="preparation loop simulated with its exact sequence history, or the paper's closed form "
                        "(default %(default)s)")
    p.add_argument("--recovery-delay-ms", type=float, default=0.0, help="free recovery before each preparation")
    p.add_argument("--no-calib", action="store_true",
                   help="pure variable-density sampling, no fully sampled 3x3 centre")


def sim_config(args: argparse.Namespace):
    from qmapinr.recon.sim.simulate import SimulationConfig

    return SimulationConfig(shape=args.shape, ncoils=args.coils, R=args.R, snr=args.snr or None, seed=args.seed,
                            phantom=args.phantom, preset=args.preset, nseg=args.nseg,
                            prep_loop_order=None if args.loop_order == "closed-form" else args.loop_order,
                            recovery_delay_ms=args.recovery_delay_ms, calib=(0, 0) if args.no_calib else (3, 3))

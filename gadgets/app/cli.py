"""``qmapinr`` command line: simulate, replay, demo, serve, bench.

``qmapinr demo`` is the one-command end-to-end run: simulate a small seeded brain phantom, write it as an
ISMRMRD file, replay it through the SUMMIT chain over a loopback socket exactly as Gadgetron 4 launches external
Python gadgets, and write maps.h5, one NIfTI per map and a PNG panel, then print scores against the truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from qmapinr.gadgets.app.arguments import add_sim_arguments, parse_properties, sim_config
from qmapinr.gadgets.app.bench import add_bench_parser
from qmapinr.gadgets.transport.server import add_serve_parser

log = logging.getLogger("qmapinr")


class UserError(Exception):
    """A failure the user can act on (bad file, failed chain): one line on stderr, exit code 1."""


def cmd_simulate(args: argparse.Namespace) -> int:
    from qmapinr.recon.sim.mrd_writer import write_mrd
    from qmapinr.recon.sim.simulate import simulate

    kspace, phantom = simulate(sim_config(args))
    write_mrd(args.output, kspace, phantom)
    log.info("wrote %s: %d lines x %d echoes x %d coils, matrix %s, R=%.2f", args.output, kspace.nlines,
             kspace.seq.nte, kspace.ncoils, kspace.geometry.matrix, kspace.acceleration)
    return 0


def _truth_maps(path: Path):
    from qmapinr.recon.sim.mrd_writer import read_truth

    return read_truth(path)


def cmd_replay(args: argparse.Namespace) -> int:
    from qmapinr.gadgets.app.outputs import write_outputs
    from qmapinr.gadgets.images import mrd_images_to_maps
    from qmapinr.gadgets.transport.replay import read_header_xml, replay
    from qmapinr.recon.evaluation.metrics import format_scores, score

    props = parse_properties(args.property)
    if getattr(args, "method", None):
        props["method"] = args.method  # the one method switch (a chain property, as in the XML)
    result = replay(args.input, module=args.module, target=args.chain, properties=props, mode=args.mode,
                    timeout=args.timeout, progress=None if not args.no_progress else False,
                    save_stream=args.save_stream)
    for text in result.texts:
        log.info("gadget says: %s", text)
    if result.ok and not result.images:
        result.error = "the chain returned no images" + (f" ({result.texts[-1]})" if result.texts else "")
    if result.images:
        truth = _truth_maps(Path(args.input)) if not args.no_truth else None
        paths = write_outputs(result.images, args.out, read_header_xml(args.input),
                              truth=truth.as_quant_maps().maps if truth is not None else None)
        log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
        if truth is not None:
            maps = {k: v for k, (v, _) in mrd_images_to_maps(result.images).items()}
            mask = truth.mask & (maps["T1"] > 0) if "T1" in maps else truth.mask
            s = score(maps, truth.maps, truth.labels, truth.label_names, mask)
            table = format_scores(s, f"{args.chain} vs truth ({args.input})")
            print(table)
            (Path(args.out) / "scores.md").write_text(table + "\n")
            (Path(args.out) / "scores.json").write_text(json.dumps(s.__dict__, indent=1, default=float))
    if not result.ok:
        first, _, rest = result.error.partition("\n")
        if rest:
            log.debug("%s", rest)
        raise UserError(f"replay failed: {first}")
    log.info("%d images received in %.1f s", len(result.images), result.seconds)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.output = out / "phantom.h5"
    cmd_simulate(args)
    args.input = args.output
    args.no_truth = False
    return cmd_replay(args)


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chain", default="summit", help="chain / target function (summit, lorein, baseline)")
    p.add_argument("--method", default=None, help="method switch property (summit, lorein, baseline); "
                   "overrides the chain's default method")
    p.add_argument("--module", default="qmapinr.gadgets.chains", help="external gadget module")
    p.add_argument("--mode", choices=["subprocess", "inprocess"], default="subprocess",
                   help="subprocess = 'python -m gadgetron PORT MODULE TARGET' as Gadgetron 4 does")
    p.add_argument("-p", "--property", action="append", metavar="KEY=VALUE",
                   help="chain property (as in the XML <property>), repeatable, e.g. -p epochs=40")
    p.add_argument("--timeout", type=float, default=None, help="wall-clock limit of the replay, s")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--save-stream", type=Path, default=None, metavar="OUT.h5",
                   help="also write the header and every acquisition sent to the chain to OUT.h5 (ISMRMRD)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qmapinr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a seeded phantom acquisition as an ISMRMRD .h5 (with ground truth)",
                       description="Simulate the T2IR-prepared multi-echo GRE of a numerical phantom and write "
                                   "it as ISMRMRD (noise pre-scan, one acquisition per line and echo, truth in "
                                   "/dataset/qmapinr_truth).")
    p.add_argument("output", type=Path)
    add_sim_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("replay", help="stream an ISMRMRD file through a chain over a loopback socket",
                       description="Act as Gadgetron: launch the external Python gadget, send config, header and "
                                   "acquisitions, receive the MRD images; write maps.h5, NIfTIs and maps.png.")
    p.add_argument("input", type=Path)
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default %(default)s)")
    p.add_argument("--no-truth", action="store_true", help="do not score against the stored truth")
    add_replay_arguments(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help="simulate -> replay through the SUMMIT chain -> maps, NIfTI, PNG, scores",
                       description="End-to-end demo on an embedded default phantom (a few minutes on 2 cores).")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default %(default)s)")
    add_sim_arguments(p, shape="8,32,32")
    add_replay_arguments(p)
    p.set_defaults(func=cmd_demo)

    add_serve_parser(sub)

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        logging.basicConfig(level=getattr(logging, args.log_level),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
    else:
        args.log_level = getattr(args, "log_level", "INFO")
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; every user error is ONE line on stderr and exit code 1 (2 for bad input files).

    Tracebacks are logged only with ``--log-level DEBUG``.
    """
    from qmapinr.gadgets.transport.replay import ReplayInputError

    debug = args.log_level == "DEBUG"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("qmapinr: interrupted", file=sys.stderr)
        return 130
    except ReplayInputError as exc:
        log.debug("traceback", exc_info=True)
        print(f"qmapinr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the CLI boundary: one line unless --log-level DEBUG
        if debug:
            log.exception("%s failed", args.command)
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        print(f"qmapinr {args.command}: error: {text.splitlines()[0] if text else type(exc).__name__}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

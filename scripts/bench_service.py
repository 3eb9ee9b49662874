"""Admission estimate vs measured peak RSS / time of the chain in a fresh process (docs/benchmarks/service.md).

    python scripts/bench_service.py [--sizes 8,32,32 16,48,48 16,64,64] [--coils 4] [--epochs 2] [--chain summit]

Each size is simulated into a temporary ISMRMRD file; a fresh interpreter then streams it through the chain's
stages (buffer -> reconstruct -> images, as the server's worker does) and reports ``ru_maxrss`` and wall time,
next to :func:`qmapinr.recon.methods.budget.estimate_resources` for the same header and config.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(path: str, chain: str, props: dict[str, str]) -> dict:
    """Run ``chain`` over the file in this process; peak RSS (bytes) and seconds of the recon."""
    import torch

    from qmapinr.gadgets.chains import CHAIN_CONFIGS, reconstruct_stage
    from qmapinr.gadgets.stages import buffer_kspace, maps_to_images, split_noise
    from qmapinr.gadgets.transport.replay import iter_acquisitions, read_header_xml
    from qmapinr.recon.config import from_properties

    torch.set_num_threads(1)
    header = read_header_xml(path)
    cfg = from_properties(CHAIN_CONFIGS[chain], props)
    t0 = time.monotonic()
    items = maps_to_images(reconstruct_stage(buffer_kspace(split_noise(iter_acquisitions(path), header), header),
                                             header, chain, cfg), header)
    n = sum(1 for _ in items)
    seconds = time.monotonic() - t0
    return {"images": n, "seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", nargs="+", default=["8,32,32", "16,48,48", "16,64,64"])
    ap.add_argument("--coils", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--chain", default="summit")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--props", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.chain, json.loads(a.props))))
        return
    from qmapinr.gadgets.chains import CHAIN_CONFIGS
    from qmapinr.gadgets.transport.replay import read_header_xml
    from qmapinr.recon.config import from_properties
    from qmapinr.recon.methods.budget import dims_from_header, estimate_resources
    from qmapinr.recon.sim.mrd_writer import write_mrd
    from qmapinr.recon.sim.simulate import SimulationConfig, simulate

    props = {"epochs": str(a.epochs), "threads": "1"}
    if a.chain == "summit":
        props["wnnm_start_epoch"] = "0"
    cfg = from_properties(CHAIN_CONFIGS[a.chain], props)
    print(f"chain {a.chain}, {a.coils} coils, R=4, {a.epochs} epochs, 1 thread\n")
    print("| shape (nz,ny,nx) | lines | estimate MiB | measured peak RSS MiB | ratio est/meas "
          "| estimate s | measured s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes:
            shape = tuple(int(v) for v in size.split(","))
            ks, ph = simulate(SimulationConfig(shape=shape, ncoils=a.coils, R=4, snr=30, seed=0))
            path = Path(tmp) / f"{size}.h5"
            write_mrd(path, ks, ph)
            dims = dims_from_header(read_header_xml(path), ncoils=a.coils, nlines=ks.nlines)
            est = estimate_resources(dims, a.chain, cfg)
            out = subprocess.run([sys.executable, __file__, "--measure", str(path), "--chain", a.chain,
                                  "--props", json.dumps(props)], capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {size} | {ks.nlines} | {est.memory_bytes / 2**20:.0f} | {m['peak_rss'] / 2**20:.0f} | "
                  f"{est.memory_bytes / m['peak_rss']:.2f} | {est.seconds:.1f} | {m['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Print a sha256 prefix of every map the chains return for the demo phantom and tests/data/tiny.h5.

Used to show that a refactoring leaves the reconstruction bit-identical: run it before and after, on the same
machine and torch build, and compare the JSON (``diff before.json after.json``). The cases run in-process with one
torch thread (thread count changes float summation order): SUMMIT on tiny.h5 with 20 epochs (WNNM starts at 30),
the subspace baseline on tiny.h5, and SUMMIT with default settings on the seeded demo phantom.

    python scripts/map_checksums.py > checksums.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from qmapinr.gadgets.images import mrd_images_to_maps
from qmapinr.gadgets.transport.replay import replay
from qmapinr.recon.sim.mrd_writer import write_mrd
from qmapinr.recon.sim.simulate import SimulationConfig, simulate

ROOT = Path(__file__).resolve().parents[1]


def checksums() -> dict[str, dict[str, str]]:
    """Case name -> map name -> first 16 hex digits of the sha256 of the float32 map bytes."""
    demo = Path(tempfile.mkdtemp()) / "demo.h5"
    kspace, phantom = simulate(SimulationConfig(shape=(8, 32, 32), ncoils=4, R=4.0, snr=30.0, seed=0,
                                                phantom="brain", preset="demo", nseg=None))
    write_mrd(demo, kspace, phantom)
    tiny = ROOT / "tests" / "data" / "tiny.h5"
    cases = [("tiny", tiny, "summit", {"threads": "1", "epochs": "20"}), ("tiny_baseline", tiny, "baseline", {}),
             ("demo", demo, "summit", {"threads": "1"})]
    out = {}
    for name, path, chain, props in cases:
        result = replay(path, module="qmapinr.gadgets.chains", target=chain, properties=props, mode="inprocess",
                        timeout=None, progress=False)
        if not result.ok:
            raise SystemExit(f"{name}: {result.error}")
        maps = mrd_images_to_maps(result.images)
        out[name] = {m: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
                     for m, (v, _) in sorted(maps.items())}
    return out


if __name__ == "__main__":
    json.dump(checksums(), sys.stdout, indent=1)
    print()

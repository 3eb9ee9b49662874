"""End to end: the recorded fixture through the real SUMMIT chain over a loopback socket, and the demo accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qmapinr.gadgets.app.outputs import write_outputs
from qmapinr.gadgets.images import SERIES_INDEX, mrd_images_to_maps
from qmapinr.gadgets.transport.replay import read_header_xml, replay
from qmapinr.recon.kspace import MAP_UNITS

TINY = Path(__file__).parent / "data" / "tiny.h5"


def test_replay_tiny_fixture_through_summit_chain(tmp_path):
    """Gadget launched as Gadgetron 4 does ('python -m gadgetron PORT MODULE TARGET'); one series per map back."""
    result = replay(TINY, target="summit", mode="subprocess", timeout=600, progress=False,
                    properties={"epochs": "2", "coil_refine_iters": "2", "threads": "1"})
    assert result.ok, result.error
    assert result.n_sent == result.n_acquisitions == 385
    maps = mrd_images_to_maps(result.images)
    expected = {"T1", "T2", "T2star", "A", "B0", "Phase0", "Residual"}
    assert expected <= set(maps), sorted(maps)
    series = [img.image_series_index for img in result.images]
    assert len(series) == len(set(series)) == len(maps)  # one series per map
    for img in result.images:
        name = img.meta["MapName"]
        assert img.image_series_index == SERIES_INDEX[name]
        assert img.meta["Units"] == MAP_UNITS[name]
        assert tuple(int(v) for v in img.matrix_size) == (16, 16, 4)
    for name, (arr, units) in maps.items():
        assert arr.shape == (4, 16, 16) and np.isfinite(arr).all() and units == MAP_UNITS[name]
    paths = write_outputs(result.images, tmp_path, read_header_xml(TINY))
    assert paths["png"].stat().st_size > 10_000 and paths["h5"].exists()
    assert all(paths[f"nifti_{n}"].exists() for n in maps)


@pytest.mark.slow
def test_demo_phantom_accuracy():
    """Issue 3 criterion on the demo phantom (8x32x32, 4 coils, R = 4, SNR 30, seed 0, default SummitConfig):
    T1 medians of WM, GM, CSF and T2 medians of WM, GM within 15 % of the truth."""
    from qmapinr.recon.config import SummitConfig
    from qmapinr.recon.evaluation.metrics import score
    from qmapinr.recon.methods.summit.solver import summit_recon
    from qmapinr.recon.sim.simulate import SimulationConfig, simulate

    torch.set_num_threads(1)
    # Issue 3's criterion was set on the closed-form signal. On the history-exact default (shot-outer, 32 readouts)
    # SUMMIT's WM/GM T1 is still +34/+17 % (issue 10, docs/benchmarks/history.md): pinned here, not hidden there.
    ks, ph = simulate(SimulationConfig(shape=(8, 32, 32), ncoils=4, R=4, snr=30, seed=0, prep_loop_order=None))
    out = summit_recon(ks, SummitConfig())
    s = score(out.maps, ph.maps, ph.labels, ph.label_names, out.mask & ph.mask)
    for tissue in ("WM", "GM", "CSF"):
        assert abs(s.bias["T1"][tissue]) < 0.15, (tissue, s.bias["T1"])
    for tissue in ("WM", "GM"):
        assert abs(s.bias["T2"][tissue]) < 0.15, (tissue, s.bias["T2"])

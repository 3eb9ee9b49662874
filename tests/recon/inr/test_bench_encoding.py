"""Smoke test of the encoding micro-benchmark helpers (recon/inr/bench_encoding.py) on a tiny grid."""

from __future__ import annotations

import pytest
import torch

from qmapinr.recon.config import HashGridConfig
from qmapinr.recon.inr.bench_encoding import MODES, bench_one, make_points

torch.set_num_threads(1)


@pytest.mark.parametrize("mode", MODES)
def test_bench_one_reports_times_and_params(mode):
    cfg = HashGridConfig(3, 2, 8, 2, 2.0, "torch")  # rows 27 + 125 + 256
    r = bench_one(cfg, mode, make_points(300, "uniform"), repeats=1)
    assert r["params"] == (27 + 125 + 256) * 2 and r["dense_levels"] == 2
    for key in ("fwd", "fwd_bwd", "step", "total"):
        assert r[key] > 0 and torch.isfinite(torch.tensor(r[key]))
    assert 0.2 < r["rows_updated"] <= 1.0  # 300 points touch most rows of every level; the steps were applied


def test_make_points_planes_are_voxel_centres_of_x_planes():
    x = make_points(2 * 40 * 128, "planes")
    assert x.shape == (10240, 3)
    assert x.min() > 0 and x.max() < 1
    assert torch.unique(x[:, 2]).numel() == 2  # two x positions
    with pytest.raises(ValueError):
        make_points(10, "grid")

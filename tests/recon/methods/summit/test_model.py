"""The SUMMIT field: shapes, the one batched evaluator covers every readout position once, priors at start."""

from __future__ import annotations

import torch

from qmapinr.recon.config import HashGridConfig, SummitConfig
from qmapinr.recon.methods.summit.model import SummitField


def _field(coil_mode: str = "inr") -> SummitField:
    nz, ny, nx, c = 3, 5, 7, 2
    priors = {n: torch.full((nz, ny, nx), v) for n, v in
              {"A": 1.0, "T1": 1000.0, "T2": 80.0, "T2star": 50.0, "Phase0": 0.1, "B0": 5.0}.items()}
    sens = torch.ones(c, nz, ny, nx, dtype=torch.complex64) / c**0.5
    cfg = SummitConfig(map_grid=HashGridConfig(n_levels=2, log2_hashmap_size=6, implementation="torch"),
                       coil_grid=HashGridConfig(n_levels=2, log2_hashmap_size=4, base_resolution=2,
                                                implementation="torch"), hidden=8, coil_mode=coil_mode)
    return SummitField(cfg, (nz, ny, nx), (1.0, 1.0, 2.0), priors, sens)


def test_forward_shapes_and_batches_cover_every_x_once():
    field = _field()
    maps, coil = field(torch.tensor([0, 3]))
    assert set(maps) >= {"A", "T1", "T2", "T2star", "Phase0", "B0"}
    assert maps["T1"].shape == (2, 3, 5) and coil.shape == (2, 2, 3, 5) and coil.is_complex()
    seen = torch.cat([xb for xb, _, _ in field.batches(3)])
    assert torch.equal(seen.sort().values, torch.arange(7))
    vols = field.volumes(("T1", "B0"), batch_x=4)
    assert vols["T1"].shape == (3, 5, 7) and torch.isfinite(vols["T1"]).all()


def test_amplitude_rescale_and_fixed_coil_maps():
    field = _field(coil_mode="jsense")
    a0 = field.volumes(("A",), 7)["A"]
    field.scale_amplitude(2.0)
    assert torch.allclose(field.volumes(("A",), 7)["A"], 2 * a0, rtol=1e-5)
    _, coil = field(torch.tensor([1]))
    assert torch.allclose(coil, torch.full_like(coil, 2**-0.5))  # the estimated maps, unchanged

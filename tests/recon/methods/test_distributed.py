"""Data-parallel SUMMIT over readout slabs (recon/methods/distributed.py, docs/distributed.md).

Two gloo workers on this host, one torch thread each, on a 4x16x16 2-coil phantom (3 epochs, WNNM off as in the
solver tests' tiny config):

* ``batching="global"`` takes the single-process batches, so its maps equal the single-process maps up to float
  summation order: tolerance 1e-4 of each map's in-mask peak (measured ~5e-7).
* ``batching="balanced"`` takes a different batch sequence (half of every step from each slab); its maps equal a
  one-process run over the same union batches (the ``_UnionBatches`` hook below) to the same tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from qmapinr.recon.config import HashGridConfig, SummitConfig
from qmapinr.recon.methods.distributed import rank_batches, slab_bounds, spawn_recons
from qmapinr.recon.methods.summit.solver import summit_recon
from qmapinr.recon.sim.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this torch build")

TOL = 1e-4  # of the map's in-mask peak
CFG = SummitConfig(epochs=3, lr=5e-3, batch_x=4, coil_refine_iters=1, threads=1,
                   map_grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, implementation="torch"))


class _UnionBatches:
    """One process taking, at every step, the union of what the ranks of a ``world``-rank run take."""

    def __init__(self, nx: int, world: int, batching: str) -> None:
        self.bounds, self.batching = slab_bounds(nx, world), batching
        self.owned = torch.arange(nx)

    def shard(self, run, cfg) -> None:
        pass

    def batches(self, order, bx):
        per_rank = [rank_batches(order, bx, x0, x1, self.batching) for x0, x1 in self.bounds]
        return [torch.cat(step) for step in zip(*per_rank, strict=True)]

    def sync_grads(self, model, n_local) -> None:
        pass

    def reduce(self, t):
        return t

    def reduce_volumes(self, vols) -> None:
        pass


def _assert_close(maps: dict[str, np.ndarray], ref, what: str) -> None:
    assert np.array_equal(maps["mask"], ref.mask), what
    m = ref.mask
    for name, v in ref.maps.items():
        err = float(np.abs(maps[name][m] - v[m]).max()) / max(float(np.abs(v[m]).max()), 1e-30)
        assert err <= TOL, f"{what}: {name} differs by {err:.3g} of its peak"


def test_slabs_and_batches_partition_every_epoch():
    assert slab_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    for batching in ("global", "balanced"):
        per_rank = [rank_batches(order, 4, x0, x1, batching) for x0, x1 in slab_bounds(10, 3)]
        assert len({len(b) for b in per_rank}) == 1  # the same number of steps (collectives) on every rank
        assert sorted(torch.cat([torch.cat(b) for b in per_rank]).tolist()) == list(range(10))
    steps = zip(*[rank_batches(order, 4, x0, x1, "global") for x0, x1 in slab_bounds(10, 3)], strict=True)
    assert [sorted(torch.cat(s).tolist()) for s in steps] == [sorted(b.tolist()) for b in order.split(4)]


def test_two_gloo_workers_reproduce_the_single_process_maps():
    torch.set_num_threads(1)
    ks, _ = simulate(SimulationConfig(shape=(4, 16, 16), ncoils=2, R=2, snr=30, seed=1, nseg=8))
    (glob, g_info), (bal, b_info) = spawn_recons(ks, CFG, nproc=2, modes=("global", "balanced"))
    assert [i["x_slab"] for i in g_info] == [[0, 8], [8, 16]]
    assert g_info[0]["bytes_sent"] == g_info[1]["bytes_sent"] > 0
    _assert_close(glob, summit_recon(ks, CFG), "global batching vs one process")
    _assert_close(bal, summit_recon(ks, CFG, parallel=_UnionBatches(16, 2, "balanced")),
                  "balanced batching vs one process over the union batches")

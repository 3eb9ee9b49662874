"""One SUMMIT reconstruction across several processes or hosts with ``torch.distributed`` (docs/distributed.md).

Data parallel over the readout: after the 1-D IFFT along the fully sampled readout every position x is its own
(kz, ky) problem, so rank r of W owns the contiguous x-slab ``arange(nx).tensor_split(W)[r]`` and keeps only
those rows of the hybrid data ``(nx, C, nte, nlines)``. All ranks hold the same INR (hash grid, MLP heads, coil
INR): they start from the same seed, and after every backward the gradients are summed with one
``all_reduce`` of a flat buffer (parameter count + 1 + number of parameter tensors floats), so the Adam steps and
the weights stay identical. The x order of an epoch is the single-process seeded permutation, split across the
ranks without communication:

* ``batching="balanced"`` (default): each rank takes the owned positions in epoch order and splits them into the
  single-process number of steps ``ceil(nx / batch_x)``; every step sees about ``batch_x`` positions in all,
  ``batch_x / W`` per rank (the speed-up). A different but equally valid batch sequence from one process.
* ``batching="global"``: step k is exactly the single-process batch k, each rank computing the owned part of it
  (uneven load); the maps equal the single-process maps up to float summation order (the test's check).

Preparation (coil maps, initial maps, amplitude gain) is replicated on every rank: it is deterministic and needs
the whole k-space (the readout IFFT needs every kx sample of a line). ``prepare`` -> ``fit`` -> ``final_maps``
are the solver's own (:func:`~qmapinr.recon.methods.summit.solver.summit_recon` with ``parallel=``).

Launch N local workers (gloo, one torch thread each) on a simulated phantom::

    python -m qmapinr.recon.methods.distributed --nproc 2 --shape 8,32,32 --coils 4 -p epochs=20

or one process per rank with torchrun (any host; NCCL when CUDA is available)::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-endpoint HOST:29500 -m qmapinr.recon.methods.distributed ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from qmapinr.recon.config import SummitConfig, from_properties
from qmapinr.recon.kspace import KSpace6D, QuantMaps
from qmapinr.recon.methods.summit.solver import InrRun, summit_recon

BATCHING = ("balanced", "global")


def slab_bounds(nx: int, world: int) -> list[tuple[int, int]]:
    """``[(x0, x1)]`` per rank: contiguous readout slabs, sizes differing by at most one."""
    return [(int(s[0]), int(s[-1]) + 1) if len(s) else (0, 0) for s in torch.arange(nx).tensor_split(world)]


def rank_batches(order: torch.Tensor, bx: int, x0: int, x1: int, batching: str = "balanced"
                 ) -> list[torch.Tensor]:
    """The x positions the rank owning ``[x0, x1)`` takes at every step of the epoch ``order`` (int64 ``(nx,)``).

    ``"global"``: the owned part of each single-process batch ``order.split(bx)``; ``"balanced"``: the owned
    positions in epoch order, split into ``ceil(nx / bx)`` near-equal steps. Every rank gets the same number of
    steps; a step may be empty. Computed on the CPU (on CUDA one copy of ``order`` per epoch, no sync per step),
    the batches returned on ``order``'s device.
    """
    dev, order = order.device, order.cpu()
    if batching == "global":
        return [b[(b >= x0) & (b < x1)].to(dev) for b in order.split(bx)]
    if batching == "balanced":
        return [b.to(dev) for b in order[(order >= x0) & (order < x1)].tensor_split(math.ceil(len(order) / bx))]
    raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")


class XSlab:
    """Rows ``x0:x1`` of the hybrid data, indexed with global readout positions.

    ``data`` complex64 ``(x1 - x0, C, nte, nlines)``; ``slab[xb]`` for int64 ``xb`` inside the slab gives
    ``(len(xb), C, nte, nlines)``, what ``Prepared.hybrid[xb]`` gives in one process.
    """

    def __init__(self, full: torch.Tensor, x0: int, x1: int) -> None:
        self.data = full[x0:x1].clone()
        self.x0, self.x1 = x0, x1
        self.shape = full.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __getitem__(self, xb: torch.Tensor) -> torch.Tensor:
        return self.data[xb - self.x0]


class XSlabParallel:
    """This rank's part of a data-parallel SUMMIT fit (the solver's ``DataParallel`` hook).

    Parameters
    ----------
    nx : readout length of the scan.
    batching : ``"balanced"`` or ``"global"`` (module docstring).
    group : process group (default the world); the process group must be initialised.
    """

    def __init__(self, nx: int, batching: str = "balanced", group: dist.ProcessGroup | None = None) -> None:
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        self.group, self.batching, self.nx = group, batching, nx
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.x0, self.x1 = slab_bounds(nx, self.world)[self.rank]
        self.owned = torch.arange(self.x0, self.x1)
        self.comm_device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(group) == "nccl" else torch.device("cpu")
        self.bytes_sent = 0  # payload of the collectives (bytes, this rank)
        self.comm_s = 0.0  # wall time inside the collectives, waiting for the other ranks included (s)

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = t.to(self.comm_device)
        dist.all_reduce(out, group=self.group)
        self.comm_s += time.perf_counter() - t0
        self.bytes_sent += out.numel() * out.element_size()
        return out.to(t.device)

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over the ranks (a new tensor on ``t``'s device)."""
        return self._all_reduce(t.clone())

    def batches(self, order: torch.Tensor, bx: int) -> list[torch.Tensor]:
        """This rank's x positions of every step of the epoch ``order`` (:func:`rank_batches`)."""
        return rank_batches(order, bx, self.x0, self.x1, self.batching)

    def sync_grads(self, model: nn.Module, n_local: int) -> None:
        """Grads -> ``sum_r n_r g_r / sum_r n_r`` (``g_r`` the mean-loss gradient of rank r's ``n_r`` positions).

        One ``all_reduce`` of ``[n_r g_r (all parameters, flat), n_r, has_grad per parameter tensor]``; a parameter
        without a gradient on every rank keeps ``grad = None`` (Adam then skips it, as in one process).
        """
        params = list(model.parameters())
        ref = params[0]
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() * n_local
                 for p in params]
        flags = torch.tensor([float(n_local)] + [float(p.grad is not None) for p in params], device=ref.device)
        flat = self._all_reduce(torch.cat(parts + [flags]))
        n_total = float(flat[-len(params) - 1])
        has = flat[-len(params):] > 0
        offset = 0
        for p, keep in zip(params, has.tolist(), strict=True):
            g = flat[offset:offset + p.numel()]
            offset += p.numel()
            p.grad = (g / n_total).reshape(p.shape).to(p.dtype) if keep and n_total > 0 else None

    def shard(self, run: InrRun, cfg: SummitConfig) -> None:
        """Keep only the owned rows of ``run.prep.hybrid`` (in place: the loss reads them through ``prep``), and
        set SUMMIT's ``dc_ref`` (the lambdas' reference) to the data consistency of the whole first step, as in one
        process, instead of this rank's part of it."""
        prep = run.prep
        hybrid = prep.hybrid
        prep.hybrid = XSlab(hybrid, self.x0, self.x1)
        del hybrid
        if not hasattr(run.loss, "dc_ref"):
            return
        order = torch.randperm(self.nx, generator=torch.Generator().manual_seed(cfg.seed)).to(prep.device)
        xb = self.batches(order, cfg.batch_x)[0]
        local = torch.zeros(2, device=prep.device)
        if len(xb):
            run.model.set_epoch(0)
            with torch.no_grad():
                _, dc = run.loss(run.model, xb, 0, _NoTimer())
            local = torch.stack([dc.detach().float() * len(xb), torch.tensor(float(len(xb)), device=prep.device)])
        total = self.reduce(local)
        run.loss.dc_ref = float(total[0] / total[1])

    def reduce_volumes(self, vols: dict[str, torch.Tensor]) -> None:
        """Sum every float32 ``(nz, ny, nx)`` volume over the ranks in place (one collective)."""
        names = sorted(vols)
        summed = self._all_reduce(torch.stack([vols[n] for n in names]))
        for n, v in zip(names, summed, strict=True):
            vols[n].copy_(v)


class _NoTimer:
    def mark(self, name: str) -> None:
        pass


def distributed_recon(kspace: KSpace6D, cfg: SummitConfig, batching: str = "balanced") -> tuple[QuantMaps, dict]:
    """:func:`summit_recon` as one rank of the initialised default process group.

    Every rank passes the same ``kspace`` and ``cfg``; every rank returns the same maps. Returns the maps and this
    rank's ``{"rank", "world", "x_slab", "bytes_sent", "comm_s"}`` (collective payload in bytes, seconds in the
    collectives).
    """
    par = XSlabParallel(kspace.geometry.matrix[0], batching)
    out = summit_recon(kspace, cfg, parallel=par)
    return out, {"rank": par.rank, "world": par.world, "x_slab": [par.x0, par.x1], "bytes_sent": par.bytes_sent,
                 "comm_s": par.comm_s}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, kspace: KSpace6D, cfg: SummitConfig, modes: tuple[str, ...],
            out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for i, batching in enumerate(modes):
            t0, c0 = time.perf_counter(), time.process_time()
            out, info = distributed_recon(kspace, cfg, batching)
            info["wall_s"], info["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
            info["timings"] = out.info["timings"]
            if rank == 0:
                np.savez(Path(out_dir) / f"maps{i}.npz", mask=out.mask, **out.maps)
            (Path(out_dir) / f"info{i}_rank{rank}.json").write_text(json.dumps(info, default=float))
        # every rank done with its collectives before any tears its gloo pairs down: without it a rank that
        # finished first could close a connection the other still used (both aborted in std::terminate, 1 CI run)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_recons(kspace: KSpace6D, cfg: SummitConfig, nproc: int = 2, modes: tuple[str, ...] = ("balanced",)
                 ) -> list[tuple[dict[str, np.ndarray], list[dict]]]:
    """Reconstructions on ``nproc`` local gloo workers (``torch.multiprocessing.spawn``), one per batching mode
    in ``modes``, in one process group (the workers start once).

    Per mode: rank 0's maps (name -> float32 ``(nz, ny, nx)``, plus ``mask``) and every rank's info dict
    (:func:`distributed_recon`, with ``wall_s``, ``cpu_s`` (this process's CPU seconds) and the solver
    ``timings``). Set ``cfg.threads`` (e.g. 1).
    """
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(_worker, args=(nproc, _free_port(), kspace, cfg, tuple(modes), tmp),
                                    nprocs=nproc)
        results = []
        for i in range(len(modes)):
            with np.load(Path(tmp) / f"maps{i}.npz") as z:
                maps = {k: z[k] for k in z.files}
            results.append((maps, [json.loads((Path(tmp) / f"info{i}_rank{r}.json").read_text())
                                   for r in range(nproc)]))
    return results


def spawn_recon(kspace: KSpace6D, cfg: SummitConfig, nproc: int = 2, batching: str = "balanced"
                ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """One reconstruction on ``nproc`` local gloo workers: rank 0's maps and every rank's info
    (:func:`spawn_recons`)."""
    return spawn_recons(kspace, cfg, nproc, (batching,))[0]


def main(argv: list[str] | None = None) -> None:
    """CLI: simulate a seeded phantom, reconstruct it on ``--nproc`` local workers (or as one torchrun rank when
    ``WORLD_SIZE`` is set), print wall time and collective payload per rank as JSON."""
    from qmapinr.recon.sim.simulate import SimulationConfig, simulate

    ap = argparse.ArgumentParser(prog="python -m qmapinr.recon.methods.distributed", description=main.__doc__)
    ap.add_argument("--nproc", type=int, default=2, help="local workers (ignored under torchrun); 1 = no group")
    ap.add_argument("--shape", default="8,32,32", help="nz,ny,nx of the simulated phantom")
    ap.add_argument("--coils", type=int, default=4)
    ap.add_argument("--R", type=float, default=4.0)
    ap.add_argument("--batching", choices=BATCHING, default="balanced")
    ap.add_argument("-p", action="append", default=[], metavar="KEY=VALUE", help="SummitConfig field")
    args = ap.parse_args(argv)
    # spawned workers import torch afresh and inherit this (no busy-waiting OpenMP threads on shared cores,
    # gadgets/threads.py); this process imported torch already, so export it to cover the --nproc 1 run too
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    props = dict(kv.split("=", 1) for kv in args.p)
    props.setdefault("threads", "1")
    cfg = from_properties(SummitConfig, props)
    kspace, _ = simulate(SimulationConfig(shape=tuple(int(v) for v in args.shape.split(",")), ncoils=args.coils,
                                          R=args.R, snr=30.0, seed=0, phantom="brain", preset="demo", nseg=None))
    t0, c0 = time.perf_counter(), time.process_time()
    if "WORLD_SIZE" in os.environ:  # torchrun: this process is one rank
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # "auto" then means this GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        out, info = distributed_recon(kspace, cfg, args.batching)
        info.update(timings=out.info["timings"], cpu_s=time.process_time() - c0)
        dist.destroy_process_group()
        infos = [info]
    elif args.nproc == 1:
        out = summit_recon(kspace, cfg)
        infos = [{"rank": 0, "world": 1, "timings": out.info["timings"], "cpu_s": time.process_time() - c0}]
    else:
        _, infos = spawn_recon(kspace, cfg, args.nproc, args.batching)
    print(json.dumps({"wall_s": round(time.perf_counter() - t0, 2), "ranks": [
        {k: info.get(k) for k in ("rank", "world", "x_slab", "bytes_sent", "comm_s", "cpu_s")}
        | {"loop_s": round(info["timings"]["loop_s"], 2), "total_s": round(info["timings"]["total_s"], 2)}
        for info in infos]}))


if __name__ == "__main__":
    main()

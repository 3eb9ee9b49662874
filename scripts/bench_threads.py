"""Seconds per SUMMIT epoch against competing CPU-bound processes, for intra-op threads 1, 2 and the default.

    python scripts/bench_threads.py [--cases demo,16x64x64] [--cell-seconds 2.5] [--rounds 2] [--json out.json]

Runs the whole table unattended (about 5-8 min on 2 cores) and prints it as markdown, followed by the check
"default within 20 % of the best column in every row". Per case (demo phantom = ``qmapinr simulate --preset demo
--R 4 --snr 30``, 8x32x32 / 4 coils; and 16x64x64 / 8 coils) the data are simulated and prepared once (coil maps,
initial maps, forward model) and saved; two measuring worker processes load them:

- ``spin``: libgomp's default wait policy (what torch did before issue 15),
- ``policy``: the environment of :func:`qmapinr.gadgets.threads.configure_openmp` (``GOMP_SPINCOUNT=10000``; or
  ``--policy KEY=VALUE,...`` to measure another setting);
  its ``default`` column uses :func:`qmapinr.gadgets.threads.choose_threads` (one session).

For each load (none; 1 or 2 pure-Python busy loops; 1 or 2 other reconstructions of the same case running the
default policy) the competing processes are started, then each column runs the training loop
(:func:`~qmapinr.recon.methods.summit.solver.fit`, WNNM on) for ``--cell-seconds`` after one warm-up batch (at most
two epochs; a warm-up batch longer than that is itself the measurement), the mean batch time is scaled to one
epoch, and the best of ``--rounds`` such runs is kept. Times are wall clock: on a shared machine they include
other users.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {"demo": ((8, 32, 32), 4), "16x64x64": ((16, 64, 64), 8)}
LOADS = {"none": (None, 0), "1 busy loop": ("busy", 1), "2 busy loops": ("busy", 2),
         "1 recon": ("recon", 1), "2 recons": ("recon", 2)}
COLUMNS = (("1", "policy", "1"), ("2 (spin)", "spin", "2"), ("2 (policy)", "policy", "2"),
           ("default", "policy", "default"))
BUSY = "while True: pass"
_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
         "QMAPINR_THREADS", "QMAPINR_SESSIONS")


def _bench_cfg():
    from qmapinr.recon.config import SummitConfig

    return SummitConfig(wnnm_start_epoch=0)  # WNNM from the first epoch: the cost of the later epochs


# ---------------------------------------------------------------- child processes


def _load(path: str):
    import torch

    return torch.load(path, weights_only=False)


class _Done(Exception):
    pass


def _run_fit(prep, model, threads: int, seconds: float | None, max_batches: int | None,
             adaptive: bool = False) -> tuple[float, int]:
    """Run the shared training loop with ``threads``; (s/epoch from the mean batch time, batches timed).

    ``adaptive``: the default policy's :class:`~qmapinr.recon.methods.threadtune.ThreadTuner` picks 1..threads;
    its first measuring round (``len(candidates) * (1 + trials)`` batches, repeated every ``period`` batches in
    a real run, i.e. ~6 % of the batches) is not timed, so the cell shows the count it settles on.
    """
    import torch

    from qmapinr.recon.methods.summit.solver import SummitLoss, fit
    from qmapinr.recon.methods.threadtune import ThreadTuner

    cfg = dataclasses.replace(_bench_cfg(), epochs=10**9, threads=threads, adaptive_threads=adaptive)
    torch.set_num_threads(threads)
    loss = SummitLoss(prep, cfg)
    stamps: list[float] = []
    probe = ThreadTuner(threads, torch.device("cpu"), enabled=adaptive)
    skip = len(probe.candidates) * (1 + probe.trials) if probe.active else 0
    first = 1 + skip  # warm-up batch(es), unless the first alone filled the budget (a pathological cell): timed

    def timed(model, xb, epoch, timer):
        nonlocal first
        stamps.append(time.perf_counter())
        if seconds is not None and len(stamps) >= 2 + skip:
            first = skip if stamps[skip + 1] - stamps[skip] >= seconds else skip + 1
            n = len(stamps) - 1 - first
            if n >= 1 and (stamps[-1] - stamps[first] >= seconds or n >= max_batches):
                raise _Done
        return loss(model, xb, epoch, timer)

    nx = prep.kspace.geometry.matrix[0]
    with contextlib.suppress(_Done):
        fit(model, timed, nx, cfg, prep.device)
    n = len(stamps) - 1 - first
    per_epoch = (stamps[-1] - stamps[first]) / n * math.ceil(nx / cfg.batch_x)
    return per_epoch, n


def worker(path: str) -> None:
    """Measuring worker: lines ``THREADS SECONDS`` on stdin -> one JSON line per request on stdout."""
    import torch  # noqa: F401  (before qmapinr.gadgets, whose import sets the wait policy: keep this env's)

    from qmapinr.gadgets.threads import choose_threads

    prep, model = _load(path)
    nx = prep.kspace.geometry.matrix[0]
    per_epoch = math.ceil(nx / _bench_cfg().batch_x)
    print("ready", flush=True)
    for line in sys.stdin:
        threads, seconds = line.split()
        n = choose_threads(0, sessions=1).threads if threads == "default" else int(threads)
        s, batches = _run_fit(prep, model, n, float(seconds), 2 * per_epoch, adaptive=threads == "default")
        print(json.dumps({"threads": n, "s_per_epoch": s, "batches": batches}), flush=True)


def load_recon(path: str) -> None:
    """Competing reconstruction: the default policy, epochs until killed."""
    import torch  # noqa: F401  (see worker)

    from qmapinr.gadgets.threads import choose_threads

    prep, model = _load(path)
    print("ready", flush=True)
    _run_fit(prep, model, choose_threads(0, sessions=1).threads, None, None, adaptive=True)


# ---------------------------------------------------------------- parent


POLICY: dict[str, str] = {}  # --policy: the wait settings of the policy processes instead of configure_openmp's


def _env(kind: str) -> dict[str, str]:
    from qmapinr.gadgets.threads import configure_openmp

    env = {k: v for k, v in os.environ.items() if k not in _WAIT}
    if kind == "policy" and POLICY:
        env.update(POLICY)
    elif kind == "policy":
        configure_openmp(env)
    return env


def _start(args: list[str], env: dict[str, str], ready: bool) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, bufsize=1)
    if ready and proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{args} did not start (exit code {proc.poll()})")
    return proc


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _prepare_case(name: str, folder: Path) -> str:
    import torch

    from qmapinr.recon.methods.summit.solver import build_field, prepare
    from qmapinr.recon.physics.history import with_shot_groups
    from qmapinr.recon.sim.simulate import SimulationConfig, simulate

    shape, coils = CASES[name]
    t0 = time.perf_counter()
    ks, _ = simulate(SimulationConfig(shape=shape, ncoils=coils, R=4.0, snr=30.0, seed=0, preset="demo"))
    cfg = dataclasses.replace(_bench_cfg(), device="cpu")
    prep = prepare(with_shot_groups(ks), cfg)  # as run_inr does: transient shots modelled exactly
    model = build_field(prep, cfg)
    path = str(folder / f"{name}.pt")
    torch.save((prep, model), path)
    print(f"{name}: simulated and prepared in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return path


def _uptime() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (1 min) / {five:.1f} (5 min)"


def run_case(name: str, path: str, cell_seconds: float, rounds: int, loads: list[str]) -> list[dict]:
    script = os.path.abspath(__file__)
    workers = {k: _start([script, "--worker", path], _env(k), ready=False) for k in ("spin", "policy")}
    for k, w in workers.items():
        if w.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{k} worker of {name} did not start")
    rows = []
    try:
        for load in loads:
            kind, count = LOADS[load]
            if kind == "busy":
                competitors = [_start(["-c", BUSY], _env("spin"), ready=False) for _ in range(count)]
            elif kind == "recon":
                competitors = [_start([script, "--load", path], _env("policy"), ready=True) for _ in range(count)]
            else:
                competitors = []
            time.sleep(1.0 if competitors else 0.0)
            row = {"case": name, "load": load, "machine_load": _uptime(), "cells": {}}
            try:
                for r in range(rounds):  # the best of the rounds, every other round in reverse column order
                    for col, kind_w, threads in COLUMNS[::-1] if r % 2 else COLUMNS:
                        w = workers[kind_w]
                        w.stdin.write(f"{threads} {cell_seconds}\n")
                        w.stdin.flush()
                        cell = json.loads(w.stdout.readline())
                        old = row["cells"].get(col)
                        if old is None or cell["s_per_epoch"] < old["s_per_epoch"]:
                            row["cells"][col] = cell
            finally:
                _stop(competitors)
            rows.append(row)
            print(f"{name}, {load}: " + ", ".join(f"{c} {v['s_per_epoch']:.3g}" for c, v in row["cells"].items()),
                  file=sys.stderr, flush=True)
    finally:
        _stop(list(workers.values()))
    return rows


def table(rows: list[dict], tolerance: float = 0.2) -> tuple[str, bool]:
    """Markdown table and whether the default is within ``tolerance`` of the best column in every row."""
    cols = [c for c, _, _ in COLUMNS]
    lines = ["| case | competing | " + " | ".join(cols) + " | default / best |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    failing = []
    for r in rows:
        cells = r["cells"]
        best = min(v["s_per_epoch"] for v in cells.values())
        ratio = cells["default"]["s_per_epoch"] / best
        ok = ratio <= 1 + tolerance
        if not ok:
            failing.append(f"{r['case']} / {r['load']}")
        text = [f"{cells[c]['s_per_epoch']:.3g}" + (f" (n={cells[c]['threads']})" if c == "default" else "")
                for c in cols]
        lines.append(f"| {r['case']} | {r['load']} | " + " | ".join(text) + f" | {ratio:.2f}{'' if ok else ' !'} |")
    verdict = "yes" if not failing else "NO (" + "; ".join(failing) + ")"
    lines.append(f"\ndefault within {tolerance:.0%} of the best column in every row: {verdict}")
    return "\n".join(lines), not failing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--loads", default=",".join(LOADS), help=f"comma list of {list(LOADS)}")
    ap.add_argument("--cell-seconds", type=float, default=2.5, help="timed seconds per cell (after warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="measurements per cell; the best is kept")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    ap.add_argument("--prepared", type=Path, default=None,
                    help="folder to keep the prepared cases in (CASE.pt) and to reuse them from on the next run")
    ap.add_argument("--policy", default="", help="KEY=VALUE[,KEY=VALUE]: wait settings of the policy columns and "
                    "competing recons instead of the shipped default (e.g. GOMP_SPINCOUNT=10000)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--load", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker)
        return 0
    if a.load:
        load_recon(a.load)
        return 0
    importlib.import_module("qmapinr.gadgets")  # sets the wait policy of this process: before torch
    import torch

    from qmapinr.gadgets.threads import OPENMP_DEFAULTS, choose_threads, usable_cpus

    t0 = time.perf_counter()
    POLICY.update(dict(kv.split("=", 1) for kv in a.policy.split(",") if kv))
    loads = a.loads.split(",")
    rows = []
    if a.prepared:
        a.prepared.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        for name in a.cases.split(","):
            saved = a.prepared / f"{name}.pt" if a.prepared else None
            path = str(saved) if saved and saved.exists() else _prepare_case(name, a.prepared or Path(tmp))
            rows += run_case(name, path, a.cell_seconds, a.rounds, loads)
    text, ok = table(rows)
    cpus = usable_cpus()
    print(f"torch {torch.__version__}, {cpus[1]}; default = {choose_threads(0, 1, {}, cpus).threads} thread(s) "
          f"with {POLICY or OPENMP_DEFAULTS}; s/epoch (WNNM on), best of {a.rounds} x {a.cell_seconds:g} s per cell; "
          f"{_uptime()} at the end; {time.perf_counter() - t0:.0f} s in all\n")
    print(text)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

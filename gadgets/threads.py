"""How many intra-op (torch/OpenMP) threads a chain session uses, and the OpenMP wait policy of its process.

One policy for every place a chain runs (``qmapinr replay``, Gadgetron's ``python -m gadgetron PORT
qmapinr.gadgets.chains summit``, the MRD server's workers). In order, the first that applies wins:

1. the chain's ``threads`` property (``SummitConfig.threads`` > 0),
2. ``QMAPINR_THREADS`` in the environment (the server's ``--threads-per-connection`` sets it for its workers),
3. ``OMP_NUM_THREADS`` set by the user,
4. auto: the CPUs this process may run on (``os.sched_getaffinity`` and the cgroup v2/v1 CPU quota, not
   ``os.cpu_count()``) divided by the sessions that share them (``QMAPINR_SESSIONS``, set by the MRD server to
   ``--max-connections``; 1 elsewhere), at least 1.

The recon solvers only apply the number (``torch.set_num_threads(cfg.threads)``); :func:`session_config` puts it
into the chain's config and logs the choice and its reason once per session.

Busy-waiting: libgomp (the OpenMP runtime of the torch wheels) lets idle team threads spin for ~300 000
iterations at every barrier. When another process holds one of the cores, the spinning thread and the
descheduled one fight over it and an epoch becomes 4-40x slower (issue 15). Sleeping at once
(``OMP_WAIT_POLICY=PASSIVE``) avoids that but costs a futex wake-up per parallel region, which on an idle host
makes 2 threads no faster than 1 (docs/benchmarks/threads.md, rounds 2-3). :func:`configure_openmp` therefore
sets a bounded spin, ``GOMP_SPINCOUNT=10000`` (libgomp's default is 300 000 iterations; 1000 was too short to
bridge the gaps between the small parallel regions of one batch on an idle host), unless the user
set a wait setting; together with the loop's measured thread count (:mod:`qmapinr.recon.methods.threadtune`) it
was within 20 % of the best column in every row of round 4. libgomp reads it when it is loaded, i.e. at
``import torch``, so it is called when :mod:`qmapinr.gadgets` is imported, before any module
that imports torch. The measurement behind both defaults is docs/benchmarks/threads.md
(``python scripts/bench_threads.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV_THREADS = "QMAPINR_THREADS"
ENV_SESSIONS = "QMAPINR_SESSIONS"
OPENMP_DEFAULTS: dict[str, str] = {"GOMP_SPINCOUNT": "10000"}
"""Environment defaults applied before torch loads (a user's own value wins)."""
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count of one session and why (for the log)."""

    threads: int
    reason: str
    automatic: bool = False  # chosen from the CPUs (not set by a property or the environment)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_paths(cgroup_file: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process from ``/proc/self/cgroup`` lines ``ID:CONTROLLERS:PATH``."""
    v2 = v1 = None
    for line in (_read(cgroup_file) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _ancestors(root: Path, rel: str | None) -> list[Path]:
    """``root/rel``, its parents up to ``root`` (a cgroup is limited by every ancestor's quota)."""
    out = [root]
    if rel and rel.strip("/"):
        parts = rel.strip("/").split("/")
        out += [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
    return out


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (``"QUOTA PERIOD"`` in microseconds; ``"max ..."`` = no limit)."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = float(fields[0])
        period = float(fields[1]) if len(fields) > 1 else 100000.0
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup",
                     cgroup_file: str | os.PathLike = "/proc/self/cgroup") -> float | None:
    """CPUs (possibly fractional) this process's cgroup may use, None without a quota.

    cgroup v2: the smallest ``cpu.max`` of the process's cgroup and its ancestors under ``root``. cgroup v1:
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` under ``root/cpu`` (or ``root/cpu,cpuacct``), quota -1 = none.
    """
    root = Path(root)
    v2, v1 = _cgroup_paths(Path(cgroup_file))
    limits = []
    for d in _ancestors(root, v2):
        text = _read(d / "cpu.max")
        if text is not None and (q := parse_cpu_max(text)) is not None:
            limits.append(q)
    for name in ("cpu", "cpu,cpuacct"):
        for d in _ancestors(root / name, v1):
            quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            try:
                q, p = float(quota or -1), float(period or 0)
            except ValueError:
                continue
            if q > 0 and p > 0:
                limits.append(q / p)
    return min(limits) if limits else None


def usable_cpus(root: str | os.PathLike = "/sys/fs/cgroup",
                cgroup_file: str | os.PathLike = "/proc/self/cgroup") -> tuple[int, str]:
    """(CPUs this process may use, description): its affinity mask, capped by the cgroup quota (floored, >= 1)."""
    try:
        affinity = len(os.sched_getaffinity(0))
        what = f"{affinity} CPUs in the affinity mask"
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
        what = f"{affinity} CPUs"
    quota = cgroup_cpu_quota(root, cgroup_file)
    if quota is not None and quota < affinity:
        return max(1, math.floor(quota)), f"{what}, cgroup CPU quota {quota:g}"
    return affinity, what


def _positive_int(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").split(",")[0].strip()  # OMP_NUM_THREADS may list nested levels: "4,2"
    if not text:
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise ValueError(f"{name}={text!r} is not an integer") from exc
    if value < 0:
        raise ValueError(f"{name}={value} must be >= 0 (0 = automatic)")
    return value or None


def choose_threads(requested: int = 0, sessions: int | None = None, environ: Mapping[str, str] | None = None,
                   cpus: tuple[int, str] | None = None) -> ThreadChoice:
    """Intra-op threads for one session (the order is in the module docstring).

    Parameters
    ----------
    requested : the chain's ``threads`` property (0 = automatic).
    sessions : sessions sharing the CPUs; None reads ``QMAPINR_SESSIONS`` (default 1).
    environ : environment to read (default ``os.environ``).
    cpus : (count, description) of usable CPUs (default :func:`usable_cpus`).
    """
    environ = os.environ if environ is None else environ
    if requested < 0:
        raise ValueError(f"threads={requested} must be >= 0 (0 = automatic)")
    if requested > 0:
        return ThreadChoice(requested, f"threads property = {requested}")
    for name in (ENV_THREADS, "OMP_NUM_THREADS"):
        value = _positive_int(environ, name)
        if value is not None:
            return ThreadChoice(value, f"{name}={value} in the environment")
    if sessions is None:
        sessions = _positive_int(environ, ENV_SESSIONS) or 1
    if sessions < 1:
        raise ValueError(f"sessions={sessions} must be >= 1")
    count, what = cpus if cpus is not None else usable_cpus()
    threads = max(1, count // sessions)
    share = f" shared by {sessions} concurrent sessions" if sessions > 1 else ""
    return ThreadChoice(threads, f"automatic: {what}{share}", automatic=True)


def session_config(cfg, chain: str = "chain"):
    """``cfg`` with ``threads`` set by :func:`choose_threads` (logged once); configs without the field unchanged."""
    if not any(f.name == "threads" for f in dataclasses.fields(cfg)):
        return cfg
    choice = choose_threads(cfg.threads)
    wait = ", ".join(f"{k}={os.environ[k]}" for k in _WAIT_VARIABLES if k in os.environ) or "OpenMP defaults"
    adaptive = bool(getattr(cfg, "adaptive_threads", False)) and choice.automatic and choice.threads > 1
    log.info("%s: %d intra-op thread(s) (%s; %s)%s", chain, choice.threads, choice.reason, wait,
             "; fewer while fewer measure faster (adaptive_threads)" if adaptive else "")
    if hasattr(cfg, "adaptive_threads"):
        return dataclasses.replace(cfg, threads=choice.threads, adaptive_threads=adaptive)
    return dataclasses.replace(cfg, threads=choice.threads)


def session_environ(sessions: int, threads: int | None = None) -> dict[str, str]:
    """Environment for a worker process that serves one of ``sessions`` concurrent sessions."""
    env = {ENV_SESSIONS: str(max(1, sessions))}
    if threads:
        env[ENV_THREADS] = str(threads)
    return env


def configure_openmp(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`OPENMP_DEFAULTS` into ``environ`` (default ``os.environ``) unless a wait setting is already there.

    Must run before torch is imported to take effect in this process (children inherit it either way); returns
    what was set. A user who set any of ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME`` keeps them.
    """
    environ = os.environ if environ is None else environ
    if any(k in environ for k in _WAIT_VARIABLES):
        return {}
    environ.update(OPENMP_DEFAULTS)
    if environ is os.environ and "torch" in sys.modules:
        log.debug("torch was imported before qmapinr.gadgets: %s applies to child processes only",
                  OPENMP_DEFAULTS)
    return dict(OPENMP_DEFAULTS)

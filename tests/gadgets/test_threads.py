"""Thread policy: affinity and cgroup quota bound the automatic count, sessions divide it, explicit settings win."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qmapinr.gadgets import threads as tp
from qmapinr.gadgets.chains import CHAIN_CONFIGS
from qmapinr.recon.config import SummitConfig

ROOT = Path(__file__).resolve().parents[2]

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")


def _child(code: str, env: dict[str, str] | None = None, cpus: set[int] | None = None) -> dict:
    """Run ``code`` (printing one JSON line) in a fresh interpreter, optionally pinned to ``cpus``."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT / "src"))
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
    out = subprocess.run([sys.executable, "-c", code], env=env, preexec_fn=pin, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


CHOOSE = ("import json; from qmapinr.gadgets.threads import choose_threads, usable_cpus; c = choose_threads(); "
          "print(json.dumps({'threads': c.threads, 'reason': c.reason, 'cpus': usable_cpus()[0]}))")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (tp.ENV_THREADS, tp.ENV_SESSIONS, "OMP_NUM_THREADS")}


@needs_affinity
def test_automatic_count_follows_the_affinity_mask():
    one = sorted(os.sched_getaffinity(0))[:1]
    got = _child(CHOOSE, _clean_env(), set(one))
    assert got["cpus"] == 1 and got["threads"] == 1, got
    assert "1 CPUs in the affinity mask" in got["reason"]
    whole = _child(CHOOSE, _clean_env())
    quota = tp.cgroup_cpu_quota()
    expected = len(os.sched_getaffinity(0)) if quota is None else min(len(os.sched_getaffinity(0)), max(1, int(quota)))
    assert whole["threads"] == whole["cpus"] == expected


@needs_affinity
def test_environment_wins_over_the_affinity_mask():
    one = set(sorted(os.sched_getaffinity(0))[:1])
    assert _child(CHOOSE, dict(_clean_env(), QMAPINR_THREADS="3"), one)["threads"] == 3
    assert _child(CHOOSE, dict(_clean_env(), OMP_NUM_THREADS="5"), one)["threads"] == 5


def test_explicit_property_then_environment_then_auto():
    env = {"QMAPINR_THREADS": "3", "OMP_NUM_THREADS": "5", "QMAPINR_SESSIONS": "2"}
    cpus = (8, "8 CPUs")
    assert tp.choose_threads(2, environ=env, cpus=cpus) == tp.ThreadChoice(2, "threads property = 2")
    assert tp.choose_threads(0, environ=env, cpus=cpus).threads == 3
    assert tp.choose_threads(0, environ={"OMP_NUM_THREADS": "5,2"}, cpus=cpus).threads == 5
    auto = tp.choose_threads(0, environ={"QMAPINR_SESSIONS": "2"}, cpus=cpus)
    assert auto.threads == 4 and "2 concurrent sessions" in auto.reason
    with pytest.raises(ValueError, match="QMAPINR_THREADS"):
        tp.choose_threads(0, environ={"QMAPINR_THREADS": "many"}, cpus=cpus)
    with pytest.raises(ValueError, match="threads=-1"):
        tp.choose_threads(-1, environ={}, cpus=cpus)


def test_sessions_divide_the_cpus_at_least_one_each():
    cpus = (8, "8 CPUs")
    assert [tp.choose_threads(0, s, {}, cpus).threads for s in (1, 2, 3, 4, 8, 16)] == [8, 4, 2, 2, 1, 1]
    assert tp.choose_threads(0, None, {"QMAPINR_SESSIONS": "4"}, cpus).threads == 2
    with pytest.raises(ValueError, match="sessions"):
        tp.choose_threads(0, 0, {}, cpus)
    assert tp.session_environ(4) == {"QMAPINR_SESSIONS": "4"}
    assert tp.session_environ(4, 3) == {"QMAPINR_SESSIONS": "4", "QMAPINR_THREADS": "3"}


def test_cgroup_v2_quota_from_cpu_max(tmp_path):
    cg = tmp_path / "proc_cgroup"
    cg.write_text("0::/job/step\n")
    (tmp_path / "fs" / "job" / "step").mkdir(parents=True)
    assert tp.cgroup_cpu_quota(tmp_path / "fs", cg) is None  # no cpu.max anywhere
    (tmp_path / "fs" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "fs" / "job" / "cpu.max").write_text("250000 100000\n")
    (tmp_path / "fs" / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert tp.cgroup_cpu_quota(tmp_path / "fs", cg) == pytest.approx(2.5)  # an ancestor's limit applies
    (tmp_path / "fs" / "job" / "step" / "cpu.max").write_text("150000 100000\n")
    assert tp.cgroup_cpu_quota(tmp_path / "fs", cg) == pytest.approx(1.5)
    assert tp.parse_cpu_max("max 100000") is None and tp.parse_cpu_max("50000 100000") == 0.5


def test_cgroup_v1_quota_and_the_floor_in_usable_cpus(tmp_path):
    cg = tmp_path / "proc_cgroup"
    cg.write_text("4:memory:/x\n3:cpu,cpuacct:/\n0::/\n")
    v1 = tmp_path / "fs" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert tp.cgroup_cpu_quota(tmp_path / "fs", cg) is None
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    assert tp.cgroup_cpu_quota(tmp_path / "fs", cg) == pytest.approx(0.5)
    count, what = tp.usable_cpus(tmp_path / "fs", cg)
    assert count == 1 and "quota 0.5" in what  # a fraction of one CPU still gets one thread


def test_session_config_sets_and_logs_the_threads(monkeypatch, caplog):
    monkeypatch.setenv(tp.ENV_THREADS, "3")
    with caplog.at_level("INFO", logger="qmapinr.gadgets.threads"):
        cfg = tp.session_config(SummitConfig(), "summit")
    assert cfg.threads == 3 and "QMAPINR_THREADS=3" in caplog.text
    assert tp.session_config(SummitConfig(threads=2), "summit").threads == 2  # the property wins
    for cls in CHAIN_CONFIGS.values():  # every chain's config carries the field the policy fills
        assert any(f.name == "threads" for f in dataclasses.fields(cls)), cls


def test_configure_openmp_keeps_a_users_wait_setting():
    env: dict[str, str] = {}
    assert tp.configure_openmp(env) == tp.OPENMP_DEFAULTS and env == tp.OPENMP_DEFAULTS
    user = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert tp.configure_openmp(user) == {} and user == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert tp.OPENMP_DEFAULTS == {"GOMP_SPINCOUNT": "10000"}  # bounded spin: threads.md round 4


def test_chain_process_loads_torch_with_the_wait_policy():
    """Gadgetron imports qmapinr.gadgets.chains first: the wait policy is in place before torch loads libgomp."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    code = ("import json, os, sys; import qmapinr.gadgets.chains; m = list(sys.modules); "
            "print(json.dumps({'policy': os.environ.get('GOMP_SPINCOUNT'), "
            "'first': m.index('qmapinr.gadgets.threads') < m.index('torch')}))")
    got = _child(code, env)
    assert got == {"policy": tp.OPENMP_DEFAULTS["GOMP_SPINCOUNT"], "first": True}

"""docker/: the Dockerfiles contain the expected steps and requirements-cpu.txt matches setup.cfg.

The Docker engine does not run here; these checks keep the files honest (text-level), the CI job installs
requirements-cpu.txt for real.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _requirements() -> dict[str, str]:
    lines = (DOCKER / "requirements-cpu.txt").read_text().splitlines()
    return {_name(r): r.strip() for r in lines if r.strip() and not r.startswith(("#", "-"))}


def test_requirements_cover_install_requires():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    install = [r for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    reqs = _requirements()
    missing = sorted({_name(r) for r in install} - set(reqs))
    assert not missing, f"docker/requirements-cpu.txt lacks install_requires entries: {missing}"
    for r in install:  # same lower bounds as setup.cfg
        assert reqs[_name(r)].replace(" ", "") == r.strip().replace(" ", ""), (reqs[_name(r)], r)
    text = (DOCKER / "requirements-cpu.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_has_expected_steps(dockerfile):
    steps = _instructions(DOCKER / dockerfile)
    kinds = [k for k, _ in steps]
    assert kinds.count("FROM") == 1
    copies = [a for k, a in steps if k == "COPY"]
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert any("docker/requirements-cpu.txt" in c for c in copies)
    assert "pip install" in runs and "-r " in runs and "requirements-cpu.txt" in runs
    plugin = re.search(r"pip install (--no-cache-dir )?(\.|/tmp/qmapinr)( |$)", runs)
    assert plugin, "the plugin is not pip-installed"
    config_copy = [c for c in copies if "config_xml/*.xml" in c]
    assert config_copy, "config_xml/*.xml is not copied"
    assert config_copy[0].rstrip("/").endswith("share/gadgetron/config")
    assert ("EXPOSE", "9002") in steps
    # the install of dependencies comes before the copy of the source (cacheable layer), the config copy last
    first_req = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "requirements-cpu.txt" in a)
    first_src = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and a.startswith(". "))
    assert first_req < first_src


def test_gpu_dockerfile_uses_gadgetron_image_and_conda_prefix():
    steps = _instructions(DOCKER / "Dockerfile")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert args["GADGETRON_IMAGE"].startswith("ghcr.io/gadgetron/gadgetron/gadgetron_ubuntu_rt_cuda")
    assert args["GT_PREFIX"] == "/opt/conda/envs/gadgetron"
    assert ("FROM", "${GADGETRON_IMAGE}") in steps
    assert "ENTRYPOINT" not in [k for k, _ in steps]  # Gadgetron's own entrypoint stays
    assert any("conda activate gadgetron" in a for k, a in steps if k == "RUN")


def test_cpu_dockerfile_runs_the_server_on_all_interfaces():
    steps = _instructions(DOCKER / "Dockerfile.cpu")
    assert ("FROM", "python:3.11-slim") in steps
    entry = next(a for k, a in steps if k == "ENTRYPOINT")
    assert entry.startswith("[") and '"qmapinr", "serve", "--host", "0.0.0.0"' in entry  # exec form: PID 1
    assert '"--port", "9002"' in entry and "/usr/local/share/gadgetron/config" in entry
    assert any(k == "USER" and a != "root" for k, a in steps)


def test_readme_documents_build_run_and_gadgetron_host():
    text = (DOCKER / "README.md").read_text()
    for needle in ("docker build -f docker/Dockerfile ", "docker build -f docker/Dockerfile.cpu",
                   "## Running on a Gadgetron host", "share/gadgetron/config", "-c summit.xml"):
        assert needle in text, needle

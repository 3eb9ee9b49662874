"""The package's import graph, as a static tool (ruff) sees it: layers point one way and there is no cycle."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


@pytest.fixture(scope="module")
def ig():
    if shutil.which("ruff") is None:
        pytest.skip("ruff (test extra) not installed: cannot build the static import graph")
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_static_tool_sees_the_project_imports(ig):
    graph = ig.load_graph()
    assert "gadgets.chains" in graph and "recon.methods.registry" in graph["gadgets.chains"]
    assert sum(len(v) for v in graph.values()) > 50


def test_no_cycle_and_no_upward_arrow(ig):
    graph = ig.load_graph()
    assert ig.find_cycles(graph) == []
    assert ig.upward_arrows(graph) == []


def test_checker_catches_a_cycle_and_an_upward_arrow(ig):
    graph = {"recon.physics.fft": {"recon.methods.registry"}, "recon.methods.registry": {"recon.physics.fft"}}
    assert ig.find_cycles(graph)
    assert ig.upward_arrows(graph) == [("recon.physics.fft", "recon.methods.registry")]


def test_every_module_has_a_layer(ig):
    graph = ig.load_graph()
    assert [m for m in graph if ig.package_of(m)[1] == len(ig.LAYERS) and m not in ("recon", "gadgets")] == []

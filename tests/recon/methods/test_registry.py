"""The one method registry: names, config classes, solvers; unknown names are clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from qmapinr.recon.config import from_properties
from qmapinr.recon.methods.registry import METHODS, get_method


def test_every_method_has_a_typed_config_and_a_solver():
    assert {"summit", "baseline"} <= set(METHODS)
    for name, m in METHODS.items():
        assert m.name == name and dataclasses.is_dataclass(m.config) and callable(m.solve) and m.description
        assert isinstance(from_properties(m.config, {}), m.config)  # defaults parse


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'nope'; known: .*summit"):
        get_method("nope")

"""Chain entry functions: properties from the XML <configuration> and JSON parameters reach the solver."""

from __future__ import annotations

import pytest
from fake_connection import FakeConnection  # tests/helpers
from fake_connection import capture_reconstruct as _capture

from qmapinr.gadgets import chains
from qmapinr.recon.config import ConfigError, SummitConfig


def test_xml_properties_reach_the_solver(monkeypatch, measurement):
    seen = _capture(monkeypatch)
    m = measurement
    conn = FakeConnection(m.acquisitions, m.header, '<configuration><property name="epochs" value="3"/>'
                                                    '<property name="map_grid.n_levels" value="5"/></configuration>')
    chains.summit(conn)
    cfg = seen["cfg"]
    assert isinstance(cfg, SummitConfig) and seen["chain"] == "summit"
    assert cfg.epochs == 3 and cfg.map_grid.n_levels == 5 and cfg.lr == SummitConfig().lr
    assert len(conn.sent) == 2  # one image per map


def test_json_parameters_override_xml(monkeypatch, measurement):
    seen = _capture(monkeypatch)
    m = measurement
    conn = FakeConnection(m.acquisitions, m.header, '<configuration><property name="epochs" value="3"/>'
                                                    '</configuration>', parameters={"epochs": 9, "lr": "0.01"})
    chains.summit(conn)
    assert seen["cfg"].epochs == 9 and seen["cfg"].lr == pytest.approx(0.01)


def test_unknown_property_stops_the_chain(monkeypatch, measurement):
    _capture(monkeypatch)
    m = measurement
    conn = FakeConnection(m.acquisitions, m.header, '<configuration><property name="epoch" value="3"/>'
                                                    '</configuration>')
    with pytest.raises(ConfigError, match="unknown property 'epoch'"):
        chains.summit(conn)
    assert conn.sent == []


def test_registry_matches_configs():
    assert set(chains.CHAINS) == set(chains.CHAIN_CONFIGS)
    for name, fn in chains.CHAINS.items():
        assert callable(fn) and fn.__name__ == name


def test_drain_on_failure_reraises_and_leaves_other_connections_alone():
    """Only gadgetron.external connections are drained; the chain's exception always goes on unchanged."""
    from qmapinr.gadgets.chains import drain_on_failure

    class NotExternal:
        def __iter__(self):
            raise AssertionError("must not be read")

    with pytest.raises(ValueError, match="the chain's own error"), drain_on_failure(NotExternal()):
        raise ValueError("the chain's own error")

"""The one method switch reaches the solver from XML, JSON and the CLI; lorein replays end to end over the socket."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from fake_connection import FakeConnection, capture_reconstruct

from qmapinr.gadgets import chains
from qmapinr.gadgets.images import LRR_SERIES_BASE, mrd_images_to_maps
from qmapinr.recon.config import ConfigError, SummitConfig
from qmapinr.recon.methods.lorein.config import LoreinConfig
from qmapinr.recon.methods.registry import METHODS
from qmapinr.recon.methods.subspace import SubspaceConfig

REPO = Path(__file__).resolve().parents[4]
TINY_H5 = REPO / "tests" / "data" / "tiny.h5"


@pytest.fixture
def seen(monkeypatch):
    return capture_reconstruct(monkeypatch)


def _xml_config(name: str) -> ET.Element:
    root = ET.parse(REPO / "config_xml" / f"{name}.xml").getroot()
    return root.find("stream/external/configuration")


def test_lorein_is_registered_once():
    assert METHODS["lorein"].config is LoreinConfig and chains.CHAIN_CONFIGS["lorein"] is LoreinConfig
    assert "lorein" in chains.CHAINS


def test_lorein_xml_reaches_the_lorein_solver(seen, measurement):
    conn = FakeConnection(measurement.acquisitions, measurement.header, _xml_config("lorein"))
    chains.lorein(conn)
    assert seen["chain"] == "lorein" and isinstance(seen["cfg"], LoreinConfig)
    assert seen["cfg"].lrr_rank == 8 and seen["cfg"].cons_grad == "both"


def test_editing_the_one_method_property_switches_the_xml(seen, measurement):
    config = _xml_config("lorein")
    config.find("property[@name='method']").set("value", "summit")
    chains.lorein(FakeConnection(measurement.acquisitions, measurement.header, config))
    assert seen["chain"] == "summit" and type(seen["cfg"]) is SummitConfig
    assert seen["cfg"].epochs == 60  # the SUMMIT properties of the file still apply, the LRR ones are dropped


def test_json_method_parameter_switches_a_preset(seen, measurement):
    conn = FakeConnection(measurement.acquisitions, measurement.header, _xml_config("summit"),
                          parameters={"method": "lorein", "lrr_rank": 4})
    chains.summit(conn)
    assert seen["chain"] == "lorein" and seen["cfg"].lrr_rank == 4 and seen["cfg"].epochs == 60
    conn = FakeConnection(measurement.acquisitions, measurement.header, _xml_config("summit"),
                          parameters={"method": "baseline"})
    chains.summit(conn)
    assert seen["chain"] == "baseline" and isinstance(seen["cfg"], SubspaceConfig)


def test_unknown_method_or_property_is_an_error(seen, measurement):
    with pytest.raises(ValueError, match="unknown method 'loreen'"):
        chains.summit(FakeConnection(measurement.acquisitions, measurement.header, None, {"method": "loreen"}))
    with pytest.raises(ConfigError, match="unknown property"):
        chains.summit(FakeConnection(measurement.acquisitions, measurement.header, None,
                                     {"method": "lorein", "lrr_rnak": 3}))
    with pytest.raises(ConfigError, match="unknown property"):  # no switch: another method's property is wrong
        chains.summit(FakeConnection(measurement.acquisitions, measurement.header, None, {"lrr_rank": 3}))


def test_cli_method_flag_reaches_the_solver(seen, tmp_path):
    from qmapinr.gadgets.app.cli import main

    rc = main(["replay", str(TINY_H5), "--method", "lorein", "--mode", "inprocess", "--no-progress",
               "--no-truth", "--out", str(tmp_path), "-p", "epochs=1"])
    assert rc == 0
    assert seen["chain"] == "lorein" and isinstance(seen["cfg"], LoreinConfig) and seen["cfg"].epochs == 1


def test_lorein_replays_end_to_end_over_the_socket():
    """The real lorein chain, launched as Gadgetron 4 does; maps plus the optional LRR series come back."""
    from qmapinr.gadgets.transport.replay import replay

    props = {"epochs": "2", "coil_refine_iters": "2", "threads": "1", "lrr_output": "true",
             "lrr_output_readouts": "1", "map_grid.n_levels": "4", "lrr_grid.n_levels": "4"}
    result = replay(TINY_H5, target="lorein", mode="subprocess", timeout=600, progress=False, properties=props)
    assert result.ok, result.error
    maps = mrd_images_to_maps(result.images)
    assert {"T1", "T2", "T2star", "A", "B0", "Phase0", "Residual"} <= set(maps)
    lrr = [im for im in result.images if im.meta.get("DataRole") == "LRRSeries"]
    series = sorted({int(im.image_series_index) for im in lrr})
    nte, ntau = 3, 4  # tiny.h5: 3 echoes, 4 T2-preps
    assert series == [LRR_SERIES_BASE + e for e in range(nte)] and len(lrr) == nte * ntau
    for im in lrr:
        assert np.isfinite(np.asarray(im.data)).all() and float(np.asarray(im.data).max()) > 0

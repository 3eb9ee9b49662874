"""The default SUMMIT chain on the project's own 4-slice fixture runs to the end; bad data reach the client as TEXT."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import ismrmrd
import mrd_test_client as mc
import numpy as np
import pytest
import torch

from qmapinr.gadgets import chains
from qmapinr.gadgets.images import mrd_images_to_maps
from qmapinr.gadgets.transport.server import MRDServer
from qmapinr.recon.sim.mrd_writer import read_mrd

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.h5"


class _Connection:
    def __init__(self, items, header, config_xml: str | None = None):
        self._items, self.header = items, header
        self.config = ET.fromstring(config_xml) if config_xml else None
        self.parameters: dict = {}
        self.sent: list = []

    def __iter__(self):
        return iter(self._items)

    def send(self, item):
        self.sent.append(item)


def test_default_summit_chain_on_tiny_fixture_runs_to_the_end():
    """Default settings (60 epochs, WNNM from epoch 30, patch 5) on 4 slices: the patch is clipped, not fatal."""
    torch.set_num_threads(1)
    xml, acqs = read_mrd(TINY)
    conn = _Connection(acqs, xml)
    chains.summit(conn)
    images = [i for i in conn.sent if isinstance(i, ismrmrd.Image)]
    maps = mrd_images_to_maps(images)
    assert {"T1", "T2", "T2star", "A", "B0", "Phase0", "Residual"} <= set(maps)
    assert all(np.isfinite(a).all() for a, _ in maps.values())
    assert np.count_nonzero(maps["T1"][0]) > 100
    warning = images[0].meta["Warning"]
    assert "WNNM uses 4x4 patches" in (warning if isinstance(warning, str) else " ".join(warning))


@pytest.fixture
def summit_server():
    server = MRDServer(port=0, chains=chains.CHAINS, workers="thread", max_connections=1, linger=0.5)
    host, port = server.bind()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, host, port
    server.shutdown()
    thread.join(30)


def test_all_zero_kspace_reaches_the_client_as_text(summit_server):
    server, host, port = summit_server
    xml, acqs = read_mrd(TINY)
    for a in acqs:
        a.data[:] = 0
    result = mc.run_client(host, port, xml, acqs, config_text="summit", timeout=120)
    assert result.closed and result.images == []
    assert len(result.texts) == 1 and "ReconstructionError: k-space is all zero" in result.texts[0]

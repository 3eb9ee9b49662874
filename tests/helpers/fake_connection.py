"""A stand-in for ``gadgetron.external.Connection`` and a solver stub, for chain tests without a socket."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from qmapinr.recon.kspace import QuantMaps


class FakeConnection:
    """The parts of gadgetron.external.Connection a chain uses; ``config_xml`` is XML text or an Element."""

    def __init__(self, items, header, config_xml: str | ET.Element | None, parameters=None):
        self._items = items
        self.header = header
        self.config = ET.fromstring(config_xml) if isinstance(config_xml, str) and config_xml else config_xml
        self.parameters = parameters or {}
        self.sent = []

    def __iter__(self):
        return iter(self._items)

    def send(self, item):
        self.sent.append(item)


def capture_reconstruct(monkeypatch) -> dict:
    """Replace ``chains.reconstruct`` by a stub that records ``chain`` and ``cfg`` and returns T1/T2 maps."""
    from qmapinr.gadgets import chains

    seen = {}

    def fake_reconstruct(kspace, chain, cfg, progress=None):
        seen["cfg"], seen["chain"] = cfg, chain
        nx, ny, nz = kspace.geometry.matrix
        z = np.zeros((nz, ny, nx), np.float32)
        return QuantMaps(maps={"T1": z + 1000, "T2": z + 80}, mask=z > -1, geometry=kspace.geometry)

    monkeypatch.setattr(chains, "reconstruct", fake_reconstruct)
    return seen

"""Handshake payload parsing: config names, stream configurations, JSON parameters."""

from __future__ import annotations

import mrd_test_client as mc  # noqa: E402
import pytest

from qmapinr.gadgets.transport.handshake import chain_name_from_file, flatten_parameters, parse_config_text
from qmapinr.gadgets.transport.socketstream import ProtocolError


def test_name_helpers():
    assert chain_name_from_file("C:\\cfg\\Summit.XML") == "Summit"
    assert chain_name_from_file("baseline") == "baseline"
    with pytest.raises(ProtocolError):
        chain_name_from_file(".xml")
    name, cfg = parse_config_text(mc.STREAM_XML)
    assert name == "summit" and cfg.tag == "configuration"
    assert flatten_parameters({"a": {"b": {"c": 1.5}}}) == {"a.b.c": "1.5"}
    with pytest.raises(ProtocolError):
        flatten_parameters({"a": [1]})

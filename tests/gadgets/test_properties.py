"""Chain properties from a Gadgetron <configuration> (element, text, bytes, None)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from qmapinr.gadgets.properties import properties_from_config

XML = '<configuration><property name="epochs" value="5"/><g><property name="lr" value="0.01"/></g></configuration>'


def test_all_inputs_give_the_same_properties():
    want = {"epochs": "5", "lr": "0.01"}
    assert properties_from_config(XML) == want
    assert properties_from_config(XML.encode() + b"\x00") == want
    assert properties_from_config(ET.fromstring(XML)) == want
    assert properties_from_config(None) == {} and properties_from_config(" \x00") == {}

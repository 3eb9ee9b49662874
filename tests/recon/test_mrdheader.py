"""The project's ISMRMRD header convention: build -> XML -> parse round trip; missing fields are named."""

from __future__ import annotations

import pytest

from qmapinr.recon.kspace import Geometry, SequenceParams
from qmapinr.recon.mrdheader import HeaderError, build_header, header_to_xml, parse_header

SEQ = SequenceParams(tr_ms=20.0, te_ms=(3.7, 9.4, 15.1), flip_deg=4.0, tau_ms=(0.0, 30.0, 60.0), nseg=16,
                     inversion_efficiency=-0.95)
GEOM = Geometry(matrix=(32, 24, 8), fov_mm=(256.0, 192.0, 40.0))


def test_round_trip_keeps_timing_and_sizes():
    xml = header_to_xml(build_header(SEQ, GEOM, 6, field_strength_t=2.89))
    seq, info = parse_header(xml)
    assert seq == SEQ
    assert info.matrix == GEOM.matrix and info.fov_mm == GEOM.fov_mm and info.ncoils == 6
    assert parse_header(xml.encode() + b"\x00")[0] == SEQ  # NUL-terminated bytes, as some clients send


@pytest.mark.parametrize("cut, field", [("<TR>", "TR"), ("T2PrepDuration_0", "T2PrepDuration_0")])
def test_missing_required_field_is_named(cut, field):
    xml = header_to_xml(build_header(SEQ, GEOM, 6))
    if cut == "<TR>":
        start = xml.index("<TR>")
        xml = xml[:start] + xml[xml.index("</TR>") + 5:]
    else:
        xml = xml.replace("T2PrepDuration_", "SomethingElse_")
    with pytest.raises(HeaderError, match=field):
        parse_header(xml)


def test_not_xml_is_a_header_error():
    with pytest.raises(HeaderError, match="not valid XML"):
        parse_header("<ismrmrdHeader><unclosed>")

"""The project's ISMRMRD header convention: build -> XML -> parse round trip; missing fields are named."""

from __future__ import annotations

import dataclasses
import re

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

# --- sequence history (PrepLoopOrder, RecoveryDelay_ms, PrepDummyShots) ---
HSEQ = SequenceParams(tr_ms=20.0, te_ms=(3.7, 9.4), flip_deg=8.0, tau_ms=(0.0, 30.0, 60.0), nseg=16)
HGEOM = Geometry(matrix=(16, 16, 4), fov_mm=(220.0, 220.0, 16.0))


@pytest.mark.parametrize("order, delay, dummies", [(None, 0.0, 0), ("tau-outer", 150.0, 2), ("shot-outer", 0.0, 3)])
def test_history_fields_round_trip(order, delay, dummies):
    seq = dataclasses.replace(HSEQ, prep_loop_order=order, recovery_delay_ms=delay, prep_dummies=dummies)
    xml = header_to_xml(build_header(seq, HGEOM, ncoils=2))
    assert ("PrepLoopOrder" in xml) == (order is not None) and ("PrepDummyShots" in xml) == (order is not None)
    got, _ = parse_header(xml)
    assert got == seq


def test_absent_fields_mean_the_closed_form_and_bad_values_are_errors():
    xml = header_to_xml(build_header(dataclasses.replace(HSEQ, prep_loop_order="shot-outer", prep_dummies=4),
                                     HGEOM, ncoils=2))
    # a header without the history lines is the paper's closed form
    hist = r"<userParameter(Long|Double|String)>\s*<name>(PrepLoopOrder|RecoveryDelay_ms|PrepDummyShots)</name>.*?"
    stripped, n = re.subn(hist + r"</userParameter\1>", "", xml, flags=re.S)
    assert n == 3
    seq, _ = parse_header(stripped)
    assert seq.prep_loop_order is None and seq.prep_dummies == 0 and seq.recovery_delay_ms == 0.0
    with pytest.raises(HeaderError, match="PrepLoopOrder"):
        parse_header(xml.replace(">shot-outer<", ">shots-first<"))
    bad = re.sub(r"(<name>PrepDummyShots</name>\s*<value>)4", r"\g<1>-1", xml)
    assert bad != xml
    with pytest.raises(HeaderError, match="PrepDummyShots"):
        parse_header(bad)

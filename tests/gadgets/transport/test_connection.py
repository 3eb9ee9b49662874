"""MRDConnection handshake and framing over a socketpair (no server, no processes)."""

from __future__ import annotations

import socket
import struct

import ismrmrd
import mrd_test_client as mc  # noqa: E402
import numpy as np
import pytest

from qmapinr.gadgets.transport.connection import (
    ClientDisconnected,
    MRDConnection,
    ProtocolError,
)

HEADER_XML = mc.HEADER_XML



def _acq(value: float) -> ismrmrd.Acquisition:
    return ismrmrd.Acquisition.from_array(np.full((2, 8), value, dtype=np.complex64))


_frames = mc.frames


def _connect(payload: bytes, shut: bool = False) -> tuple[MRDConnection, socket.socket]:
    server_side, client_side = socket.socketpair()
    client_side.sendall(payload)
    if shut:
        client_side.shutdown(socket.SHUT_WR)
    return MRDConnection(server_side, timeout=5), client_side


def test_config_file_id1_header_and_close():
    payload = _frames(("send_config_file", "/opt/configs/summit.xml"), ("send_header", HEADER_XML),
                      ("send_acquisition", _acq(1)), ("send_acquisition", _acq(2)), ("send_close",))
    conn, peer = _connect(payload)
    assert conn.chain_name == "summit" and conn.config is None and conn.parameters == {}
    assert conn.header.encoding[0].encodedSpace.matrixSize.x == 8
    values = [float(a.data[0, 0].real) for a in conn]
    assert values == [1.0, 2.0] and conn.ended_by == "close" and conn.counts[1008] == 2
    conn.close(linger=0)
    conn.close(linger=0)  # idempotent: CLOSE goes out once
    assert peer.recv(100) == struct.pack("<H", 4)


def test_config_text_stream_xml_with_nul_and_json_parameters():
    payload = _frames(("send_config_text", mc.STREAM_XML), ("send_header", HEADER_XML),
                      ("send_parameters", {"epochs": 2, "map_grid": {"n_levels": 4}, "verbose": True}),
                      ("send_acquisition", _acq(1)), ("send_text", "halfway"), ("send_acquisition", _acq(2)),
                      ("send_close",))
    conn, _ = _connect(payload)
    assert conn.chain_name == "summit"
    assert [(p.get("name"), p.get("value")) for p in conn.config.iter("property")] == [("epochs", "3")]
    assert conn.parameters == {"epochs": "2", "map_grid.n_levels": "4", "verbose": "true"}
    assert len(list(conn)) == 2 and conn.messages == ["halfway"] and conn.counts[5] == 1


def test_bare_name_in_config_text_and_no_parameters():
    conn, _ = _connect(_frames(("send_config_text", "lorein.xml"), ("send_header", HEADER_XML),
                               ("send_close",)))
    assert conn.chain_name == "lorein" and conn.config is None and list(conn) == []


def test_eof_without_close_is_a_disconnect_not_a_stream_end():
    payload = _frames(("send_config_text", "summit"), ("send_header", HEADER_XML),
                      ("send_acquisition", _acq(5)))
    partial = _frames(("send_acquisition", _acq(6)))[:40]  # the peer dies in the middle of a message
    conn, _ = _connect(payload + partial, shut=True)
    items = []
    with pytest.raises(ClientDisconnected, match="client closed"):
        for item in conn:
            items.append(item)
    assert len(items) == 1 and conn.ended_by is None
    conn2, _ = _connect(payload, shut=True)  # EOF between messages: no CLOSE, nothing is treated as a complete stream
    with pytest.raises(ClientDisconnected, match="without CLOSE after 1 acquisitions"):
        list(conn2)


def test_send_to_gone_client_raises_and_close_survives():
    conn, peer = _connect(_frames(("send_config_text", "summit"), ("send_header", HEADER_XML),
                                  ("send_close",)))
    peer.close()
    image = ismrmrd.Image.from_array(np.zeros((4, 8), np.float32))
    with pytest.raises(ClientDisconnected):
        for _ in range(50):  # the first writes may still be buffered by the kernel
            conn.send(image)
    conn.close()


@pytest.mark.parametrize(
    "steps, message",
    [
        ((("send_header", HEADER_XML),), "expected CONFIG_FILE (1) or CONFIG_TEXT (2)"),
        ((("send_config_text", "summit"), ("send_close",)), "expected HEADER (3)"),
        ((("send_config_text", "summit"), ("send_header", "<not a header/>")), "not a valid ISMRMRD header"),
        ((("send_config_text", "<configuration><stream/>"),), "neither a chain name nor valid XML"),
        ((("send_config_text", "<configuration><stream/></configuration>"),), "no <external><execute"),
        ((("send_config_text", "summit"), ("send_header", HEADER_XML), ("send_text", "{bad json")),
         "not valid JSON"),
        ((("send_config_text", "summit"), ("send_header", HEADER_XML), ("send_text", "[1, 2]")),
         "must be an object"),
    ],
)
def test_garbled_handshake_is_a_clear_error(steps, message):
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _connect(_frames(*steps))


def test_unknown_message_id_mid_stream():
    payload = _frames(("send_config_text", "summit"), ("send_header", HEADER_XML)) + struct.pack("<H", 777)
    conn, _ = _connect(payload)
    with pytest.raises(ProtocolError, match="unknown"):
        list(conn)


def test_disconnect_during_handshake():
    with pytest.raises(ClientDisconnected, match="before sending the header"):
        _connect(_frames(("send_config_text", "summit")), shut=True)


def test_half_closed_client_after_close_is_served_and_a_closed_one_is_not():
    payload = _frames(("send_config_text", "summit"), ("send_header", HEADER_XML), ("send_acquisition", _acq(1)),
                      ("send_close",))
    conn, peer = _connect(payload, shut=True)  # the client shut down its sending side but still reads
    assert len(list(conn)) == 1 and conn.ended_by == "close"
    conn.close(linger=0)
    received = peer.recv(1000)
    assert b"stream of 1 acquisitions received" in received and received.endswith(struct.pack("<H", 4))
    conn, peer = _connect(payload, shut=True)
    peer.close()  # the client left: the probe is answered by a reset
    with pytest.raises(ClientDisconnected, match="nobody to send maps to"):
        list(conn)

"""refvmd survives malformed RPC (issue 10): each case gets libvirt's error reply, or a closed connection where
libvirt's daemon closes it, and the daemon keeps serving other clients."""
from __future__ import annotations

import struct

import pytest

from tests.mgmt_daemon import KEEPALIVE, REMOTE, RawClient, Refvmd, decode_error, packet, xdr_string

VIR_ERR_RPC = 39
VIR_ERR_NO_CONNECT = 5
VIR_FROM_RPC = 7
REPLY, MESSAGE = 1, 2
STATUS_ERROR = 1
AUTH_LIST = 66
CONNECT_OPEN = 1


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Refvmd(tmp_path_factory.mktemp("refvmd"))
    d.start()
    yield d
    d.stop()


def still_serves(daemon: Refvmd) -> None:
    """The daemon is alive and answers a new client's AUTH_LIST with auth none."""
    assert daemon.alive()
    c = RawClient(daemon.socket)
    try:
        hdr, payload = c.call(AUTH_LIST)
        assert hdr == (REMOTE, 1, AUTH_LIST, REPLY, 1, 0)
        assert payload == struct.pack(">Ii", 1, 0)  # one auth type: REMOTE_AUTH_NONE
    finally:
        c.close()


def error_reply(c: RawClient, expect_hdr: tuple[int, ...]) -> tuple[int, int, str]:
    hdr, payload = c.recv()
    assert hdr == expect_hdr
    return decode_error(payload)


def test_socket_mode_is_0600_for_session(daemon):
    assert daemon.socket.stat().st_mode & 0o777 == 0o600


def test_unknown_program_gets_cannot_find_program(daemon):
    c = RawClient(daemon.socket)
    c.send(packet(0x12345678, 1, 5, serial=7))
    assert error_reply(c, (0x12345678, 1, 5, REPLY, 7, STATUS_ERROR)) == (
        VIR_ERR_RPC, VIR_FROM_RPC, "Cannot find program 305419896 version 1")
    hdr, _ = c.call(AUTH_LIST, serial=8)  # the connection stays usable
    assert hdr[3:] == (REPLY, 8, 0)
    c.close()
    still_serves(daemon)


def test_wrong_version_gets_cannot_find_program(daemon):
    c = RawClient(daemon.socket)
    c.send(packet(REMOTE, 2, AUTH_LIST, serial=3))
    assert error_reply(c, (REMOTE, 2, AUTH_LIST, REPLY, 3, STATUS_ERROR)) == (
        VIR_ERR_RPC, VIR_FROM_RPC, f"Cannot find program {REMOTE} version 2")
    c.close()
    still_serves(daemon)


@pytest.mark.parametrize("proc", [999999, -1, 26])
def test_unknown_procedure(daemon, proc):
    c = RawClient(daemon.socket)
    c.send(packet(REMOTE, 1, proc, serial=4))
    assert error_reply(c, (REMOTE, 1, proc, REPLY, 4, STATUS_ERROR)) == (
        VIR_ERR_RPC, VIR_FROM_RPC, f"unknown procedure: {proc}")
    c.close()
    still_serves(daemon)


@pytest.mark.parametrize("payload", [
    b"",                                     # CONNECT_OPEN without arguments
    struct.pack(">iI", 1, 0xFFFFFFF0),       # a string claiming 4 GiB
    struct.pack(">i", 7),                    # optional-pointer flag that is neither 0 nor 1
    struct.pack(">iI", 1, 3) + b"\xff\xfe",  # string shorter than its length
])
def test_garbage_xdr_gets_unable_to_decode(daemon, payload):
    c = RawClient(daemon.socket)
    c.send(packet(REMOTE, 1, CONNECT_OPEN, serial=9, payload=payload))
    assert error_reply(c, (REMOTE, 1, CONNECT_OPEN, REPLY, 9, STATUS_ERROR)) == (
        VIR_ERR_RPC, VIR_FROM_RPC, "Unable to decode message payload")
    c.close()
    still_serves(daemon)


@pytest.mark.parametrize("length", [0, 3, 27, 16777216 + 4 + 1, 0xFFFFFFFF])
def test_bad_length_closes_connection(daemon, length):
    """libvirt closes a client whose length word is below a header or above VIR_NET_MESSAGE_MAX."""
    c = RawClient(daemon.socket)
    c.send(struct.pack(">I", length) + b"\0" * 28)
    assert c.closed_by_peer()
    c.close()
    still_serves(daemon)


def test_truncated_packet_then_disconnect(daemon):
    c = RawClient(daemon.socket)
    c.send(packet(REMOTE, 1, AUTH_LIST)[:13])
    c.close()
    still_serves(daemon)


def test_unexpected_message_types_are_dropped(daemon):
    """REPLY and MESSAGE packets from a client get no answer (libvirt ignores them); the next call works."""
    c = RawClient(daemon.socket)
    c.send(packet(REMOTE, 1, AUTH_LIST, type_=REPLY, serial=1))
    c.send(packet(REMOTE, 1, AUTH_LIST, type_=MESSAGE, serial=2))
    hdr, _ = c.call(AUTH_LIST, serial=3)
    assert hdr == (REMOTE, 1, AUTH_LIST, REPLY, 3, 0)
    c.close()


def test_call_with_error_status(daemon):
    c = RawClient(daemon.socket)
    c.send(packet(REMOTE, 1, AUTH_LIST, status=1, serial=5))
    assert error_reply(c, (REMOTE, 1, AUTH_LIST, REPLY, 5, STATUS_ERROR)) == (
        VIR_ERR_RPC, VIR_FROM_RPC, "Unexpected message status 1")
    c.close()


def test_keepalive_ping_gets_pong(daemon):
    c = RawClient(daemon.socket)
    c.send(packet(KEEPALIVE, 1, 1, type_=MESSAGE, serial=0))
    assert c.recv() == ((KEEPALIVE, 1, 2, MESSAGE, 0, 0), b"")
    c.close()


def test_unknown_uri_is_no_connect(daemon):
    c = RawClient(daemon.socket)
    hdr, payload = c.call(CONNECT_OPEN, struct.pack(">i", 1) + xdr_string("bogus:///x") + struct.pack(">I", 0))
    assert hdr[5] == STATUS_ERROR
    assert decode_error(payload)[0] == VIR_ERR_NO_CONNECT
    c.close()


def test_calls_before_open_say_connection_not_open(daemon):
    c = RawClient(daemon.socket)
    hdr, payload = c.call(3)  # CONNECT_GET_TYPE
    assert hdr[5] == STATUS_ERROR
    assert decode_error(payload) == (1, VIR_FROM_RPC, "internal error: connection not open")
    c.close()


def test_many_clients_at_once(daemon):
    clients = [RawClient(daemon.socket) for _ in range(20)]
    for i, c in enumerate(clients):
        c.send(packet(REMOTE, 1, AUTH_LIST, serial=100 + i))
    for i, c in enumerate(clients):
        assert c.recv()[0] == (REMOTE, 1, AUTH_LIST, REPLY, 100 + i, 0)
        c.close()


def test_stream_packet_for_no_stream_is_ignored(daemon):
    """libvirt drops stream data that arrives after its stream closed; the connection goes on."""
    c = RawClient(daemon.socket)
    c.send(packet(REMOTE, 1, 201, type_=3, serial=77, status=2, payload=b"late data"))
    hdr, _ = c.call(AUTH_LIST, serial=78)
    assert hdr == (REMOTE, 1, AUTH_LIST, REPLY, 78, 0)
    c.close()


def test_client_leaving_mid_call_and_mid_packet(daemon):
    for data in (packet(REMOTE, 1, AUTH_LIST), struct.pack(">I", 1000) + b"\0" * 100):
        c = RawClient(daemon.socket)
        c.send(data)
        c.close()
    still_serves(daemon)


def test_sigterm_removes_socket_and_exits_zero(tmp_path):
    d = Refvmd(tmp_path)
    d.start()
    c = RawClient(d.socket)  # a connected client must not keep the daemon alive
    d.proc.terminate()
    assert d.proc.wait(15) == 0
    assert not d.socket.exists()
    c.close()


def test_session_daemon_refuses_system_uris(daemon):
    c = RawClient(daemon.socket)
    hdr, payload = c.call(CONNECT_OPEN, struct.pack(">i", 1) + xdr_string("refvm:///system") + struct.pack(">I", 0))
    assert hdr[5] == STATUS_ERROR
    assert decode_error(payload)[:2] == (VIR_ERR_NO_CONNECT, 0)
    c.close()

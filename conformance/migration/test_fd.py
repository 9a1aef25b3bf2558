"""fd:NAME migration URIs: each side gets one end of a socket pair through `getfd` (SCM_RIGHTS on QMP)."""

from __future__ import annotations

import array
import json
import socket

import pytest

from conformance.migration.conftest import wait_status


def _getfd(session, name: str, sock: socket.socket) -> None:  # noqa: ANN001
    """QMP getfd with the descriptor attached to the command (what libvirt does)."""
    line = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode() + b"\n"
    session.qmp.sock.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))])
    reply = session.qmp._read()
    while "event" in reply:
        session.qmp.events.append(reply)
        reply = session.qmp._read()
    assert reply == {"return": {}}, f"getfd {name}: {reply} "


@pytest.mark.clause("refvm-migration", "migrate/fd")
def test_migrate_over_passed_descriptors(vm) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    out, into = socket.socketpair()
    try:
        _getfd(src, "migout", out)
        _getfd(dst, "migin", into)
    finally:
        out.close()
        into.close()
    src.write(0x6000, b"through a passed fd")
    dst.qmp.execute("migrate-incoming", uri="fd:migin")
    src.qmp.execute("migrate", uri="fd:migout")
    wait_status(src, "completed")
    wait_status(dst, "completed")
    assert dst.read(0x6000, 19) == b"through a passed fd"
    err = src.qmp.request("migrate", uri="fd:migout")["error"]["desc"]
    assert err == "Can't migrate the vm that was paused due to previous migration"
    src.qmp.execute("cont")
    err = src.qmp.request("migrate", uri="fd:migout")["error"]["desc"]
    assert err == "File descriptor named 'migout' has not been found", "migrate takes the descriptor it uses"

"""QMP server: QEMU 7.2 wire behaviour, driven by the `qemu.qmp` library and by raw socket JSON.

The error texts and reply shapes for a script of good and bad requests are compared with a
running QEMU 7.2 (timestamps aside).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from refvm.monitor.qmp import JsonStreamer, QmpError, QmpMachineCommands, QmpServer
from tests.conftest import require

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "refvm-0.1.0"}, '
    b'"capabilities": ["oob"]}}\r\n'
)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """close() must join every service thread it started."""
    yield
    deadline = time.monotonic() + 5
    while any(t.name.startswith("refvm-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t.name for t in threading.enumerate() if t.name.startswith("refvm-")] == []


class RunState:
    """A tiny machine with QEMU's run states, for the run-state commands."""

    def __init__(self, name: str | None = "vm1") -> None:
        self.name = name
        self.state = "prelaunch"
        self.resets = 0
        self.quit_called = threading.Event()
        self.server: QmpServer | None = None

    def status(self) -> str:
        return self.state

    def pause(self) -> None:
        self.state = "paused"

    def resume(self) -> None:
        self.state = "running"

    def reset(self) -> None:
        self.resets += 1

    def quit(self) -> None:
        self.quit_called.set()
        if self.server is not None:
            self.server.close()  # as the VMM would on its way out: from inside the handler


class RawClient:
    """JSON lines over a plain socket, events kept aside."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buf = b""
        self.events: list[dict[str, Any]] = []

    def raw_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def reply(self) -> dict[str, Any]:
        while True:
            msg = json.loads(self.raw_line())
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def send(self, data: bytes | str | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data)
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def cmd(self, name: str, arguments: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": name, **extra}
        if arguments is not None:
            msg["arguments"] = arguments
        self.send(msg)
        return self.reply()

    def negotiate(self) -> None:
        assert self.raw_line() == GREETING
        assert self.cmd("qmp_capabilities") == {"return": {}}

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def qmp(tmp_path: Path) -> Iterator[tuple[QmpServer, RunState, str]]:
    path = str(tmp_path / "qmp.sock")
    server = QmpServer(path, server=True)
    machine = RunState()
    machine.server = server
    QmpMachineCommands(server, machine)

    def throttle(args: dict[str, Any]) -> object:
        return {"echo": args}

    def broken(args: dict[str, Any]) -> object:
        raise RuntimeError("device went away")

    def refused(args: dict[str, Any]) -> object:
        raise QmpError("Device 'x' not found", "DeviceNotFound")

    server.register("x-throttle", throttle, args={"*device": str, "*id": str, "bps": int, "ratio": float,
                                                   "on": bool, "*opt": (str, type(None))})  # fmt: skip
    server.register("x-broken", broken)
    server.register("x-refused", refused)
    server.start()
    yield server, machine, path
    server.close()


def _strip_times(msg: dict[str, Any]) -> dict[str, Any]:
    if "timestamp" in msg:
        ts = msg["timestamp"]
        assert set(ts) == {"seconds", "microseconds"} and abs(ts["seconds"] - time.time()) < 60
        assert 0 <= ts["microseconds"] < 1_000_000
        msg = {**msg, "timestamp": "T"}
    return msg


# ---- raw wire behaviour ---------------------------------------------------------------------------------


def test_greeting_and_negotiation_gate(qmp: tuple[QmpServer, RunState, str]) -> None:
    _, _, path = qmp
    c = RawClient(path)
    assert c.raw_line() == GREETING
    gate = {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}
    assert c.cmd("query-status") == {"error": gate}
    assert c.cmd("nope", id=7) == {"id": 7, "error": gate}
    c.send('{"execute":"query-status","id":7}')
    assert c.raw_line() == (
        b'{"id": 7, "error": {"class": "CommandNotFound", "desc": '
        b"\"Expecting capabilities negotiation with 'qmp_capabilities'\"}}\r\n"
    )
    assert c.cmd("qmp_capabilities", {"enable": ["nope"]}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'nope'"}
    }
    assert c.cmd("qmp_capabilities", {"enable": ["oob"]}) == {"return": {}}
    assert c.cmd("qmp_capabilities") == {
        "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}
    }
    c.send('{"execute":"query-status","id":"x"}')
    assert c.raw_line() == b'{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": "x"}\r\n'
    c.close()


def test_unknown_command_bad_args_and_id_echo(qmp: tuple[QmpServer, RunState, str]) -> None:
    _, _, path = qmp
    c = RawClient(path)
    c.negotiate()
    assert c.cmd("nope", id=1) == {
        "id": 1, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}
    }  # fmt: skip
    ok = {"bps": 1, "ratio": 2, "on": True}
    assert c.cmd("x-throttle", ok, id=[1, {"a": 2}]) == {"return": {"echo": ok}, "id": [1, {"a": 2}]}
    bad = {
        "Parameter 'bps' is missing": {"ratio": 1.0, "on": False},
        "Invalid parameter type for 'id', expected: string": {"id": 1, "bps": 1},
        "Invalid parameter type for 'bps', expected: integer": {"bps": True, "ratio": 1.0, "on": True},
        "Invalid parameter type for 'on', expected: boolean": {"bps": 1, "ratio": 1.0, "on": 1},
        "Invalid parameter type for 'opt', expected: string or null": {**ok, "opt": 3},
        "Parameter 'foo' is unexpected": {**ok, "foo": 1},
    }
    for desc, args in bad.items():
        assert c.cmd("x-throttle", args) == {"error": {"class": "GenericError", "desc": desc}}
    assert c.cmd("x-throttle", {**ok, "opt": None})["return"]["echo"]["opt"] is None
    assert c.cmd("query-status", {"foo": 1}) == {"error": {"class": "GenericError",
                                                           "desc": "Parameter 'foo' is unexpected"}}  # fmt: skip
    assert c.cmd("x-refused", id="r") == {"id": "r", "error": {"class": "DeviceNotFound",
                                                               "desc": "Device 'x' not found"}}  # fmt: skip
    assert c.cmd("x-broken") == {"error": {"class": "GenericError", "desc": "RuntimeError: device went away"}}
    assert c.cmd("query-name") == {"return": {"name": "vm1"}}
    c.close()


def test_malformed_json_keeps_the_connection(qmp: tuple[QmpServer, RunState, str]) -> None:
    _, _, path = qmp
    c = RawClient(path)
    c.negotiate()

    def err(desc: str) -> dict[str, Any]:
        return {"error": {"class": "GenericError", "desc": desc}}

    cases = {
        '{"bad": tru}': err("JSON parse error, invalid keyword 'tru'"),
        "[1]": err("QMP input must be a JSON object"),
        '"s"': err("QMP input must be a JSON object"),
        '{"foo":1}': err("QMP input member 'foo' is unexpected"),
        '{"execute":1}': err("QMP input member 'execute' must be a string"),
        '{"execute":"query-status","arguments":[]}': err("QMP input member 'arguments' must be an object"),
        '{"execute":"quit","arguments":null}': err("QMP input member 'arguments' must be an object"),
        '{"id":5}': {"id": 5, **err("QMP input lacks member 'execute'")},
        '{"execute":"query-status","id":1,"extra":2}': {"id": 1, **err("QMP input member 'extra' is unexpected")},
        '{"a": 1,}': err("JSON parse error, expecting property name enclosed in double quotes"),
        "}": err("JSON parse error, stray '}'"),
        '{"a": NaN}': err("JSON parse error, invalid keyword 'NaN'"),
        '{"bad json\n': err("JSON parse error, invalid control character in string"),
        b'{"x": "\xff"}': err("JSON parse error, invalid UTF-8 sequence in string"),
        "[" * 1100: err("JSON nesting depth limit exceeded"),
    }
    for text, expected in cases.items():
        c.send(text)
        assert c.reply() == expected, text
    c.buf = b""
    # the nesting overflow left 75 '[' open in the fresh streamer: close them and carry on
    c.send("]" * 75)
    assert c.reply() == err("QMP input must be a JSON object")
    assert c.cmd("query-status")["return"]["status"] == "prelaunch"
    c.close()


def test_split_and_batched_json(qmp: tuple[QmpServer, RunState, str]) -> None:
    _, _, path = qmp
    c = RawClient(path)
    c.negotiate()
    msg = b'{"execute": "query-name", "id": "split{[\\"]}"}'
    for byte in msg:  # one byte per send, braces inside strings included
        c.send(bytes([byte]))
        time.sleep(0.0005)
    assert c.reply() == {"return": {"name": "vm1"}, "id": 'split{[\\"]}'.replace("\\", "")}
    c.send('{"execute":"query-status","id":1}{"execute":"query-name","id":2}\n  {"execute":"nope","id":3}')
    assert [c.reply().get("id") for _ in range(3)] == [1, 2, 3]
    c.close()


def test_streamer_units() -> None:
    s = JsonStreamer()
    assert s.feed(b'{"a": [1, {"b": "}"}]} 42 "x" true') == [
        (b'{"a": [1, {"b": "}"}]}', None), (b"42", None), (b'"x"', None)
    ]  # fmt: skip
    assert s.feed(b"\n") == [(b"true", None)]


def test_events_reach_every_negotiated_client(qmp: tuple[QmpServer, RunState, str]) -> None:
    server, machine, path = qmp
    a, b, late = RawClient(path), RawClient(path), RawClient(path)
    a.negotiate()
    b.negotiate()
    assert late.raw_line() == GREETING  # not negotiated: gets no events
    assert a.cmd("stop") == {"return": {}}  # prelaunch -> paused: no STOP, as QEMU
    assert a.cmd("cont") == {"return": {}}
    assert a.cmd("cont") == {"return": {}}  # already running: no event
    assert a.cmd("stop") == {"return": {}}
    assert a.cmd("system_reset") == {"return": {}}
    server.emit_event("X_CUSTOM", {"n": 1})
    assert b.cmd("query-status") == {"return": {"status": "paused", "singlestep": False, "running": False}}
    assert a.cmd("query-name") == {"return": {"name": "vm1"}}  # after the event: a has read it too
    expected = [
        {"timestamp": "T", "event": "RESUME"},
        {"timestamp": "T", "event": "STOP"},
        {"timestamp": "T", "event": "RESET", "data": {"guest": False, "reason": "host-qmp-system-reset"}},
        {"timestamp": "T", "event": "X_CUSTOM", "data": {"n": 1}},
    ]
    assert [_strip_times(e) for e in a.events] == expected
    assert [_strip_times(e) for e in b.events] == expected
    assert machine.resets == 1
    late.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        late.sock.recv(1)
    for c in (a, b, late):
        c.close()


def test_quit_replies_then_closes(qmp: tuple[QmpServer, RunState, str]) -> None:
    _, machine, path = qmp
    c = RawClient(path)
    c.negotiate()
    assert c.cmd("quit", id=9) == {"return": {}, "id": 9}
    assert machine.quit_called.is_set()
    assert [_strip_times(e) for e in c.events] == [
        {"timestamp": "T", "event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}}
    ]
    with pytest.raises(EOFError):
        c.raw_line()
    c.close()


# ---- qemu.qmp, unchanged ------------------------------------------------------------------------------


def test_qemu_qmp_library_drives_refvm(qmp: tuple[QmpServer, RunState, str]) -> None:
    _, machine, path = qmp

    async def session() -> None:
        one, two = QMPClient("one"), QMPClient("two")
        await one.connect(path)
        await two.connect(path)
        try:
            assert await one.execute("query-version") == {
                "qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "refvm-0.1.0"
            }  # fmt: skip
            names = {c["name"] for c in await one.execute("query-commands")}
            assert {"qmp_capabilities", "query-status", "stop", "cont", "system_reset", "quit"} <= names
            assert (await one.execute("query-status"))["status"] == "prelaunch"
            await one.execute("cont")
            event = await asyncio.wait_for(two.events.get(), 5)
            assert event["event"] == "RESUME"
            assert (await two.execute("query-status"))["running"] is True
            with pytest.raises(ExecuteError) as info:
                await one.execute("nope")
            assert info.value.error_class == "CommandNotFound"
            assert str(info.value) == "The command nope has not been found"
            with pytest.raises(ExecuteError) as info:
                await one.execute("query-status", oob=True)  # oob was negotiated: a real OOB refusal
            assert str(info.value) == "The command query-status does not support OOB"
            await one.execute("stop")
            first = await asyncio.wait_for(one.events.get(), 5)
            event = await asyncio.wait_for(one.events.get(), 5)
            assert first["event"] == "RESUME"  # events go to every client, this one included
            assert event["event"] == "STOP" and "data" not in event
        finally:
            await one.disconnect()
            await two.disconnect()

    asyncio.run(asyncio.wait_for(session(), 10))
    assert machine.state == "paused"


def test_client_mode_dials_out(tmp_path: Path) -> None:
    path = str(tmp_path / "mon.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(5)
    server = QmpServer(path, server=False)  # -chardev socket,path=P (no server=on): refvm connects
    try:
        server.start()
        conn, _ = listener.accept()
        conn.settimeout(5)
        data = b""
        while not data.endswith(b"\r\n"):
            data += conn.recv(4096)
        assert data == GREETING
        conn.close()
    finally:
        server.close()
        listener.close()


# ---- differential check against QEMU 7.2 ----------------------------------------------------------------

DIFF_SCRIPT = [
    '{"execute":"query-status","id":7}', '{"execute":"nope"}', '{"execute":"qmp_capabilities"}',
    '{"execute":"qmp_capabilities"}', '{"execute":"query-status","id":"x"}', '{"execute":"nope","id":1}',
    '{"execute":"query-status","arguments":{"foo":1}}', '{"foo":1}', '{"execute":1}',
    '{"execute":"query-status","arguments":[]}', "[1]", '"s"', '{"bad": tru}', '{"execute":"query-name","id":[1]}',
    '{"exec-oob":"query-name","id":3}', '{"execute":"stop"}', '{"execute":"cont"}', '{"execute":"cont"}',
    '{"execute":"query-status"}', '{"execute":"stop"}', '{"execute":"system_reset"}',
    '{"execute":"query-status","id":1,"extra":2}', '{"execute":"query-version","id":"v"}',
]  # fmt: skip


def _run_script(path: str, script: list[str]) -> list[list[dict[str, Any]]]:
    """Each request's messages (events then the reply), timestamps and version numbers masked."""
    c = RawClient(path)
    c.raw_line()
    out = []
    for text in script:
        c.send(text)
        reply = c.reply()
        if "return" in reply and isinstance(reply["return"], dict) and "package" in reply["return"]:
            reply["return"] = "VERSION"
        out.append([_strip_times(e) for e in c.events] + [reply])
        c.events.clear()
    c.close()
    return out


def test_replies_match_qemu(qmp: tuple[QmpServer, RunState, str], tmp_path: Path) -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    sock = str(tmp_path / "qemu-qmp.sock")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-S", "-qmp", f"unix:{sock},server=on,wait=off",
            "-nodefaults", "-display", "none", "-m", "16", "-name", "vm1"]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                expected = _run_script(sock, DIFF_SCRIPT)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    got = _run_script(qmp[2], DIFF_SCRIPT)
    assert got == expected

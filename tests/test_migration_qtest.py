"""RAM migration between two real refvm processes under -accel qtest, driven over QMP with QEMU's commands."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refvm.migration.stream import read_stream

PATTERN = [(0x0, b"first page"), (0x7000, bytes(range(256)) * 16), (0x123456, b"\xde\xad\xbe\xef"),
           (0x1FFFFEF, b"last bytes of RAM")]


class Line:
    """One line-oriented socket (qtest or QMP)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        self.sock, self.f = sock, sock.makefile("rwb")

    def send(self, text: str) -> None:
        self.f.write(text.encode() + b"\n")
        self.f.flush()

    def line(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise EOFError("peer closed")
        return raw.decode().strip()


class Qmp(Line):
    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline, f"no QMP socket {path}"
            time.sleep(0.05)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        super().__init__(sock)
        self.events: list[dict] = []
        self.line()
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args) -> dict:
        self.send(json.dumps({"execute": name, "arguments": args}))
        while True:
            msg = json.loads(self.line())
            if "event" in msg:
                self.events.append(msg)
            else:
                return msg

    def wait_status(self, want: str) -> dict:
        deadline = time.monotonic() + 60
        while (reply := self.cmd("query-migrate")["return"]).get("status") != want:
            assert reply.get("status") != "failed", reply
            assert time.monotonic() < deadline, reply
            time.sleep(0.05)
        return reply


class Vm:
    """A refvm process under -accel qtest; the test listens on the qtest socket (refvm dials it)."""

    def __init__(self, tmp: Path, name: str, *extra: str) -> None:
        qtest_path, self.qmp_path = tmp / f"{name}.qtest", tmp / f"{name}.qmp"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(qtest_path))
        listener.listen(1)
        listener.settimeout(60)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refvm", "-accel", "qtest", "-qtest", f"unix:{qtest_path}", "-m", "32",
             "-qmp", f"unix:{self.qmp_path},server=on,wait=off", "-watchdog-timeout", "120", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        conn, _ = listener.accept()
        listener.close()
        self.qtest = Line(conn)
        self.qmp = Qmp(self.qmp_path)

    def qt(self, text: str) -> str:
        self.qtest.send(text)
        while (reply := self.qtest.line()).startswith("IRQ"):
            pass
        return reply

    def write(self, addr: int, data: bytes) -> None:
        assert self.qt(f"write {addr:#x} {len(data):#x} 0x{data.hex()}") == "OK"

    def read(self, addr: int, length: int) -> bytes:
        reply = self.qt(f"read {addr:#x} {length:#x}")
        assert reply.startswith("OK 0x"), reply
        return bytes.fromhex(reply[5:])

    def close(self) -> str:
        self.qmp.f.close()
        self.qmp.sock.close()
        self.qtest.f.close()
        self.qtest.sock.close()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode()


@pytest.fixture
def pair(tmp_path: Path):
    mig = tmp_path / "mig.sock"
    dst = Vm(tmp_path, "dst", "-incoming", f"unix:{mig}")
    src = Vm(tmp_path, "src")
    yield src, dst, mig
    src.close()
    dst.close()


def test_ram_written_over_qtest_reads_back_on_destination(pair) -> None:
    src, dst, mig = pair
    assert dst.qmp.cmd("query-status")["return"]["status"] == "inmigrate"
    for addr, data in PATTERN:
        src.write(addr, data)
    assert src.qt("outb 0xcf9 0x2") == "OK"  # the Reset Control Register: the next reset is a hard one
    src.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
    assert src.qmp.cmd("migrate", uri=f"unix:{mig}") == {"return": {}}
    done = src.qmp.wait_status("completed")
    assert done["ram"]["total"] == 32 << 20
    assert done["ram"]["normal"] >= 4 and done["ram"]["duplicate"] > 8000
    dst.qmp.wait_status("completed")
    for addr, data in PATTERN:
        assert dst.read(addr, len(data)) == data, hex(addr)
    assert dst.qt("inb 0xcf9") == "OK 0x0002"  # (0 when not carried)
    assert src.qmp.cmd("query-status")["return"]["status"] == "postmigrate"
    assert dst.qmp.cmd("query-status")["return"]["status"] == "running"
    statuses = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
    assert statuses == ["setup", "active", "device", "completed"]
    assert [e["data"]["pass"] for e in src.qmp.events if e["event"] == "MIGRATION_PASS"] == [1, 2]


def test_exec_and_defer(tmp_path: Path) -> None:
    """The source writes to a file through exec:, a -incoming defer destination reads it through exec:."""
    src = Vm(tmp_path, "src")
    dst = Vm(tmp_path, "dst", "-incoming", "defer", "-S")
    try:
        src.write(0x5000, b"through a file")
        stream = tmp_path / "stream.bin"
        assert src.qmp.cmd("migrate", uri=f"exec:cat > {stream}") == {"return": {}}
        src.qmp.wait_status("completed")
        parsed = read_stream(stream.read_bytes())  # refvm's stream, in QEMU's framing
        assert parsed.ram.blocks == {"pc.ram": 32 << 20}
        assert {d["vmsd_name"] for d in parsed.vmdesc["devices"]} >= {"mc146818rtc"}
        assert dst.qmp.cmd("migrate-incoming", uri=f"exec:cat {stream}") == {"return": {}}
        dst.qmp.wait_status("completed")
        assert dst.read(0x5000, 14) == b"through a file"
        assert dst.qmp.cmd("query-status")["return"]["status"] == "paused"  # -S: stays stopped
        assert dst.qmp.cmd("migrate-incoming", uri="unix:/x")["error"]["desc"] == \
            "The incoming migration has already been started"
    finally:
        src.close()
        dst.close()


def test_errors_and_refused_destination(tmp_path: Path) -> None:
    src = Vm(tmp_path, "src")
    try:
        qmp = src.qmp
        assert qmp.cmd("query-migrate") == {"return": {}}
        bad_uri = qmp.cmd("migrate", uri="foo:bar")["error"]["desc"]
        assert bad_uri == "Parameter 'uri' expects a valid migration protocol"
        assert "block migration" in qmp.cmd("migrate", uri="exec:cat", blk=True)["error"]["desc"]
        assert qmp.cmd("migrate-incoming", uri="unix:/x")["error"]["desc"] == \
            "'-incoming' was not specified on the command line"
        assert qmp.cmd("migrate", uri=f"unix:{tmp_path}/nobody") == {"return": {}}
        failed = qmp.cmd("query-migrate")["return"]
        assert failed["status"] == "failed"
        assert failed["error-desc"].startswith(f"Failed to connect to '{tmp_path}/nobody'")
        assert qmp.cmd("query-status")["return"]["status"] == "running"
    finally:
        src.close()


def test_corrupted_stream_fails_destination_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0dpc-i440fx-7.2\x01\x00\x00\x00\x00\x03ram")
    dst = Vm(tmp_path, "dst", "-incoming", "defer")
    assert dst.qmp.cmd("migrate-incoming", uri=f"exec:cat {bad}") == {"return": {}}
    dst.proc.wait(timeout=30)  # the destination ends by itself
    err = dst.close()
    assert dst.proc.returncode == 1
    lines = [ln for ln in err.splitlines() if "migration" in ln]
    assert len(lines) == 1 and "section id 0: field 'instance id'" in lines[0], err


def test_cancel_resumes_source(tmp_path: Path) -> None:
    """A destination that does not read (the pipe fills) keeps the migration active until migrate_cancel."""
    src = Vm(tmp_path, "src")
    try:
        src.write(0x1000, b"still here")
        src.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        assert src.qmp.cmd("migrate", uri="exec:sleep 30") == {"return": {}}
        src.qmp.wait_status("active")
        assert src.qmp.cmd("query-status")["return"]["status"] == "running"  # RAM goes while the guest runs
        assert src.qmp.cmd("migrate", uri="exec:cat")["error"]["desc"] == "There's a migration process in progress"
        assert src.qmp.cmd("migrate_cancel") == {"return": {}}
        src.qmp.wait_status("cancelled")
        assert src.qmp.cmd("query-status")["return"]["status"] == "running"
        assert src.read(0x1000, 10) == b"still here"
        statuses = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
        assert statuses == ["setup", "active", "cancelling", "cancelled"]
    finally:
        src.close()


def test_tcp(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dst = Vm(tmp_path, "dst", "-incoming", f"tcp:127.0.0.1:{port}")
    src = Vm(tmp_path, "src")
    try:
        src.write(0x9000, b"over tcp")
        assert src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}") == {"return": {}}
        src.qmp.wait_status("completed")
        dst.qmp.wait_status("completed")
        assert dst.read(0x9000, 8) == b"over tcp"
    finally:
        src.close()
        dst.close()


@pytest.mark.parametrize("args,message", [
    (["-incoming", "foo:bar", "-accel", "qtest", "-qtest", "unix:/x"],
     "refvm: -incoming foo:bar: unknown migration protocol: foo:bar"),
    (["-incoming", "fd:abc", "-accel", "qtest", "-qtest", "unix:/x"],
     "refvm: -incoming fd:abc: Invalid file descriptor number 'abc'"),
    (["-incoming", "unix:/nonexistent/m.sock", "-kernel", __file__, "-display", "none"],
     "refvm: -incoming unix:/nonexistent/m.sock: Failed to bind socket: No such file or directory"),
])
def test_bad_incoming_is_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "refvm", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and proc.stderr.strip() == message, proc.stderr

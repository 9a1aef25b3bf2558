"""Chardev backends over real files, ptys and sockets; QEMU-spelled option parsing."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import pytest

from refvm.devices.chardev import (
    ChardevSpec,
    FileChardev,
    NullChardev,
    PtyChardev,
    SocketChardev,
    StdioChardev,
    open_chardev,
    parse_chardev_option,
    parse_serial_option,
)


class Inbox:
    """Collects host->guest bytes delivered on the backend's thread."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.cond = threading.Condition()

    def __call__(self, chunk: bytes) -> None:
        with self.cond:
            self.data += chunk
            self.cond.notify_all()

    def wait_for(self, expected: bytes, timeout: float = 3.0) -> bytes:
        with self.cond:
            self.cond.wait_for(lambda: len(self.data) >= len(expected), timeout)
            return bytes(self.data)


def read_exactly(fd: int, n: int, timeout: float = 3.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            out += os.read(fd, n - len(out))
    return out


# ------------------------------------------------------------------------------- backends
def test_file_chardev_writes_land_in_file(tmp_path) -> None:
    path = tmp_path / "out.txt"
    path.write_bytes(b"old contents")
    with open_chardev(f"file,id=f0,path={path}") as ch:
        assert isinstance(ch, FileChardev)
        ch.write(b"hello ")
        ch.write(b"world\n")
        assert path.read_bytes() == b"hello world\n"  # unbuffered, truncated on open


def test_file_chardev_append(tmp_path) -> None:
    path = tmp_path / "out.txt"
    path.write_bytes(b"A")
    ch = open_chardev(parse_chardev_option(f"file,id=f0,path={path},append=on"))
    ch.write(b"B")
    ch.close()
    ch.close()  # idempotent
    assert path.read_bytes() == b"AB"


def test_null_chardev() -> None:
    ch = open_chardev("null,id=n0")
    assert isinstance(ch, NullChardev)
    inbox = Inbox()
    ch.set_receiver(inbox)
    ch.write(b"gone")
    ch.close()
    assert inbox.data == b""


def test_logfile_copies_output(tmp_path) -> None:
    log = tmp_path / "log"
    ch = open_chardev(f"null,id=n0,logfile={log}")
    ch.write(b"abc")
    ch.close()
    assert log.read_bytes() == b"abc"


def test_pty_chardev_both_ways(capfd) -> None:
    ch = open_chardev("pty,id=ser0")
    assert isinstance(ch, PtyChardev)
    assert f"char device redirected to {ch.path} (label ser0)" in capfd.readouterr().err
    inbox = Inbox()
    ch.set_receiver(inbox)
    fd = os.open(ch.path, os.O_RDWR | os.O_NOCTTY)
    try:
        ch.write(b"guest says hi\n")
        assert read_exactly(fd, 14) == b"guest says hi\n"  # raw: no \r inserted
        os.write(fd, b"typed\r")
        assert inbox.wait_for(b"typed\r") == b"typed\r"
    finally:
        os.close(fd)
        ch.close()


def test_pty_output_before_client_is_kept_and_overflow_drops(tmp_path) -> None:
    ch = PtyChardev("p", announce=False)
    try:
        ch.write(b"early")
        fd = os.open(ch.path, os.O_RDWR | os.O_NOCTTY)
        assert read_exactly(fd, 5) == b"early"
        os.close(fd)
        t0 = time.monotonic()
        ch.write(b"x" * (1 << 20))  # nobody reads: must not block the vCPU
        assert time.monotonic() - t0 < 2 and ch.dropped > 0
    finally:
        ch.close()


def test_socket_chardev_connect_and_both_directions(tmp_path) -> None:
    path = str(tmp_path / "serial.sock")
    ch = open_chardev(f"socket,id=s0,path={path},server=on,wait=off")
    assert isinstance(ch, SocketChardev)
    inbox = Inbox()
    ch.set_receiver(inbox)
    ch.write(b"dropped: nobody connected")
    cli = socket.socket(socket.AF_UNIX)
    cli.connect(path)
    cli.settimeout(3)
    try:
        deadline = time.monotonic() + 3
        while not ch.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ch.connected
        ch.write(b"to client")
        assert cli.recv(100) == b"to client"
        cli.sendall(b"to guest")
        assert inbox.wait_for(b"to guest") == b"to guest"
    finally:
        cli.close()
    # disconnect, reconnect: a new client is accepted
    deadline = time.monotonic() + 3
    while ch.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    cli2 = socket.socket(socket.AF_UNIX)
    cli2.connect(path)
    cli2.sendall(b"!")
    assert inbox.wait_for(b"to guest!") == b"to guest!"
    cli2.close()
    ch.close()
    assert not os.path.exists(path)


def test_socket_chardev_tcp_client_mode() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    ch = open_chardev(f"socket,id=t,host=127.0.0.1,port={port}")
    conn, _ = srv.accept()
    conn.settimeout(3)
    ch.write(b"ping")
    assert conn.recv(4) == b"ping"
    inbox = Inbox()
    ch.set_receiver(inbox)
    conn.sendall(b"pong")
    assert inbox.wait_for(b"pong") == b"pong"
    conn.close()
    srv.close()
    ch.close()


def test_input_before_receiver_is_kept(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    ch = SocketChardev(path=path, server=True, wait=False, label="s")
    cli = socket.socket(socket.AF_UNIX)
    cli.connect(path)
    cli.sendall(b"early bytes")
    time.sleep(0.2)
    inbox = Inbox()
    ch.set_receiver(inbox)
    assert inbox.wait_for(b"early bytes") == b"early bytes"
    cli.close()
    ch.close()


def test_stdio_chardev_on_a_pty_raw_mode_and_restore() -> None:
    import termios

    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    ch = StdioChardev("con", in_fd=slave, out_fd=slave)
    inbox = Inbox()
    ch.set_receiver(inbox)
    raw = termios.tcgetattr(slave)
    assert not raw[3] & termios.ECHO and not raw[3] & termios.ICANON and raw[3] & termios.ISIG
    os.write(master, b"a\r")  # no line buffering, no CR->NL mapping
    assert inbox.wait_for(b"a\r") == b"a\r"
    ch.write(b"out\n")
    assert read_exactly(master, 5) == b"out\r\n"  # OPOST kept like QEMU
    ch.close()
    assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)


def test_stdio_mux_ctrl_a_x_quits() -> None:
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    quit_called = threading.Event()
    ch = StdioChardev("mon", mux=True, on_quit=quit_called.set, in_fd=r, out_fd=out_w)
    inbox = Inbox()
    ch.set_receiver(inbox)
    os.write(w, b"ab\x01\x01c\x01x")
    assert quit_called.wait(3)
    assert inbox.wait_for(b"ab\x01c") == b"ab\x01c"
    ch.close()
    for fd in (r, w, out_r, out_w):
        os.close(fd)


# ------------------------------------------------------------------------------- parsing
def test_parse_chardev_variants() -> None:
    assert parse_chardev_option("stdio,id=x") == ChardevSpec("stdio", id="x")
    assert parse_chardev_option("null,id=n") == ChardevSpec("null", id="n")
    assert parse_chardev_option("pty,id=p") == ChardevSpec("pty", id="p")
    f = parse_chardev_option("file,id=x,path=/tmp/a,,b")
    assert f.path == "/tmp/a,b"  # ',,' escapes a comma as in QEMU
    s = parse_chardev_option("socket,id=x,path=/tmp/s,server=on,wait=off")
    assert (s.backend, s.path, s.server, s.wait) == ("socket", "/tmp/s", True, False)
    legacy = parse_chardev_option("socket,id=x,path=/tmp/s,server,nowait")
    assert legacy.server and not legacy.wait
    t = parse_chardev_option("socket,id=x,host=localhost,port=4444,server=on,wait=off")
    assert (t.host, t.port) == ("localhost", 4444)
    assert parse_chardev_option("stdio,id=x,mux=on,signal=off").mux


@pytest.mark.parametrize(
    "text,field",
    [
        ("file,id=x", "path"),
        ("stdio", "id"),
        ("bogus,id=x", "bogus"),
        ("file,id=x,path=/a,colour=red", "colour"),
        ("socket,id=x,path=/s,server=maybe", "server"),
        ("socket,id=x", "path"),
        ("socket,id=x,host=h,port=99999", "port"),
        ("pty,id=x,path=/dev/x", "path"),
    ],
)
def test_parse_chardev_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_chardev_option(text)
    msg = str(ei.value)
    assert msg.startswith(f"-chardev {text}: ") and field in msg and "\n" not in msg


def test_parse_serial_variants() -> None:
    assert parse_serial_option("stdio") == ChardevSpec("stdio", id="serial0")
    mon = parse_serial_option("mon:stdio")
    assert mon.backend == "stdio" and mon.mux and mon.monitor
    assert parse_serial_option("null", 1) == ChardevSpec("null", id="serial1")
    assert parse_serial_option("none").backend == "none"
    assert parse_serial_option("pty").backend == "pty"
    assert parse_serial_option("file:/tmp/x.log").path == "/tmp/x.log"
    u = parse_serial_option("unix:/tmp/s.sock,server=on,wait=off")
    assert (u.backend, u.path, u.server, u.wait) == ("socket", "/tmp/s.sock", True, False)
    tcp = parse_serial_option("tcp:127.0.0.1:5555,server,nowait")
    assert (tcp.host, tcp.port, tcp.server, tcp.wait) == ("127.0.0.1", 5555, True, False)
    c = parse_serial_option("chardev:foo")
    assert (c.backend, c.id) == ("chardev", "foo")


@pytest.mark.parametrize(
    "text,field", [("vc", "vc"), ("file:", "path"), ("unix:", "path"), ("unix:/s,wait=perhaps", "wait")]
)
def test_parse_serial_errors(text: str, field: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_serial_option(text)
    assert str(ei.value).startswith(f"-serial {text}: ") and field in str(ei.value)


def test_open_chardev_reference_and_errors() -> None:
    null = NullChardev("n")
    assert open_chardev(parse_serial_option("chardev:n"), registry={"n": null}) is null
    with pytest.raises(ValueError, match="'missing' not found"):
        open_chardev(parse_serial_option("chardev:missing"), registry={})
    with pytest.raises(ValueError):
        open_chardev(parse_serial_option("none"))

"""End to end: the probe guest on refvm with virtio-blk and virtio-rng moves correct data, and the fast
path's counters (QMP ``x-query-fastpath`` and ``REFVM_STATS=1`` at exit) show the notifications arrived
through ioeventfds on the IoThread and virtio-blk's requests through its compiled path. With
``REFVM_NO_FASTPATH=1`` the same commands work on the slow path, with ``REFVM_BLK_FASTPATH=0`` on blk's Python model.

refvm is started through tests/fastpath_runner.py, which wires :func:`refvm.fastpath.attach` into the
machine exactly as refvm/machine.py is meant to (and does nothing once the machine does it itself).
The probe polls the used ring, so MSI-X/irqfd is not exercised here (see tests/test_fastpath_kvm.py).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import zlib
from pathlib import Path

import pytest

from conformance.drivers.console import SerialConsole
from conformance.drivers.guests import probe_elf
from tests.conftest import require

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

RUNNER = Path(__file__).with_name("fastpath_runner.py")
SECTOR = 512


def disk_bytes() -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(1 << 20))


def qmp(path: Path, command: str) -> dict:
    import json

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        f = sock.makefile("rb")
        json.loads(f.readline())  # greeting
        for cmd in ("qmp_capabilities", command):
            sock.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
            while True:
                msg = json.loads(f.readline())
                if "event" not in msg:
                    break
            assert "return" in msg, msg
        return msg["return"]


def boot(tmp: Path, env: dict[str, str]) -> tuple[SerialConsole, Path, Path]:
    require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible")
    try:
        kernel = probe_elf()
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"probe guest not buildable here: {err}")
    disk, sock = tmp / "disk.raw", tmp / "qmp.sock"
    disk.write_bytes(disk_bytes())
    argv = [
        sys.executable, str(RUNNER), "-watchdog-timeout", "60", "-display", "none", "-serial", "stdio",
        "-nodefaults", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(kernel),
        "-qmp", f"unix:{sock},server=on,wait=off",
        "-drive", f"if=none,id=d0,file={disk},format=raw", "-device", "virtio-blk-pci,drive=d0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        con = SerialConsole(argv, timeout=30, name="refvm-fastpath")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    con.wait_prompt()
    return con, disk, sock


def run_probe_commands(con: SerialConsole, disk: Path) -> None:
    assert con.command("pciassign").splitlines()[-1].startswith("pciassign: ")
    out = con.command("blk read 0")
    want = disk_bytes()[:SECTOR]
    assert f"data {want[:32].hex(' ')}" in out.splitlines()
    assert f"crc32 0x{zlib.crc32(want):08x}" in out.splitlines()
    assert "status 0 (ok)" in out
    out = con.command("blk write 1 0xab")
    assert "status 0 (ok)" in out
    assert disk.read_bytes()[SECTOR : 2 * SECTOR] == b"\xab" * SECTOR
    lines = con.command("rng read 16").splitlines()
    assert re.fullmatch(r"data( [0-9a-f]{2}){16}", lines[0]) and lines[1] == "len 16"


def test_probe_blk_rng_through_ioeventfds(tmp_path: Path) -> None:
    con, disk, sock = boot(tmp_path, {"REFVM_STATS": "1"})
    try:
        run_probe_commands(con, disk)
        stats = qmp(sock, "x-query-fastpath")
        assert stats["attached"] and stats["errors"] == 0
        by_queue = stats["notifies-by-queue"]
        assert by_queue.get("virtio-blk-pci@02.0/q0", 0) >= 2  # the read and the write
        assert by_queue.get("virtio-rng-pci@03.0/q0", 0) >= 1
        assert stats["notify-threads"] == ["iothread"]
        assert stats["blk-compiled-requests"] >= 2  # the read and the write took virtio-blk's compiled path
        con.send("exit 0\n")
        assert con.wait_exit(15) == 1  # isa-debug-exit: (0 << 1) | 1
        assert "refvm: fastpath: {'attaches': 1" in con.transcript
    finally:
        con.close()


def test_probe_without_fastpath(tmp_path: Path) -> None:
    con, disk, sock = boot(tmp_path, {"REFVM_NO_FASTPATH": "1"})
    try:
        run_probe_commands(con, disk)
        stats = qmp(sock, "x-query-fastpath")
        assert not stats["attached"] and stats["reason"] == "REFVM_NO_FASTPATH=1"
        assert stats["ioeventfd-notifies"] == 0
    finally:
        con.close()


def test_probe_blk_on_the_python_model(tmp_path: Path) -> None:
    """REFVM_BLK_FASTPATH=0: virtio-blk's Python model serves every request, with the same results."""
    con, disk, sock = boot(tmp_path, {"REFVM_BLK_FASTPATH": "0"})
    try:
        run_probe_commands(con, disk)
        assert qmp(sock, "x-query-fastpath")["blk-compiled-requests"] == 0
    finally:
        con.close()

"""The probe guest's PCI and virtio commands on QEMU 7.2 (the reference) and on refvm, same checks.

One QEMU (TCG) boots the probe with virtio-blk (a read-write and a read-only drive), virtio-rng,
virtio-console on a file chardev and virtio-balloon, each at a fixed slot; the shell's answers are
checked against what the host side sees (the disk image, the chardev file, QMP). The same commands
run on refvm once its virtio devices exist, so the output formats checked here are the contract.

Skips when gcc-multilib or QEMU are missing; with CI=true those are failures (tests.conftest.require).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from conformance.drivers.console import SerialConsole
from conformance.drivers.guests import probe_elf
from tests.conftest import require

QEMU = "qemu-system-x86_64"
SECTOR = 512
DISK_SIZE = 1 << 20
RAM = 128 << 20  # QEMU's default -m
BALLOON_TARGET_PAGES = 16

pytestmark = [pytest.mark.qemu, pytest.mark.guest]


def _multilib_present() -> bool:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        return False
    res = subprocess.run(["gcc", "-m32", "-print-libgcc-file-name"], capture_output=True, text=True, check=False)
    return res.returncode == 0 and Path(res.stdout.strip()).is_file()


def disk_bytes() -> bytes:
    """Known content: a marker, then a position-dependent byte pattern."""
    marker = b"REFVM-PROBE-DISK\x00"
    body = bytes((i * 7 + 3) & 0xFF for i in range(DISK_SIZE))
    return marker + body[len(marker) :]


class Qmp:
    """Just enough QMP (JSON lines over a unix socket) to set a balloon target."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        deadline = time.monotonic() + 5
        while True:
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.file = self.sock.makefile("rb")
        assert "QMP" in self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            msg = json.loads(self.file.readline())
            if "event" not in msg:
                return msg

    def execute(self, cmd: str, **args: object) -> object:
        self.sock.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        reply = self._read()
        assert "return" in reply, reply
        return reply["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Vm:
    def __init__(self, con: SerialConsole, disk: Path, ro_disk: Path, chardev: Path, qmp: Path) -> None:
        self.con, self.disk, self.ro_disk, self.chardev, self.qmp_path = con, disk, ro_disk, chardev, qmp

    def run(self, line: str) -> str:
        return self.con.command(line)


@pytest.fixture(scope="module", params=["qemu", "refvm"])
def vm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The same probe guest and devices on QEMU (the reference) and on refvm."""
    require(_multilib_present(), "gcc with 32-bit support is not installed (apt-get install gcc gcc-multilib)")
    if request.param == "qemu":
        require(shutil.which(QEMU) is not None, f"{QEMU} is not installed (apt-get install qemu-system-x86)")
        vmm = [QEMU, "-accel", "tcg"]
    else:
        require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible")
        vmm = [sys.executable, "-m", "refvm", "-watchdog-timeout", "120"]
    kernel = probe_elf()
    tmp = tmp_path_factory.mktemp("probe-virtio")
    disk, ro_disk, chardev, qmp = tmp / "disk.raw", tmp / "ro.raw", tmp / "console.out", tmp / "qmp.sock"
    disk.write_bytes(disk_bytes())
    ro_disk.write_bytes(disk_bytes())
    argv = [
        *vmm, "-display", "none", "-serial", "stdio", "-nodefaults", "-no-reboot",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(kernel),
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-drive", f"if=none,id=d0,file={disk},format=raw",
        "-device", "virtio-blk-pci,drive=d0,disable-legacy=on,serial=probe-disk,addr=0x2",
        "-drive", f"if=none,id=d1,file={ro_disk},format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=d1,disable-legacy=on,serial=probe-ro,addr=0x3",
        "-device", "virtio-rng-pci,addr=0x4",
        "-device", "virtio-serial-pci,addr=0x5",
        "-chardev", f"file,id=c0,path={chardev}", "-device", "virtconsole,chardev=c0",
        "-device", "virtio-balloon-pci,addr=0x6",
    ]  # fmt: skip
    con = SerialConsole(argv, timeout=20, name=f"{request.param}-probe")
    try:
        con.wait_prompt()
        yield Vm(con, disk, ro_disk, chardev, qmp)
    finally:
        con.close()


def lspci_functions(out: str) -> dict[str, list[str]]:
    """lspci output -> {"00:02.0": [header line, indented lines...]}."""
    funcs: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in out.splitlines():
        if line.startswith("    "):
            cur.append(line.strip())
        else:
            cur = [line]
            funcs[line.split(" ", 1)[0]] = cur
    return funcs


def status_of(out: str) -> int:
    m = re.search(r"^status (\d+) \((ok|ioerr|unsupp|\?)\) len \d+$", out, re.M)
    assert m, out
    return int(m.group(1))


# ---------------------------------------------------------------------------------------------------- PCI


def test_lspci_shows_qemu_devices(vm: Vm) -> None:
    f = lspci_functions(vm.run("lspci"))
    assert f["00:00.0"][0].startswith("00:00.0 8086:1237 class 060000 rev 02 ")
    assert f["00:01.0"][0].startswith("00:01.0 8086:7000 class 060100 ")  # PIIX3: multi-function ...
    assert "00:01.1" in f and "00:01.3" in f  # ... so its functions 1 and 3 are found too
    # Modern-only virtio-blk: 1af4:1040+2, rev 1, no I/O BAR (DESIGN.md §3).
    blk = f["00:02.0"]
    assert re.fullmatch(r"00:02\.0 1af4:1042 class 010000 rev 01 subsys 1af4:[0-9a-f]{4} irq-pin 1", blk[0])
    assert blk[1:3] == ["bar1 mem32 size 0x1000", "bar4 mem64 pref size 0x4000"]
    assert not any(x.startswith("bar0") for x in blk)
    assert "cap 0x11 msix @0x98 vectors 2 table bar 1 +0x0 pba bar 1 +0x800" in blk
    assert "cap 0x09 vendor @0x84 virtio cfg_type 5 bar 0 off 0x0 len 0x0" in blk
    assert "cap 0x09 vendor @0x70 virtio cfg_type 2 bar 4 off 0x3000 len 0x1000 mult 4" in blk
    assert "cap 0x09 vendor @0x60 virtio cfg_type 4 bar 4 off 0x2000 len 0x1000" in blk
    assert "cap 0x09 vendor @0x50 virtio cfg_type 3 bar 4 off 0x1000 len 0x1000" in blk
    assert "cap 0x09 vendor @0x40 virtio cfg_type 1 bar 4 off 0x0 len 0x1000" in blk
    # Transitional devices: 1af4:1000+(n-1) with the virtio type in the subsystem id, and an I/O BAR0.
    for bdf, dev, subsys in (("00:04.0", "1005", "0004"), ("00:05.0", "1003", "0003"), ("00:06.0", "1002", "0005")):
        assert re.match(rf"{bdf} 1af4:{dev} class [0-9a-f]{{6}} rev 00 subsys 1af4:{subsys} irq-pin 1$", f[bdf][0])
        assert f[bdf][1].startswith("bar0 io size 0x")
        assert "bar4 mem64 pref size 0x4000" in f[bdf]


def test_pciassign_aligns_and_enables(vm: Vm) -> None:
    out = vm.run("pciassign")
    bars = re.findall(r"^(\S+) bar(\d) (io|mem32|mem64)( pref)? 0x([0-9a-f]+) size 0x([0-9a-f]+)$", out, re.M)
    assert len(bars) >= 11, out
    spans = []
    for _bdf, _n, kind, _pref, addr, size in bars:
        a, s = int(addr, 16), int(size, 16)
        assert a % s == 0, f"{addr} not aligned to {size}"
        if kind == "io":
            assert 0xC000 <= a and a + s <= 0x10000
        else:
            assert 0xE0000000 <= a and a + s <= 0xFEC00000
        spans.append((kind == "io", a, a + s))
    spans.sort()
    assert all(x[2] <= y[1] for x, y in zip(spans, spans[1:], strict=False) if x[0] == y[0]), "overlapping BARs"
    # Exactly I/O (if an I/O BAR) + memory + bus master: no firmware leftovers, so VMMs agree.
    assert "00:02.0 command 0x0006" in out.splitlines()
    assert "00:04.0 command 0x0007" in out.splitlines()
    assert "00:01.1 command 0x0005" in out.splitlines()
    assert re.search(r"^pciassign: \d+ bars, io 0xc000-0x[0-9a-f]{4} mem 0xe0000000-0x[0-9a-f]{8}$", out, re.M)
    # The BAR registers hold what was printed.
    m = re.search(r"^00:02\.0 bar4 mem64 pref 0x([0-9a-f]{8})", out, re.M)
    assert m
    assert vm.run("pcicfg read 00:02.0 0x20") == f"00:02.0@0x20: 0x{int(m.group(1), 16) | 0xC:08x}"
    assert vm.run("pcicfg read 00:02.0 0x24") == "00:02.0@0x24: 0x00000000"


def test_pcicfg(vm: Vm) -> None:
    assert vm.run("pcicfg read 00:00.0 0") == "00:00.0@0x00: 0x12378086"
    assert vm.run("pcicfg read 0:2.0 2 2") == "00:02.0@0x02: 0x1042"
    assert vm.run("pcicfg write 00:04.0 0x3c 0x0b 1") == "ok"  # interrupt line: plain read/write
    assert vm.run("pcicfg read 00:04.0 0x3c 1") == "00:04.0@0x3c: 0x0b"
    assert vm.run("pcicfg read 00:1f.0 0") == "00:1f.0@0x00: 0xffffffff"  # nothing there
    assert vm.run("pcicfg read 00:02.0 0x3 2").startswith("error: bad OFFSET")
    assert vm.run("pcicfg read 00:40.0 0").startswith("error: bad B:D.F")
    assert vm.run("pcicfg frob 0 0").startswith("error: usage")


def test_virtio_list(vm: Vm) -> None:
    assert vm.run("virtio list").splitlines() == [
        "00:02.0 1af4:1042 blk type 2 modern",
        "00:03.0 1af4:1042 blk type 2 modern",
        "00:04.0 1af4:1005 rng type 4 transitional",
        "00:05.0 1af4:1003 console type 3 transitional",
        "00:06.0 1af4:1002 balloon type 5 transitional",
    ]


# ---------------------------------------------------------------------------------------------- virtio-blk


def test_blk_info(vm: Vm) -> None:
    out = vm.run("blk info")
    lines = out.splitlines()
    assert lines[0] == "device 00:02.0"
    assert lines[1] == f"capacity {DISK_SIZE // SECTOR} sectors"
    m = re.fullmatch(r"features offered 0x([0-9a-f]{16}) accepted 0x([0-9a-f]{16})", lines[2])
    assert m, out
    offered, accepted = int(m.group(1), 16), int(m.group(2), 16)
    assert offered & (1 << 32) and accepted & (1 << 32), "VERSION_1"
    assert accepted & ~offered == 0
    assert lines[3:] == ["blk_size 512", "ro 0", "wce 1"]  # QEMU's default cache=writeback: WCE 1


def test_blk_read_sector0(vm: Vm) -> None:
    out = vm.run("blk read 0")
    want = disk_bytes()[:SECTOR]
    assert f"data {want[:32].hex(' ')}" in out.splitlines()
    assert f"crc32 0x{zlib.crc32(want):08x}" in out.splitlines()
    assert status_of(out) == 0
    assert out.splitlines()[-1] == "status 0 (ok) len 513"  # data + status byte written


def test_blk_write_lands_in_file(vm: Vm) -> None:
    out = vm.run("blk write 1 0xab")
    assert status_of(out) == 0
    assert f"crc32 0x{zlib.crc32(bytes([0xAB]) * SECTOR):08x}" in out
    out = vm.run("blk write 2 probe!")
    assert status_of(out) == 0
    assert status_of(vm.run("blk flush")) == 0
    data = vm.disk.read_bytes()
    assert data[SECTOR : 2 * SECTOR] == b"\xab" * SECTOR
    assert data[2 * SECTOR : 3 * SECTOR] == (b"probe!" * 86)[:SECTOR]
    assert data[3 * SECTOR :] == disk_bytes()[3 * SECTOR :]
    # and reads back through the device
    assert "data " + " ".join(["ab"] * 32) in vm.run("blk read 1").splitlines()


def test_blk_id(vm: Vm) -> None:
    out = vm.run("blk id")
    assert out.splitlines() == ['id "probe-disk"', "status 0 (ok) len 21"]


def test_blk_past_the_end_is_ioerr(vm: Vm) -> None:
    assert status_of(vm.run(f"blk read {DISK_SIZE // SECTOR}")) == 1


def test_blk_readonly_drive(vm: Vm) -> None:
    try:
        assert vm.run("blk use 1") == "using 00:03.0"
        info = vm.run("blk info")
        assert "ro 1" in info.splitlines()
        assert 'id "probe-ro"' in vm.run("blk id")
        out = vm.run("blk write 0 0x55")
        assert status_of(out) == 1  # IOERR: QEMU refuses the write on a read-only drive
        assert vm.ro_disk.read_bytes() == disk_bytes()
    finally:
        assert vm.run("blk use 0") == "using 00:02.0"


def test_blk_errors(vm: Vm) -> None:
    assert vm.run("blk read").startswith("error: usage: blk")
    assert vm.run("blk frob").startswith("error: usage: blk")
    assert vm.run("blk read zz").startswith("error: bad SECTOR 'zz'")
    assert vm.run("blk use 7") == "error: no virtio-blk device #7"
    assert vm.run("blk use 0") == "using 00:02.0"


def test_blk_timeout_then_recovery(vm: Vm) -> None:
    assert status_of(vm.run("blk read 0")) == 0
    # Move BAR4 behind the driver's back (raw CF8/CFC; `pcicfg write` would make the drivers remap): the
    # notify write now goes nowhere, and the bounded wait (~2^31 TSC ticks) must say so.
    bdf_bar4 = 0x80000000 | (2 << 11) | 0x20
    assert vm.run(f"outl 0xcf8 {bdf_bar4:#x}") == "ok"
    assert vm.run("outl 0xcfc 0xd000000c") == "ok"
    assert vm.run("blk read 0") == "error: timeout waiting for virtio-blk request"
    # pciassign puts the BAR back; the driver notices, resets the device and starts over.
    assert vm.run("pciassign").splitlines()[-1].startswith("pciassign: ")
    assert status_of(vm.run("blk read 0")) == 0


# ------------------------------------------------------------------------------------- rng, console, balloon


def test_rng_read(vm: Vm) -> None:
    out = vm.run("rng read 16").splitlines()
    assert re.fullmatch(r"data( [0-9a-f]{2}){16}", out[0]), out
    assert out[1] == "len 16"
    again = vm.run("rng read 16").splitlines()
    assert again[0] != out[0]
    assert vm.run("rng read 0").startswith("error: bad N")
    assert vm.run("rng read 65").startswith("error: bad N")


def test_console_echo_reaches_chardev(vm: Vm) -> None:
    assert vm.run("console echo hello") == "sent 6 bytes"
    assert vm.run("console echo two  words") == "sent 10 bytes"
    deadline = time.monotonic() + 5
    while vm.chardev.read_bytes() != b"hello\ntwo words\n" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert vm.chardev.read_bytes() == b"hello\ntwo words\n"
    # A file chardev has no input side: the bounded read finds nothing and says so.
    assert vm.run("console read").splitlines() == ['read ""', "len 0"]


def test_balloon_inflate_deflate(vm: Vm) -> None:
    qmp = Qmp(vm.qmp_path)
    try:
        qmp.execute("balloon", value=RAM - BALLOON_TARGET_PAGES * 4096)
    finally:
        qmp.close()
    out = vm.run("balloon inflate 4").splitlines()
    assert out[0] == f"before num_pages {BALLOON_TARGET_PAGES} actual 0"
    assert re.fullmatch(r"inflate 4 pages pfn 0x[0-9a-f]+-0x[0-9a-f]+ len 0", out[1])
    assert out[2] == f"after num_pages {BALLOON_TARGET_PAGES} actual 4"
    out = vm.run("balloon deflate 4").splitlines()
    assert out[2] == f"after num_pages {BALLOON_TARGET_PAGES} actual 0"
    assert vm.run("balloon deflate 1").startswith("error: bad N: must be 1..0")
    assert vm.run("balloon inflate 65").startswith("error: bad N: must be 1..64")


def test_console_read_from_socket_chardev(tmp_path: Path) -> None:
    """Host input reaches the pre-posted receive buffers (a file chardev has no input in QEMU 7.2)."""
    require(_multilib_present(), "gcc with 32-bit support is not installed (apt-get install gcc gcc-multilib)")
    require(shutil.which(QEMU) is not None, f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    sock_path = tmp_path / "console.sock"
    argv = [
        QEMU, "-accel", "tcg", "-display", "none", "-serial", "stdio", "-nodefaults", "-no-reboot",
        "-kernel", str(probe_elf()), "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=c0,path={sock_path},server=on,wait=off", "-device", "virtconsole,chardev=c0",
    ]  # fmt: skip
    with SerialConsole(argv, timeout=10, name="qemu-probe-console") as con:
        con.wait_prompt()
        with socket.socket(socket.AF_UNIX) as host:
            host.settimeout(5)
            host.connect(str(sock_path))
            assert con.command("console echo ping") == "sent 5 bytes"
            got = b""
            while len(got) < 5:
                got += host.recv(64)
            assert got == b"ping\n"
            host.sendall(b"from host\n")
            out = ""
            deadline = time.monotonic() + 5
            while "len 0" in (out := con.command("console read")) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert out.splitlines() == ['read "from host\\x0a"', "len 10"]
            # More than the four 64-byte receive buffers hold: nothing is lost.
            host.sendall(b"y" * 300)
            lens = []
            deadline = time.monotonic() + 5
            while sum(lens) < 300 and time.monotonic() < deadline:
                text, length = con.command("console read").splitlines()
                n = int(length.removeprefix("len "))
                assert text == f'read "{"y" * n}"'
                if n:
                    lens.append(n)
            # Buffers are re-posted while draining, so one read may take more than 4 x 64 bytes.
            assert sum(lens) == 300, lens


def test_exit_last(vm: Vm) -> None:
    """Last in the module: the shell still answers, then isa-debug-exit ends QEMU with (3 << 1) | 1."""
    assert vm.run("echo alive") == "alive"
    vm.con.send("exit 3\r")
    assert vm.con.wait_exit(timeout=10) == 7

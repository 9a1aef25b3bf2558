"""The QEMU command line OpenStack Nova (through libvirt) generated for a real instance (issue 8), run on refvm.

As libvirt does, the test opens the tap itself (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) and starts the VMM with the
descriptor inherited as ``fd=``. refvm boots ``-kernel`` images only, so the probe guest is added with
``-kernel``; the guest's console is the line's first isa-serial, a file chardev. With the display/USB options
removed and ``vhost=off`` the guest reaches ``probe> `` and the line's QMP monitor answers; ``vhost=on`` (this host
has no /dev/vhost-net) and the unmodified line each end with exit status 1 and one line naming the cause.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "guests" / "probe" / "build" / "probe.elf"

#: The line as Nova generated it (issue 8), with its paths and descriptor numbers as placeholders.
NOVA_LINE = """
-name instance-00000024 -machine pc-i440fx-trusty,accel=kvm,usb=off -cpu {cpu}
-m 2048 -realtime mlock=off -smp 1,sockets=1,cores=1,threads=1 -uuid 1f8e6f7e-5a70-4780-89c1-464dc0e7f308
-smbios {smbios}
-no-user-config -nodefaults -chardev socket,id=charmonitor,path={mon},server,nowait
-mon chardev=charmonitor,id=monitor,mode=control
-rtc base=utc,driftfix=slew -global kvm-pit.lost_tick_policy=discard -no-hpet -no-shutdown -boot strict=on
-device piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2
-drive file={disk},if=none,id=drive-virtio-disk0,format=qcow2,cache=none
-device virtio-blk-pci,scsi=off,bus=pci.0,addr=0x4,drive=drive-virtio-disk0,id=virtio-disk0,bootindex=1
-netdev tap,fd={fd},id=hostnet0,vhost=on,vhostfd={vhostfd}
-device virtio-net-pci,netdev=hostnet0,id=net0,mac=fa:16:3e:d1:2d:99,bus=pci.0,addr=0x3
-chardev file,id=charserial0,path={console} -device isa-serial,chardev=charserial0,id=serial0
-chardev pty,id=charserial1 -device isa-serial,chardev=charserial1,id=serial1
-device usb-tablet,id=input0 -vnc 0.0.0.0:12 -k en-us -device cirrus-vga,id=video0,bus=pci.0,addr=0x2
-device virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x5
"""
CPU = ("SandyBridge,+erms,+smep,+fsgsbase,+pdpe1gb,+rdrand,+f16c,+osxsave,+dca,+pcid,+pdcm,+xtpr,+tm2,+est,+smx,"
       "+vmx,+ds_cpl,+monitor,+dtes64,+pbe,+tm,+ht,+ss,+acpi,+ds,+vme")
SMBIOS = ("type=1,manufacturer=OpenStack@Foundation,product=OpenStack@Nova,version=2014.1,"
          "serial=80590690-87d2-e311-b1b0-a0481cabdfb4,uuid=1f8e6f7e-5a70-4780-89c1-464dc0e7f308")
#: The display/USB options refvm refuses (it models no USB, VGA or VNC).
DISPLAY_USB = [["-device", "piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2"], ["-device", "usb-tablet,id=input0"],
               ["-vnc", "0.0.0.0:12"], ["-k", "en-us"],
               ["-device", "cirrus-vga,id=video0,bus=pci.0,addr=0x2"]]  # fmt: skip


def nova_argv(tmp: Path, fd: int, vhostfd: int, *, vhost: bool, display_usb: bool) -> list[str]:
    text = NOVA_LINE.format(cpu=CPU, smbios=SMBIOS, mon=tmp / "monitor.sock", disk=tmp / "disk.qcow2",
                            console=tmp / "console.log", fd=fd, vhostfd=vhostfd)  # fmt: skip
    if not vhost:
        text = text.replace(f"vhost=on,vhostfd={vhostfd}", "vhost=off")
    argv = [word.replace("@", " ") for word in text.split()]  # '@' keeps the -smbios values' spaces together
    if not display_usb:
        for pair in DISPLAY_USB:
            i = next(i for i in range(len(argv) - 1) if argv[i : i + 2] == pair)
            del argv[i : i + 2]
    return [sys.executable, "-m", "refvm", "-kernel", str(PROBE), "-watchdog-timeout", "120", *argv]


def open_tap() -> int:
    """A tap as libvirt opens it for a guest NIC (the descriptor is inheritable, as it is passed on exec)."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"nova%d", 0x0002 | 0x1000 | 0x4000).ljust(40, b"\0"))
    return fd


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    require(PROBE.exists(), "probe guest not built (make -C guests/probe)")
    require(os.path.exists("/dev/net/tun") and os.geteuid() == 0, "needs root and /dev/net/tun for the tap")
    require(shutil.which("qemu-img") is not None, "qemu-img not installed")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "disk.qcow2"), "64M"], check=True)
    tap, other = open_tap(), os.open("/dev/null", os.O_RDWR)  # `other` stands for libvirt's vhost-net fd
    try:
        yield tmp_path, tap, other
    finally:
        os.close(tap)
        os.close(other)


def qmp(path: Path, *commands: tuple[str, dict]) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(15)
        s.connect(str(path))
        f = s.makefile("rwb")
        json.loads(f.readline())
        replies = []
        for name, args in (("qmp_capabilities", {}), *commands):
            f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
            f.flush()
            while "event" in (msg := json.loads(f.readline())):
                pass
            replies.append(msg)
        return replies[1:]


def test_nova_line_reaches_the_probe_prompt(setup: tuple[Path, int, int]) -> None:
    tmp, tap, other = setup
    argv = nova_argv(tmp, tap, other, vhost=False, display_usb=False)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=(tap,))  # fmt: skip
    try:
        console = tmp / "console.log"
        deadline = time.monotonic() + 90
        while not (console.exists() and "probe> " in console.read_text()):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no probe> prompt on the console"
            time.sleep(0.2)
        status, uuid, machine, pci, _ = qmp(
            tmp / "monitor.sock", ("query-status", {}), ("query-uuid", {}),
            ("qom-get", {"path": "/machine", "property": "type"}), ("query-pci", {}), ("quit", {}),
        )  # fmt: skip
        assert status["return"]["status"] == "running"
        assert machine["return"] == "pc-i440fx-trusty-machine"
        assert uuid["return"] == {"UUID": "1f8e6f7e-5a70-4780-89c1-464dc0e7f308"}
        slots = {d["slot"]: d["qdev_id"] for d in pci["return"][0]["devices"]}
        assert {3: "net0", 4: "virtio-disk0", 5: "balloon0"}.items() <= slots.items()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert "char device redirected to /dev/pts/" in proc.stderr.read().decode()  # the second isa-serial's pty


def test_vhost_on_is_one_line_naming_the_cause(setup: tuple[Path, int, int]) -> None:
    tmp, tap, other = setup
    proc = subprocess.run(nova_argv(tmp, tap, other, vhost=True, display_usb=False), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, pass_fds=(tap, other))  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"refvm: -netdev tap,fd={tap},id=hostnet0,vhost=on,vhostfd={other}: vhost-net "
                               "requested but could not be initialized: ")  # fmt: skip
    assert "/dev/vhost-net" in lines[0] or "no vhost-net backend" in lines[0]


def test_unmodified_line_names_the_first_unsupported_device(setup: tuple[Path, int, int]) -> None:
    tmp, tap, other = setup
    proc = subprocess.run(nova_argv(tmp, tap, other, vhost=True, display_usb=True), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, pass_fds=(tap, other))  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "refvm: -device piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2: 'piix3-usb-uhci' is not supported: "
        "refvm models no USB controller or USB device"
    ]

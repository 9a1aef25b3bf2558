"""Fixtures of the guest_linux suite: a Debian Linux guest booted on the target, judged through its drivers.

One machine with every device (`rig`) boots once for the whole package: a Linux boot costs seconds, the
checks milliseconds. It runs inside a network namespace made by the suite, so its tap and the addresses on
both ends never touch the host's network. Power tests boot their own small machine (they end it).
Every failing test gets the guest's whole serial log attached, not just its tail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.drivers.console import ConsoleError, SerialConsole
from conformance.drivers.linux import LinuxGuest, LinuxGuestUnavailable, LinuxImage, build_linux_guest
from conformance.drivers.qmp import QmpDriver
from conformance.plugin import require
from conformance.targets import Target

SPEC = "refvm-guest-linux"
DISK_SIZE = 16 << 20
MEMORY_MIB = 256
MAC = "52:54:00:4c:47:01"
PORT_NAME = "org.refvm.port0"
HOST_IP, GUEST_IP = "10.203.0.1", "10.203.0.2"
#: PCI slots of the rig's devices, so the guest's view and a qtest view of the same devices line up.
SLOTS = {"disk": 4, "rodisk": 5, "net": 6, "rng": 7, "serial": 8, "balloon": 9}


def clause(label: str):  # noqa: ANN201 - a pytest mark
    return pytest.mark.clause(SPEC, label)


@pytest.fixture(scope="session")
def linux_image() -> LinuxImage:
    """The guest from guests/linux (built and cached on first use)."""
    try:
        return build_linux_guest()
    except LinuxGuestUnavailable as err:
        require(False, f"Linux guest unavailable: {err}")
        raise


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@contextlib.contextmanager
def network_namespace(taps: list[str]) -> Iterator[str]:
    """A fresh namespace holding the given taps, the first one with HOST_IP; removed afterwards."""
    require(os.geteuid() == 0, "network namespaces and taps need root")
    require(shutil.which("ip") is not None, "ip (iproute2) not found")
    name = f"refvm-lg-{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        for tap in taps:
            ip("-n", name, "tuntap", "add", "dev", tap, "mode", "tap")
            ip("-n", name, "link", "set", tap, "up")
        ip("-n", name, "addr", "add", f"{HOST_IP}/24", "dev", taps[0])
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def in_netns(target: Target, netns: str) -> Target:
    """The same target, started inside a network namespace (`ip netns exec` execs it: same pid)."""
    return dataclasses.replace(target, binary=["ip", "netns", "exec", netns, *target.binary])


def device_args(workdir: Path, tap: str, suffix: str = "") -> list[str]:
    """The rig's devices. Each machine gets its own image files (QEMU locks them), made here if missing."""
    disk, rodisk = workdir / f"disk{suffix}.raw", workdir / f"rodisk{suffix}.raw"
    for path in (disk, rodisk):
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(DISK_SIZE)
    s = SLOTS
    return [
        "-drive", f"if=none,id=d0,file={disk},format=raw,cache=writeback,discard=unmap",
        "-device", f"virtio-blk-pci,drive=d0,id=blk0,addr={s['disk']:#x}",
        "-drive", f"if=none,id=d1,file={rodisk},format=raw,readonly=on",
        "-device", f"virtio-blk-pci,drive=d1,id=blk1,addr={s['rodisk']:#x}",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC},id=net0,addr={s['net']:#x}",
        "-device", f"virtio-rng-pci,id=rng0,addr={s['rng']:#x}",
        "-chardev", f"file,id=port0,path={workdir / f'port0{suffix}.out'}",
        "-device", f"virtio-serial-pci,id=serial0,addr={s['serial']:#x}",
        "-device", f"virtserialport,chardev=port0,name={PORT_NAME},bus=serial0.0",
        "-device", f"virtio-balloon-pci,id=balloon0,addr={s['balloon']:#x}",
    ]  # fmt: skip


def boot(console: SerialConsole, image: LinuxImage) -> LinuxGuest:
    """Wait for the ready marker. A target that exits at once, refusing an option or device, is a SKIP with
    its own error line (the capability probe); one that started a kernel and then died is a failure."""
    guest = LinuxGuest(console, image)
    try:
        guest.wait_ready()
    except ConsoleError:
        lines = [ln for ln in console.transcript.splitlines() if ln.strip()]
        if not console.child.isalive() and not any("Linux version" in ln or "Booting" in ln for ln in lines):
            pytest.skip(f"{console.name} refused the machine: {lines[-1] if lines else '(no output)'}")
        raise
    return guest


@dataclass
class Rig:
    """The booted guest with every device, its QMP monitor and the host-side files and namespace."""

    guest: LinuxGuest
    qmp: QmpDriver
    workdir: Path
    netns: str
    target: Target

    @property
    def disk(self) -> Path:
        return self.workdir / "disk.raw"

    @property
    def rodisk(self) -> Path:
        return self.workdir / "rodisk.raw"

    @property
    def port_out(self) -> Path:
        return self.workdir / "port0.out"


@pytest.fixture(scope="package")
def rig(target: Target, linux_image: LinuxImage) -> Iterator[Rig]:
    workdir = Path(tempfile.mkdtemp(prefix="refvm-guest-linux-"))
    # The disks hold known bytes before boot, so reads can be checked against the host file.
    with network_namespace(["lgtap0", "lgtap1"]) as netns:
        qmp_path = workdir / "qmp.sock"
        args = [*device_args(workdir, "lgtap0"), "-qmp", f"unix:{qmp_path},server=on,wait=off"]
        prepare_disks(workdir)
        argv = in_netns(target, netns).argv(LinuxGuest.argv(linux_image, args, str(MEMORY_MIB)))
        console = SerialConsole(argv, prompt=linux_image.prompt, timeout=180, name=f"{target.name} linux")
        qmp = None
        try:
            guest = boot(console, linux_image)
            qmp = QmpDriver(qmp_path)
            yield Rig(guest, qmp, workdir, netns, target)
        finally:
            if qmp is not None:
                qmp.close()
            console.close()
            shutil.rmtree(workdir, ignore_errors=True)


#: Bytes the host writes into the disks before boot: (offset, length, seed).
PATTERN_OFFSET, PATTERN_LEN = 1 << 20, 64 << 10


def pattern(seed: int) -> bytes:
    return bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(PATTERN_LEN))


def prepare_disks(workdir: Path) -> None:
    for name, seed in (("disk.raw", 1), ("rodisk.raw", 2)):
        with open(workdir / name, "r+b" if (workdir / name).exists() else "wb") as f:
            f.truncate(DISK_SIZE)
            f.seek(PATTERN_OFFSET)
            f.write(pattern(seed))


@pytest.fixture
def vm(rig: Rig, request: pytest.FixtureRequest) -> Rig:
    """The shared guest, registered with the test so that a failure shows its whole serial log."""
    request.node._linux_consoles = [rig.guest.console]
    return rig


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for con in getattr(item, "_linux_consoles", []):
            report.sections.append((f"whole serial log of {con.name}", con.transcript))
            report.sections.append((f"argv of {con.name}", " ".join(con.argv)))

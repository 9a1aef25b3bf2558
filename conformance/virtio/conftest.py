"""Fixtures of the virtio suite: stopped machines with modern virtio-pci devices, driven over qtest.

A machine starts in well under 0.1 s, so most tests get their own (`vm`), and a device that a test leaves in
any state cannot disturb another. Read-only discovery tests share one per module (`shared_vm`).

Capability probing: a target that exits before connecting (a missing qtest accelerator, an unknown device
model or backend) makes the test SKIP with the line in which the target says why; the refusal is remembered
per argv so the suite does not retry it for every test. A target that hangs or misbehaves later fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from conformance.drivers.pci import BarAllocator, ConfigMechanism1, PciFunction, enumerate_bus
from conformance.drivers.qtest import QtestSession, QtestStartError
from conformance.drivers.virtio import GuestAllocator, VirtioPciDevice, find_virtio
from conformance.drivers.virtqueue import PackedQueue, SplitQueue, Virtqueue
from conformance.plugin import require
from conformance.targets import Target
from conformance.virtio.devices import MiniQmp, QmpCommandNotFound, halting_bios

SPEC = "virtio-1.2"
DISK_SECTORS = 2048  # 1 MiB raw image
MAC = "52:54:00:12:34:56"


def label(section: str) -> str:
    """The devicenormative label of conformance.tex for a section path."""
    return f"devicenormative:{section}"


def clause(*sections: str) -> Callable:
    """Stack one `clause` mark per section (a test may check several)."""

    def wrap(fn: Callable) -> Callable:
        for section in reversed(sections):
            fn = pytest.mark.clause(SPEC, label(section))(fn)
        return fn

    return wrap


@dataclass
class Machine:
    """One running target and the virtio functions on its bus."""

    qt: QtestSession
    functions: list[PciFunction]
    alloc: GuestAllocator = field(default_factory=GuestAllocator)
    bar_alloc: BarAllocator = field(default_factory=BarAllocator)
    devices: dict[str, VirtioPciDevice] = field(default_factory=dict)
    qmp: MiniQmp | None = None

    def qmp_call(self, command: str, **arguments: object) -> object:
        """A QMP command the test needs; a target whose QMP lacks it skips the test with that reason."""
        assert self.qmp is not None, "machine was started without QMP (running_vm(..., qmp=True))"
        try:
            return self.qmp.execute(command, **arguments)
        except QmpCommandNotFound as err:
            pytest.skip(f"target's QMP lacks a command this check needs: {err}")

    def func(self, kind: str) -> PciFunction:
        return find_virtio(self.functions, kind)

    def device(self, kind: str) -> VirtioPciDevice:
        """The driver of the machine's `kind` device, BARs mapped on first use (one allocator per machine,
        so several devices never overlap)."""
        if kind not in self.devices:
            self.devices[kind] = VirtioPciDevice(self.qt, self.func(kind), self.alloc).map(self.bar_alloc)
        return self.devices[kind]

    def split(self, dev: VirtioPciDevice, index: int = 0, size: int = 16, vector: int | None = None) -> SplitQueue:
        vq = SplitQueue(self.qt, self.alloc, index, size)
        dev.setup_queue(vq, vector)
        return vq

    def packed(self, dev: VirtioPciDevice, index: int = 0, size: int = 16, vector: int | None = None) -> PackedQueue:
        vq = PackedQueue(self.qt, self.alloc, index, size)
        dev.setup_queue(vq, vector)
        return vq

    def ready(self, kind: str, want: int = 0, drop: int = 0, queues: Sequence[int] = (0,), size: int = 16,
              packed: bool = False, msix: bool = False) -> tuple[VirtioPciDevice, list[Virtqueue]]:
        """A device fully initialized (§3.1.1) with the given queues. With `msix`, configuration changes
        signal vector 0 and every queue vector 1 (each landing in its own RAM slot)."""
        dev = self.device(kind)
        dev.initialize(want=want, drop=drop, driver_ok=False)
        if msix:
            dev.msix_enable()
            dev.set_config_vector(0)
        make = self.packed if packed else self.split
        vqs = [make(dev, q, min(size, dev.queue_max_size(q)), vector=1 if msix else None) for q in queues]
        dev.driver_ok()
        return dev, vqs


_refused: dict[tuple[str, ...], str] = {}


def start_machine(target: Target, args: Sequence[str], sessions: list[QtestSession]) -> Machine:
    key = (target.name, *args)
    if key in _refused:
        pytest.skip(_refused[key])
    session = QtestSession(name=target.name)
    sessions.append(session)
    try:
        session.start(target, args)
    except QtestStartError as err:
        if err.exited:
            _refused[key] = f"target refuses this machine (missing device or backend): {err.stderr_line}"
            pytest.skip(_refused[key])
        raise
    return Machine(session, enumerate_bus(ConfigMechanism1(session), 0))


@pytest.fixture
def vm(target: Target, request: pytest.FixtureRequest) -> Iterator[Callable[..., Machine]]:
    """Start a fresh machine with the given extra arguments; closed after the test."""
    sessions: list[QtestSession] = []
    request.node._qtest_sessions = sessions

    def start(*args: str) -> Machine:
        return start_machine(target, args, sessions)

    yield start
    for s in sessions:
        s.close()


def starts_paused(target: Target) -> bool:
    """Whether the target's qtest argv leaves the machine paused (QEMU without a qtest accelerator runs
    `-S`, DESIGN.md §3), so that devices which act only while the machine runs need it resumed."""
    return "-S" in target.qtest_argv("/dev/null")


@pytest.fixture
def running_vm(vm: Callable[..., Machine], target: Target, short_tmp: str) -> Callable[..., Machine]:
    """Like `vm`, but the machine runs, and with `qmp=True` it has a QMP socket at `machine.qmp`.

    Some device models act only while the machine runs (QEMU's virtio-rng, virtio-serial and virtio-net
    datapaths check the run state). A target that starts paused is given a firmware that only halts and
    is resumed with QMP `cont`; no firmware code touches the PCI bus, so the test still owns every register.
    """

    def start(*args: str, qmp: bool = False) -> Machine:
        paused = starts_paused(target)
        qmp_path = os.path.join(short_tmp, "qmp.sock")
        extra: list[str] = []
        if paused or qmp:
            extra += ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
        if paused:
            extra += ["-bios", halting_bios(short_tmp)]
        machine = vm(*extra, *args)
        if extra:
            machine.qmp = MiniQmp(qmp_path)
        if paused:
            assert machine.qmp is not None
            machine.qmp.execute("cont")
        return machine

    return start


@contextlib.contextmanager
def make_tap(multi_queue: bool = False) -> Iterator[str]:
    """A fresh persistent tap interface, up, with IPv6 off (so the host kernel sends nothing on it)."""
    require(os.geteuid() == 0 and os.path.exists("/dev/net/tun"), "creating a tap needs root and /dev/net/tun")
    name = f"vtap{os.getpid() % 100000}x{next(_tap_seq)}"[:15]
    cmd = ["ip", "tuntap", "add", "dev", name, "mode", "tap", *(["multi_queue"] if multi_queue else [])]
    made = subprocess.run(cmd, capture_output=True, text=True)
    require(made.returncode == 0, f"ip tuntap add failed: {made.stderr.strip()}")
    try:
        try:
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
                f.write("1")
        except FileNotFoundError:
            pass
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


@pytest.fixture
def tap() -> Iterator[str]:
    with make_tap() as name:
        yield name


@pytest.fixture
def mq_tap() -> Iterator[str]:
    """A multi-queue tap, for virtio-net with several queue pairs."""
    with make_tap(multi_queue=True) as name:
        yield name


@pytest.fixture(scope="module")
def module_tap() -> Iterator[str]:
    with make_tap() as name:
        yield name


def net_args(tap: str, *opts: str, queues: int = 1) -> list[str]:
    """A modern virtio-net on an existing tap (the one backend every target has)."""
    dev = ",".join(["virtio-net-pci", "netdev=n0", f"mac={MAC}", "disable-legacy=on", *opts])
    netdev = f"tap,id=n0,ifname={tap},script=no,downscript=no" + (f",queues={queues}" if queues > 1 else "")
    return ["-netdev", netdev, "-device", dev]


_tap_seq = itertools.count()


@pytest.fixture(scope="module")
def shared_vm(target: Target, request: pytest.FixtureRequest) -> Iterator[Callable[..., Machine]]:
    """Like `vm`, but one machine per argv for the whole module (read-only tests only)."""
    sessions: list[QtestSession] = []
    machines: dict[tuple[str, ...], Machine] = {}

    def start(*args: str) -> Machine:
        if args not in machines:
            machines[args] = start_machine(target, args, sessions)
        return machines[args]

    yield start
    for s in sessions:
        s.close()


# ---- device argv ---------------------------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path) -> str:  # noqa: ANN001
    """A 1 MiB raw image whose sector n starts with the 8-byte tag b'sect%04d'; the test owns the file."""
    path = tmp_path / "disk.raw"
    data = bytearray(DISK_SECTORS * 512)
    for n in range(DISK_SECTORS):
        data[n * 512 : n * 512 + 8] = b"sect%04d" % n
    path.write_bytes(bytes(data))
    return str(path)


def blk_args(image: str, *opts: str, drive_opts: str = "") -> list[str]:
    drive = f"if=none,id=d0,file={image},format=raw" + (f",{drive_opts}" if drive_opts else "")
    dev = ",".join(["virtio-blk-pci", "drive=d0", "disable-legacy=on", *opts])
    return ["-drive", drive, "-device", dev]


RNG_ARGS = ["-device", "virtio-rng-pci,disable-legacy=on"]
BALLOON_ARGS = ["-device", "virtio-balloon-pci,disable-legacy=on"]


@pytest.fixture
def blk(vm: Callable[..., Machine], disk: str) -> Machine:
    """A machine with one modern virtio-blk (serial 'refvm-serial') on a fresh image."""
    return vm(*blk_args(disk, "serial=refvm-serial"))


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short directory for unix socket paths (sun_path is limited to 108 bytes)."""
    d = tempfile.mkdtemp(prefix="vio-")
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)

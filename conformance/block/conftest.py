"""Shared fixtures of the block suites that drive a virtio-blk device over qtest (cache_modes, throttle).

Machines are started exactly like the virtio suite's (one fresh machine per test, the capability probe
turning a target's refusal of the argv into a SKIP with the line in which it says why); what is added here
is what block tests need on top: raw images on a file system that really honours O_DIRECT (tmpfs does not,
and a cache=none test on tmpfs would only measure the fallback), several virtio-blk functions on one
machine, a QMP connection through the `qemu.qmp` library, and the process id of the target so that its
open files and system calls can be inspected from the host.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.drivers.qmp import QmpDriver
from conformance.drivers.qtest import QtestSession
from conformance.drivers.virtio import DEVICE_ID, VIRTIO_VENDOR, VirtioPciDevice
from conformance.drivers.virtqueue import SplitQueue
from conformance.targets import Target
from conformance.virtio.conftest import Machine, start_machine

SPEC = "qemu-block"
SECTOR = 512
#: O_DIRECT needs buffers and offsets aligned to the logical block size; 4 KiB covers every disk.
DIRECT_ALIGN = 4096


def clause(label: str) -> pytest.MarkDecorator:
    """The clause mark of this suite (ids and statements in conformance/clauses/block.yaml)."""
    return pytest.mark.clause(SPEC, label)


def _supports_direct_io(directory: str) -> bool:
    """Whether an aligned O_DIRECT write succeeds in `directory` (tmpfs refuses O_DIRECT with EINVAL)."""
    try:
        fd, path = tempfile.mkstemp(prefix="odirect-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    except OSError:
        os.unlink(path)
        return False
    try:
        import mmap

        buf = mmap.mmap(-1, DIRECT_ALIGN)  # page-aligned, as O_DIRECT wants
        buf.write(b"\0" * DIRECT_ALIGN)
        return os.pwritev(fd, [buf], 0) == DIRECT_ALIGN
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)


def direct_io_dir() -> str:
    """The first candidate directory on a real disk file system: $REFVM_BLOCK_TMP, /var/tmp, <repo>/.tmp."""
    repo_tmp = Path(__file__).resolve().parents[2] / ".tmp"
    candidates = [os.environ.get("REFVM_BLOCK_TMP", ""), "/var/tmp", str(repo_tmp)]
    for cand in candidates:
        if not cand:
            continue
        Path(cand).mkdir(parents=True, exist_ok=True)
        if _supports_direct_io(cand):
            return cand
    pytest.fail(f"no directory supports O_DIRECT (tried {[c for c in candidates if c]}); set REFVM_BLOCK_TMP")


@pytest.fixture(scope="session")
def image_root() -> Iterator[str]:
    """A private directory for this session's images, on a file system where O_DIRECT works."""
    root = tempfile.mkdtemp(prefix="refvm-block-", dir=direct_io_dir())
    yield root
    for name in os.listdir(root):
        os.unlink(os.path.join(root, name))
    os.rmdir(root)


@pytest.fixture
def raw_image(image_root: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Make sparse raw images (default 8 MiB); removed after the test."""
    made: list[str] = []

    def make(size: int = 8 << 20, name: str = "disk") -> str:
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".raw", dir=image_root)
        os.ftruncate(fd, size)
        os.close(fd)
        made.append(path)
        return path

    yield make
    for path in made:
        if os.path.exists(path):
            os.unlink(path)


def drive_args(
    image: str, drive_id: str = "d0", drive_opts: Sequence[str] = (), dev_opts: Sequence[str] = ()
) -> list[str]:
    """`-drive file=IMG,if=none,id=ID,format=raw,OPTS -device virtio-blk-pci,drive=ID,disable-legacy=on`."""
    drive = ",".join([f"file={image}", "if=none", f"id={drive_id}", "format=raw", *drive_opts])
    dev = ",".join(["virtio-blk-pci", f"drive={drive_id}", "disable-legacy=on", *dev_opts])
    return ["-drive", drive, "-device", dev]


@dataclass
class BlockMachine:
    """A running target with virtio-blk functions; `qmp` is set when it was started with a QMP socket."""

    machine: Machine
    qmp: QmpDriver | None = None

    @property
    def qt(self) -> QtestSession:
        return self.machine.qt

    @property
    def pid(self) -> int:
        assert self.machine.qt.proc is not None
        return self.machine.qt.proc.pid

    def blk(self, index: int = 0) -> VirtioPciDevice:
        """The `index`-th modern virtio-blk function on bus 0 (in slot order), BARs mapped on first use."""
        key = f"blk{index}"
        if key not in self.machine.devices:
            funcs = [
                f for f in self.machine.functions
                if f.read32(0) == (0x1040 + DEVICE_ID["blk"]) << 16 | VIRTIO_VENDOR
            ]  # fmt: skip
            assert len(funcs) > index, f"virtio-blk #{index} not found: {[str(f) for f in self.machine.functions]}"
            self.machine.devices[key] = VirtioPciDevice(self.qt, funcs[index], self.machine.alloc).map(
                self.machine.bar_alloc
            )
        return self.machine.devices[key]

    def ready(self, index: int = 0, want: int = 0, drop: int = 0, size: int = 16) -> tuple[VirtioPciDevice, SplitQueue]:
        """Device `index` initialized (§3.1.1) with `want` features (as offered) and one split queue."""
        dev = self.blk(index)
        dev.initialize(want=want, drop=drop, driver_ok=False)
        vq = self.machine.split(dev, 0, min(size, dev.queue_max_size(0)))
        dev.driver_ok()
        return dev, vq


@pytest.fixture
def block_vm(target: Target, request: pytest.FixtureRequest) -> Iterator[Callable[..., BlockMachine]]:
    """Start a target over qtest with the given arguments (and a QMP socket with `qmp=True`).

    A target that refuses the argv (exits before connecting) SKIPs the test with its own words: that is the
    capability probe, so a feature a target lacks shows up as a skip, never as a failure.
    """
    sessions: list[QtestSession] = []
    qmps: list[QmpDriver] = []
    dirs: list[str] = []
    request.node._qtest_sessions = sessions

    def start(*args: str, qmp: bool = False) -> BlockMachine:
        extra: list[str] = []
        qmp_path = ""
        if qmp:
            d = tempfile.mkdtemp(prefix="blkqmp-")  # short: sun_path holds 108 bytes
            dirs.append(d)
            qmp_path = os.path.join(d, "qmp.sock")
            extra = ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
        machine = start_machine(target, [*extra, *args], sessions)
        bm = BlockMachine(machine)
        if qmp:
            bm.qmp = QmpDriver(qmp_path)
            qmps.append(bm.qmp)  # qemu.qmp has already negotiated capabilities
        return bm

    yield start
    for q in qmps:
        q.close()
    for s in sessions:
        s.close()
    for d in dirs:
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)

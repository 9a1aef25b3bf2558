"""QMP `stop` flushes every drive, as QEMU's vm_stop does (bdrv_flush_all once the vCPUs are paused).

What a user sees: after `stop`, the image file of a paused guest holds everything the guest wrote -- a qcow2
image's cached L1/L2 entries included -- so ``qemu-img check -U`` or a backup of the paused guest's disk reads
a consistent image with the data. The flush waits for a request the device is serving on another thread
(the ioeventfd I/O thread) instead of running beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from refvm.block.qcow2 import Qcow2Image, check_image, create_qcow2
from refvm.cli import parse_args
from refvm.machine import Machine

CS = 64 << 10


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "disk.qcow2"
    create_qcow2(str(img), 4 << 20, cluster_size=CS)
    return img


@pytest.fixture
def machine(image: Path, tmp_path: Path) -> Iterator[Machine]:
    argv = ["-accel", "qtest", "-qtest", f"unix:{tmp_path}/qtest.sock", "-nodefaults", "-m", "64",
            "-drive", f"if=none,id=d0,file={image},format=qcow2", "-device", "virtio-blk-pci,drive=d0,id=disk0"]
    m = Machine(parse_args(argv).config)
    yield m
    m._close_chardevs()


def _file_reads(image: Path, offset: int, length: int) -> bytes:
    """What another process opening the image file now would read (not the running machine's cache)."""
    with Qcow2Image(str(image), readonly=True) as other:
        return other.read(offset, length)


def test_stop_writes_cached_qcow2_metadata_into_the_file(machine: Machine, image: Path) -> None:
    drive = machine.backends.drives["d0"]
    drive.pwrite(3 * CS, b"\x5a" * 5000)  # a completed guest write: new cluster, its L2 entry still cached
    assert _file_reads(image, 3 * CS, 5000) == bytes(5000)  # not yet in the file: the test can fail
    assert machine.status() == "running"
    machine.pause()
    assert machine.status() == "paused"
    assert _file_reads(image, 3 * CS, 5000) == b"\x5a" * 5000
    assert check_image(str(image)).corruptions == 0


def test_stop_waits_for_the_request_the_device_is_serving(machine: Machine, image: Path) -> None:
    blk = machine.devices.fronts()[0]
    drive = machine.backends.drives["d0"]
    assert blk.backend is drive
    in_request, release = threading.Event(), threading.Event()

    def io_thread() -> None:  # the ioeventfd thread in the middle of a request: it holds the device lock
        with blk.lock:
            in_request.set()
            release.wait(10)
            drive.pwrite(0, b"\xc3" * CS)

    worker = threading.Thread(target=io_thread)
    worker.start()
    assert in_request.wait(10)
    stopper = threading.Thread(target=machine.pause)
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive()  # the flush waits for the request ...
    release.set()
    worker.join(10)
    stopper.join(10)
    assert not stopper.is_alive()
    assert _file_reads(image, 0, CS) == b"\xc3" * CS  # ... and then makes it durable too


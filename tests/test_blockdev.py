"""-blockdev: QEMU's node syntax mapped onto refvm drives, and a guest reading through it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conformance.drivers.console import SerialConsole
from conformance.drivers.guests import probe_elf
from refvm.blockdev import BlockdevError, blockdevs_to_drives
from refvm.cli import UsageError, parse_args
from tests.conftest import kvm_available, require


def test_inline_protocol_node() -> None:
    drives = blockdevs_to_drives(
        ["driver=qcow2,node-name=disk0,file.driver=file,file.filename=/x.qcow2,read-only=on,cache.direct=on"]
    )
    assert drives == {
        "disk0": {"file": "/x.qcow2", "format": "qcow2", "id": "disk0", "read-only": "on", "cache.direct": "on"}
    }


def test_referenced_protocol_node_and_json() -> None:
    drives = blockdevs_to_drives(
        [
            '{"driver": "file", "node-name": "f0", "filename": "/a.raw", "cache": {"no-flush": true}}',
            "driver=raw,node-name=r0,file=f0",
            "driver=file,node-name=bare,filename=/b.raw",
        ]
    )
    assert drives["r0"] == {"file": "/a.raw", "format": "raw", "id": "r0", "cache.no-flush": "on"}
    assert drives["bare"] == {"file": "/b.raw", "format": "raw", "id": "bare"}
    assert "f0" not in drives, "a protocol node used by a format node is not a drive of its own"


@pytest.mark.parametrize(
    "texts,message",
    [
        (["driver=qcow2,file.driver=file,file.filename=/x"], "Parameter 'node-name' is missing"),
        (["driver=vmdk,node-name=a,file.driver=file,file.filename=/x"], "'vmdk' is not a block driver"),
        (["driver=raw,node-name=a,file=nope"], "Cannot find device='' nor node-name='nope'"),
        (["driver=raw,node-name=a,file.driver=file,file.filename=/x,bogus=1"], "Parameter 'bogus' is unexpected"),
        (["driver=raw,node-name=a"], "Parameter 'file' is missing"),
        (["driver=file,node-name=a,filename=/x", "driver=file,node-name=a,filename=/y"], "Duplicate nodes"),
    ],
)
def test_errors_name_the_option(texts: list[str], message: str) -> None:
    with pytest.raises(BlockdevError, match=message):
        blockdevs_to_drives(texts)


def test_cli_reports_blockdev_errors_in_one_line() -> None:
    with pytest.raises(UsageError, match=r"^-blockdev: Parameter 'node-name' is missing"):
        parse_args(["-kernel", "k", "-blockdev", "driver=raw,file.driver=file,file.filename=/x"])


def test_guest_reads_a_qemu_written_qcow2_through_blockdev(tmp_path: Path) -> None:
    require(kvm_available(), "/dev/kvm is missing or not accessible")
    require(shutil.which("qemu-img") is not None and shutil.which("qemu-io") is not None, "qemu-utils not installed")
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5c 0 512", str(image)], check=True, capture_output=True)
    argv = [
        sys.executable, "-m", "refvm", "-watchdog-timeout", "60", "-nodefaults", "-display", "none",
        "-serial", "stdio", "-kernel", str(probe_elf()),
        "-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={image}",
        "-device", "virtio-blk-pci,drive=disk0,disable-legacy=on",
    ]  # fmt: skip
    with SerialConsole(argv, timeout=30) as con:
        con.wait_prompt()
        con.command("pciassign")
        out = con.command("blk read 0")
    assert "data " + " ".join(["5c"] * 32) in out, out
    assert f"crc32 0x{zlib.crc32(bytes([0x5C]) * 512):08x}" in out
    assert "status 0 (ok)" in out

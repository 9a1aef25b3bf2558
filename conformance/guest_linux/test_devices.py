"""virtio-rng, virtio-console and virtio-balloon through Linux's drivers."""

from __future__ import annotations

import time

import pytest

from conformance.guest_linux.conftest import MEMORY_MIB, PORT_NAME, clause

pytestmark = pytest.mark.hw_kvm
MIB = 1 << 20


def hexbytes(out: str) -> bytes:
    return bytes.fromhex("".join(out.split()))


@clause("rng/read")
def test_hwrng_reads_from_virtio_rng(vm) -> None:  # noqa: ANN001
    assert vm.guest.check("cat /sys/class/misc/hw_random/rng_current").startswith("virtio_rng")
    first = hexbytes(vm.guest.check("od -An -tx1 -N64 /dev/hwrng"))
    second = hexbytes(vm.guest.check("od -An -tx1 -N64 /dev/hwrng"))
    assert len(first) == len(second) == 64
    assert first != second and len(set(first)) > 8, "the entropy device returned constant bytes"


@clause("console/port-name")
def test_port_name_and_data_reach_host(vm) -> None:  # noqa: ANN001
    ports = vm.guest.check("grep -H . /sys/class/virtio-ports/*/name")
    lines = [ln for ln in ports.splitlines() if ln.endswith(":" + PORT_NAME)]
    assert lines, f"no virtio port named {PORT_NAME}: {ports!r}"
    dev = lines[0].split("/")[4]
    vm.guest.check(f"echo hello-from-{dev} > /dev/{dev}")
    deadline = time.monotonic() + 10
    while f"hello-from-{dev}\n" not in vm.port_out.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vm.port_out.read_text() == f"hello-from-{dev}\n"


def wait_balloon(vm, actual: int, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while (got := vm.qmp.execute("query-balloon")["actual"]) != actual:
        assert time.monotonic() < deadline, f"query-balloon actual {got} never reached {actual}"
        time.sleep(0.1)


@clause("balloon/inflate")
def test_balloon_inflate_and_deflate_seen_by_query_balloon(vm) -> None:  # noqa: ANN001
    total = MEMORY_MIB * MIB
    wait_balloon(vm, total)
    memtotal_before = int(vm.guest.check("grep MemTotal /proc/meminfo").split()[1])
    vm.qmp.execute("balloon", value=total - 64 * MIB)
    wait_balloon(vm, total - 64 * MIB)
    memtotal_inflated = int(vm.guest.check("grep MemTotal /proc/meminfo").split()[1])
    assert memtotal_before - memtotal_inflated >= 60 * 1024, "the guest still counts the ballooned pages"
    vm.qmp.execute("balloon", value=total)
    wait_balloon(vm, total)

"""virtio-net through Linux's virtio_net: the MAC and link state the device reports, and packets both ways
between the guest and a host-side network namespace over a tap (addresses private to the suite)."""

from __future__ import annotations

import subprocess

import pytest

from conformance.guest_linux.conftest import GUEST_IP, HOST_IP, MAC, clause
from conformance.plugin import require

pytestmark = pytest.mark.hw_kvm


def eth0(vm) -> str:  # noqa: ANN001
    return vm.guest.check("ls /sys/bus/virtio/drivers/virtio_net/*/net/").split()[0]


@clause("net/config")
def test_guest_sees_configured_mac(vm) -> None:  # noqa: ANN001
    assert vm.guest.check(f"cat /sys/class/net/{eth0(vm)}/address") == MAC


@clause("net/link")
def test_link_comes_up_and_follows_set_link(vm) -> None:  # noqa: ANN001
    dev = eth0(vm)
    vm.guest.check(f"ip link set {dev} up")
    carrier = f"cat /sys/class/net/{dev}/carrier"
    vm.guest.wait_for(carrier, lambda out: out == "1", timeout=10)
    vm.qmp.execute("set_link", name="net0", up=False)
    vm.guest.wait_for(carrier, lambda out: out == "0", timeout=10)
    vm.qmp.execute("set_link", name="net0", up=True)
    vm.guest.wait_for(carrier, lambda out: out == "1", timeout=10)
    vm.guest.wait_for(f"cat /sys/class/net/{dev}/operstate", lambda out: out == "up", timeout=10)


@clause("net/ping")
def test_ping_between_guest_and_host_namespace(vm) -> None:  # noqa: ANN001
    dev = eth0(vm)
    vm.guest.check(f"ip link set {dev} up && ip addr add {GUEST_IP}/24 dev {dev}")
    out = vm.guest.check(f"ping -c 3 -W 5 {HOST_IP}", timeout=30)
    assert "3 packets received" in out
    busybox = "/bin/busybox"
    require(subprocess.run(["test", "-x", busybox]).returncode == 0, "busybox-static not installed (host ping)")
    proc = subprocess.run(
        ["ip", "netns", "exec", vm.netns, busybox, "ping", "-c", "3", "-W", "5", GUEST_IP],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "3 packets received" in proc.stdout, proc.stdout + proc.stderr

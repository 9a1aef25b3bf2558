"""Migration between refvmd daemons on separate 'hosts' (issue 12 item 2): each daemon, and the QEMU it starts,
runs in its own network namespace; the namespaces reach each other only through veth pairs on a bridge, in a
private subnet that exists nowhere else. The storage directory is shared. A guest goes around a ring of three
hosts; a cable pulled mid-migration stalls it, domjobabort ends it, and the guest runs on at the source. Each
daemon also listens on plain TCP in its namespace (--listen-tcp), so a --p2p --tunnelled migration given the
destination's qemu+tcp:// URI carries the guest daemon to daemon across the bridge, and a pulled cable cuts it."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from refvm.mgmt.rpc.client import TCP_PORT
from tests.conftest import require
from tests.netns import Subnet, ip
from tests.test_mgmt_libvirt_clients import event_loop  # noqa: F401 - the fixture
from tests.test_mgmt_migration import (
    PATTERN,
    PATTERN_ADDR,
    PROBE,
    Host,
    assert_arrived,
    console,
    libvirt,
    start_guest,
    start_slow_migration,
    wait_gone,
)


@pytest.fixture(scope="module")
def ring(tmp_path_factory, request):
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "network namespaces need root and iproute2")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 not installed")
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients) is not installed")
    require(PROBE.exists(), f"{PROBE} not built (make -C guests/probe)")
    request.getfixturevalue("event_loop")
    tmp = tmp_path_factory.mktemp("netns")
    (tmp / "shared").mkdir()
    subnet = Subnet(3)
    hosts: list[Host] = []
    try:
        for i in range(3):
            hosts.append(Host(tmp / f"h{i}", subnet.prefix(i), {"REFVMD_MIGRATION_HOST": subnet.address(i)},
                              args=["--listen-tcp", f"{subnet.address(i)}:{TCP_PORT}"]))
        yield subnet, hosts, tmp / "shared"
    finally:
        for host in hosts:
            host.close()
        subnet.close()


def test_ring_of_three_namespaced_hosts(ring) -> None:
    """a -> b (direct), b -> c (--p2p), c -> a (migrateToURI3): the streams cross the bridge, the guest's RAM and
    console arrive each time."""
    _, (a, b, c), shared = ring
    start_guest(a, shared, "nsring")
    assert a.virsh("migrate", "--live", "nsring", b.uri).returncode == 0
    assert_arrived(a, b, "nsring")
    out = b.virsh("migrate", "--live", "--p2p", "nsring", c.uri)
    assert out.returncode == 0, out.stderr
    assert_arrived(b, c, "nsring")
    c.conn.lookupByName("nsring").migrateToURI3(a.uri, {}, libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE)
    assert_arrived(c, a, "nsring")
    a.conn.lookupByName("nsring").destroy()


def test_link_cut_mid_migration(ring) -> None:
    """b's cable is pulled while RAM flows: no byte moves any more; domjobabort fails the job with libvirt's
    text, the guest runs on at a with its memory, and b is left with nothing."""
    cut_mid_migration(ring, "nscut")


def cut_mid_migration(ring, name: str, extra: tuple[str, ...] = (), dest_uri: str | None = None) -> None:
    """Pull b's cable during a slow a -> b migration, wait until no byte moves, domjobabort: the job fails with
    libvirt's text, the guest runs on at a with its memory; b drops its half (at once for native data: the
    source's client left; for a tunnel once the cable is back and its daemon connection breaks)."""
    subnet, (a, b, _), shared = ring
    first = start_slow_migration(a, b, shared, name, extra, dest_uri)
    try:
        subnet.cut(1)
        dom = a.conn.lookupByName(name)
        # the buffers on the way (sockets; a tunnel's TCP send buffer too) take seconds to fill at 1 MiB/s
        deadline, before = time.monotonic() + 20, -1
        while dom.jobInfo()[4] != before:
            assert time.monotonic() < deadline, "data still flows over a pulled cable"
            before = dom.jobInfo()[4]
            time.sleep(1.5)
        assert a.virsh("domjobabort", name).returncode == 0
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
        ip("link", "set", "p1", "up", ns=subnet.bridge_ns)
    assert first.returncode == 1 and "operation aborted: job 'migration out' canceled by client" in stderr, stderr
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert PATTERN in console(a, name, f"peek {PATTERN_ADDR}")
    wait_gone(b, name, 30)
    dom.destroy()


def test_private_subnet_is_invisible_outside(ring) -> None:
    """The hosts' addresses exist only inside their namespaces."""
    subnet, _, _ = ring
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert subnet.address(0) not in out
    inside = subprocess.run(subnet.prefix(0) + ["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert subnet.address(0) in inside


def tcp_uri(subnet: Subnet, i: int) -> str:
    return f"qemu+tcp://{subnet.address(i)}:{TCP_PORT}/session"


def test_tunnelled_over_tcp_between_namespaces(ring) -> None:
    """a -> b --p2p --tunnelled to b's qemu+tcp:// URI: the source daemon connects to b across the bridge and the
    guest's RAM travels inside that connection (no VMM-to-VMM socket); b -> a the same way back."""
    subnet, (a, b, _), shared = ring
    start_guest(a, shared, "nstun")
    out = a.virsh("migrate", "--live", "--p2p", "--tunnelled", "nstun", tcp_uri(subnet, 1))
    assert out.returncode == 0, out.stderr
    assert_arrived(a, b, "nstun")
    out = b.virsh("migrate", "--live", "--p2p", "--tunnelled", "nstun", tcp_uri(subnet, 0))
    assert out.returncode == 0, out.stderr
    assert_arrived(b, a, "nstun")
    a.conn.lookupByName("nstun").destroy()


def test_link_cut_mid_tunnelled_migration(ring) -> None:
    """The same with the guest's RAM inside the daemons' TCP connection (--p2p --tunnelled to qemu+tcp://)."""
    cut_mid_migration(ring, "nstcut", ("--p2p", "--tunnelled"), tcp_uri(ring[0], 1))

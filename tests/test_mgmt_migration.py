"""Migration through refvmd (issue 12): two real refvmd daemons on this machine, each with its own socket and
state directory, sharing one storage directory, move a running probe guest (qemu driver: a real QEMU under TCG)
with the real `virsh migrate` (managed direct and --p2p) and libvirt-python's migrate/migrate3/migrateToURI3.
The guest's memory and console are checked on the destination, the domain is gone from the source, and the
lifecycle events are libvirt's. Faults: refused flags, the same host, an unreachable destination, a second
migration while one runs, domjobabort (the guest runs on at the source, nothing is left at the destination)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from refvm.mgmt import vir
from tests.conftest import IN_CI, require
from tests.mgmt_daemon import Refvmd
from tests.test_mgmt_driver import console_command
from tests.test_mgmt_libvirt_clients import event_loop  # noqa: F401 - the fixture

libvirt = __import__("libvirt") if IN_CI else pytest.importorskip("libvirt")

PROBE = Path(__file__).resolve().parent.parent / "guests" / "probe" / "build" / "probe.elf"
E = vir
#: the probe writes, then the destination reads back: its RAM really moved
PATTERN_ADDR, PATTERN = "0x500000", "0xcafef00d"


class Host:
    """One 'host': a refvmd process serving qemu:///session, a libvirt-python connection and its events."""

    def __init__(self, tmp: Path | None, prefix: list[str] | None = None, env: dict[str, str] | None = None,
                 driver: str = "qemu", daemon: Refvmd | None = None, args: list[str] | None = None) -> None:
        """A new daemon in ``tmp``, or another driver's view of an existing ``daemon`` (which it leaves running)."""
        self.owns_daemon = daemon is None
        if daemon is None:
            assert tmp is not None
            tmp.mkdir()
            daemon = Refvmd(tmp, prefix, env, args)
            daemon.start()
        self.daemon = daemon
        self.uri = self.daemon.uri.replace("refvm+unix", f"{driver}+unix")
        self.conn = libvirt.open(self.uri)
        self.events: list[tuple[str, int, int]] = []
        self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         lambda c, d, ev, det, o: self.events.append((d.name(), ev, det)), None)

    def names(self) -> list[str]:
        return sorted(d.name() for d in self.conn.listAllDomains())

    def lifecycle(self, name: str, count: int, timeout: float = 20.0) -> list[tuple[int, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [(ev, det) for n, ev, det in self.events if n == name]
            if len(got) >= count:
                return got
            time.sleep(0.02)
        return [(ev, det) for n, ev, det in self.events if n == name]

    def virsh(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        self.conn.close()
        if self.owns_daemon:
            self.daemon.stop()


def require_migration_tools(request) -> None:
    """QEMU, virsh and the probe guest; libvirt-python's event loop running in a thread."""
    request.getfixturevalue("event_loop")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 not installed")
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients) is not installed")
    require(PROBE.exists(), f"{PROBE} not built (make -C guests/probe)")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, request):
    """Two hosts and the shared storage directory (libvirt-python's event loop runs in a thread)."""
    require_migration_tools(request)
    tmp = tmp_path_factory.mktemp("migration")
    (tmp / "shared").mkdir()
    a, b = Host(tmp / "a"), Host(tmp / "b")
    yield a, b, tmp / "shared"
    for host in (a, b):
        host.close()


def guest_xml(shared: Path, name: str) -> str:
    disk = shared / f"{name}.img"  # shared storage: both hosts see the same image
    disk.write_bytes(b"\0" * 1024 * 1024)
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
            f"<os><type>hvm</type><kernel>{PROBE}</kernel></os><devices><disk type='file'>"
            f"<driver name='qemu' type='raw'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
            "<serial type='pty'/><console type='pty'/></devices></domain>")


def console(host: Host, name: str, command: str) -> str:
    """Run a probe command on the domain's serial pty (from its live XML) and return the output."""
    xml = host.conn.lookupByName(name).XMLDesc(0)
    path = ET.fromstring(xml).find("./devices/serial/source").get("path")
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        return console_command(fd, command.encode()).decode(errors="replace")
    finally:
        os.close(fd)


def start_guest(host: Host, shared: Path, name: str, persistent: bool = False):
    xml = guest_xml(shared, name)
    dom = host.conn.defineXML(xml) if persistent else host.conn.createXML(xml, 0)
    if persistent:
        dom.create()
    assert "ok" in console(host, name, f"poke {PATTERN_ADDR} {PATTERN}")
    return dom


def assert_arrived(src: Host, dst: Host, name: str) -> None:
    """The guest runs on dst (reason migrated) with the RAM it had, its console answers; src runs it no more."""
    dom = dst.conn.lookupByName(name)
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED]
    assert PATTERN in console(dst, name, f"peek {PATTERN_ADDR}")
    assert name not in [d.name() for d in src.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]


SOURCE_EVENTS = [(E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED),
                 (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)]
DEST_EVENTS = [(E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_MIGRATED),
               (E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)]


@pytest.mark.parametrize("mode", ["direct", "p2p"])
def test_virsh_migrate_live_moves_the_guest_with_libvirts_events(hosts, mode: str) -> None:
    a, b, shared = hosts
    name = f"virsh-{mode}"
    start_guest(a, shared, name)
    a.events.clear()
    b.events.clear()
    extra = ["--p2p"] if mode == "p2p" else []
    out = a.virsh("migrate", "--live", *extra, name, b.uri)
    assert out.returncode == 0, out.stderr
    assert_arrived(a, b, name)
    assert a.lifecycle(name, 2) == SOURCE_EVENTS
    assert b.lifecycle(name, 2) == DEST_EVENTS
    assert name not in a.names()  # transient: gone from the source altogether
    b.conn.lookupByName(name).destroy()


def test_persistent_source_stays_defined_and_shut_off_migrated(hosts) -> None:
    """libvirt's semantics without --persistent/--undefinesource: the source keeps its (inactive) definition,
    the destination runs a transient domain."""
    a, b, shared = hosts
    start_guest(a, shared, "persist", persistent=True)
    out = a.virsh("migrate", "--live", "persist", b.uri)
    assert out.returncode == 0, out.stderr
    assert_arrived(a, b, "persist")
    src = a.conn.lookupByName("persist")
    assert src.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED]
    assert src.isPersistent() and not b.conn.lookupByName("persist").isPersistent()
    b.conn.lookupByName("persist").destroy()
    src.undefine()


def test_persistent_undefinesource_suspend(hosts) -> None:
    """--persistent --undefinesource --suspend: defined on the destination (DEFINED ADDED) and left paused
    (SUSPENDED PAUSED, reason user), gone altogether from the source; it runs on when resumed."""
    a, b, shared = hosts
    start_guest(a, shared, "moved", persistent=True)
    b.events.clear()
    out = a.virsh("migrate", "--live", "--persistent", "--undefinesource", "--suspend", "moved", b.uri)
    assert out.returncode == 0, out.stderr
    dom = b.conn.lookupByName("moved")
    assert dom.isPersistent() and dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    assert "moved" not in a.names()
    assert b.lifecycle("moved", 3) == [(E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_MIGRATED),
                                       (E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_ADDED),
                                       (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)]
    dom.resume()
    assert PATTERN in console(b, "moved", f"peek {PATTERN_ADDR}")
    dom.destroy()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF  # the definition stays
    dom.undefine()


def test_libvirt_python_migrate_migrate3_and_migrate_to_uri3_ring(hosts) -> None:
    """dom.migrate (protocol v3 without parameters), dom.migrate3 (with) and migrateToURI3 --p2p, a -> b -> a -> b;
    a non-live migration pauses first, as libvirt's does."""
    a, b, shared = hosts
    start_guest(a, shared, "ring")
    ddom = a.conn.lookupByName("ring").migrate(b.conn, libvirt.VIR_MIGRATE_LIVE, None, None, 0)
    assert ddom.name() == "ring"
    assert_arrived(a, b, "ring")
    b.conn.lookupByName("ring").migrateToURI3(a.uri, {}, libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE)
    assert_arrived(b, a, "ring")
    b.events.clear()
    a.conn.lookupByName("ring").migrate3(b.conn, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 100}, 0)
    assert_arrived(a, b, "ring")
    assert b.lifecycle("ring", 2) == DEST_EVENTS
    b.conn.lookupByName("ring").destroy()


def test_refused_flags_same_host_and_unreachable_destination(hosts) -> None:
    """One line each; the guest runs on at the source and the destination has nothing."""
    a, b, shared = hosts
    start_guest(a, shared, "refuse")
    for flags, word in ((["--copy-storage-all"], "copy storage"), (["--copy-storage-inc"], "copy storage")):
        out = a.virsh("migrate", "--live", *flags, "refuse", b.uri)
        assert out.returncode == 1 and word in out.stderr, (flags, out.stderr)
        assert re.fullmatch(r"error: argument unsupported: [^\n]*\n*", out.stderr), out.stderr
    out = a.virsh("migrate", "--live", "refuse", a.uri)
    assert out.returncode == 1 and "Attempt to migrate guest to the same host" in out.stderr, out.stderr
    gone = "qemu+unix:///session?socket=" + str(shared / "no-such-socket")
    out = a.virsh("migrate", "--live", "--p2p", "refuse", gone)
    assert out.returncode == 1, out.stderr
    assert f"operation failed: Failed to connect to remote libvirt URI {gone}" in out.stderr
    with pytest.raises(libvirt.libvirtError) as err:
        a.conn.lookupByName("refuse").migrateToURI3(gone, {}, libvirt.VIR_MIGRATE_PEER2PEER)
    assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED
    assert a.conn.lookupByName("refuse").state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert "refuse" not in b.names()
    assert "probe>" in console(a, "refuse", "echo still here")
    a.conn.lookupByName("refuse").destroy()


def wait_gone(host: Host, name: str, timeout: float = 10.0) -> None:
    """The domain disappears from ``host`` (a half-migrated guest is cleaned up asynchronously)."""
    deadline = time.monotonic() + timeout
    while name in host.names() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert name not in host.names()


def start_slow_migration(src: Host, dst: Host, shared: Path, name: str, extra: tuple[str, ...] = (),
                         dest_uri: str | None = None) -> subprocess.Popen:
    """virsh migrate of a guest with 16 MiB of written RAM at 1 MiB/s, returned once domjobinfo shows it
    and RAM is flowing (the job exists from Begin on, before the destination is prepared)."""
    start_guest(src, shared, name)
    assert "bytes ok" in console(src, name, "memtest 0x600000 0x1000000")
    assert src.virsh("migrate-setspeed", name, "1").returncode == 0
    assert src.virsh("migrate-getspeed", name).stdout.strip() == "1"
    proc = subprocess.Popen(["virsh", "-c", src.uri, "migrate", "--live", *extra, name, dest_uri or dst.uri],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    dom = src.conn.lookupByName(name)
    while "Unbounded" not in src.virsh("domjobinfo", name).stdout or dom.jobInfo()[4] == 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"the migration did not start: {proc.communicate()}")
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("extra", [(), ("--p2p", "--tunnelled")], ids=["direct-native", "p2p-tunnelled"])
def test_second_migration_is_operation_invalid_and_domjobabort_keeps_the_source(hosts, extra) -> None:
    """A slow migration (16 MiB of written RAM at 1 MiB/s): domjobinfo shows it, a second migration gets
    VIR_ERR_OPERATION_INVALID, domjobabort ends it with libvirt's text, the guest runs on at the source and
    the destination is left with nothing (STARTED then STOPPED FAILED there). Tunnelled, the destination got the
    stream's abort and Finish(cancelled) from the source daemon."""
    a, b, shared = hosts
    b.events.clear()
    name = "-".join(("slow", *extra)).replace("--", "")
    first = start_slow_migration(a, b, shared, name, extra)
    try:
        with pytest.raises(libvirt.libvirtError) as err:
            a.conn.lookupByName(name).migrate(b.conn, libvirt.VIR_MIGRATE_LIVE, None, None, 0)
        assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
        assert f"another migration job is already running for domain '{name}'" in str(err.value)
        assert a.virsh("migrate-setmaxdowntime", name, "500").returncode == 0
        assert a.virsh("domjobabort", name).returncode == 0
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1 and "operation aborted: job 'migration out' canceled by client" in stderr, stderr
    assert a.conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert name not in b.names()
    assert b.lifecycle(name, 2) == [(E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_MIGRATED),
                                    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_FAILED)]
    assert "Job type:         None" in a.virsh("domjobinfo", name).stdout
    assert "probe>" in console(a, name, "echo still here")
    a.conn.lookupByName(name).destroy()


def test_destination_daemon_killed_during_perform(hosts, tmp_path: Path) -> None:
    """The destination refvmd is killed while the stream flows: the migration fails, the guest runs on at the
    source with its memory, and the restarted destination daemon kills the half-migrated guest it finds."""
    a, _, shared = hosts
    c = Host(tmp_path / "c")
    try:
        first = start_slow_migration(a, c, shared, "orphan")
        status = c.daemon.state_dir / "qemu-session" / "run" / "orphan.status"
        pid = json.loads(status.read_text())["pid"]
        c.daemon.proc.kill()
        c.daemon.proc.wait()
        assert a.virsh("migrate-setspeed", "orphan", "100000").returncode == 0  # let the stream end now
        _, stderr = first.communicate(timeout=60)
        assert first.returncode == 1, stderr
        dom = a.conn.lookupByName("orphan")
        assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED]
        assert PATTERN in console(a, "orphan", f"peek {PATTERN_ADDR}")
        c.daemon.socket.unlink()
        c.daemon.start()
        c.conn = libvirt.open(c.uri)
        assert c.names() == [] and not status.exists()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the destination VMM was left running"
        dom.destroy()
    finally:
        c.close()


def test_ring_of_three_hosts(hosts, tmp_path: Path) -> None:
    """One guest around a -> b -> c -> a (direct, --p2p, migrateToURI3), its RAM and console intact at the end."""
    a, b, shared = hosts
    c = Host(tmp_path / "c")
    try:
        start_guest(a, shared, "ring3")
        assert a.virsh("migrate", "--live", "ring3", b.uri).returncode == 0
        assert_arrived(a, b, "ring3")
        assert b.virsh("migrate", "--live", "--p2p", "ring3", c.uri).returncode == 0
        assert_arrived(b, c, "ring3")
        c.conn.lookupByName("ring3").migrateToURI3(a.uri, {}, libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE)
        assert_arrived(c, a, "ring3")
        assert "ring3" not in b.names() + c.names()
        a.conn.lookupByName("ring3").destroy()
    finally:
        c.close()


@pytest.mark.parametrize("extra", [(), ("--p2p", "--tunnelled")], ids=["direct-native", "p2p-tunnelled"])
def test_source_daemon_killed_during_perform(hosts, tmp_path: Path, extra) -> None:
    """The source refvmd is killed while the stream flows: the restarted daemon cancels the migration and the
    guest runs on there with its memory; the destination dropped its half when the client went away (tunnelled:
    the source daemon itself was that client, and the tunnel's end closed the source VMM's stream)."""
    _, b, shared = hosts
    c = Host(tmp_path / "c")
    try:
        name = "-".join(("srcgone", *extra)).replace("--", "")
        first = start_slow_migration(c, b, shared, name, extra)
        c.daemon.proc.kill()
        c.daemon.proc.wait()
        first.communicate(timeout=60)
        assert first.returncode == 1
        c.daemon.socket.unlink()
        c.daemon.start()
        c.conn = libvirt.open(c.uri)
        dom = c.conn.lookupByName(name)
        assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED]
        assert PATTERN in console(c, name, f"peek {PATTERN_ADDR}")
        wait_gone(b, name)
        dom.destroy()
    finally:
        c.close()

"""Both axes of libvirt's migration through refvmd (issue 12): control direct or peer-to-peer, data native (VMM
to VMM over tcp) or tunnelled (through the daemons, PrepareTunnel3Params' stream), for QEMU domains (TCG) and
refvm domains (KVM). Two real refvmd daemons share a storage directory; the real `virsh migrate` moves the
probe guest, which wrote a seeded pattern into its RAM: the pattern checks intact on the destination, the
console answers there, the domain is gone from the source. Direct-tunnelled is refused as libvirt refuses it;
virsh's --timeout suspends the guest through refvmd mid-migration; --migrateuri picks the native data port;
the destination daemon killed mid-stream leaves the source running."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from refvm.mgmt import vir as E
from refvm.mgmt.drivers.base import DomainRef
from refvm.mgmt.errors import VirError
from refvm.mgmt.rpc.client import RpcClient
from refvm.mgmt.rpc.protocol import Proc
from refvm.mgmt.rpc.types import pack_domain
from refvm.mgmt.rpc.xdr import Packer
from tests.conftest import kvm_available, require
from tests.test_mgmt_libvirt_clients import event_loop  # noqa: F401 - the fixture
from tests.test_mgmt_migration import (
    Host,
    console,
    guest_xml,
    hosts,  # noqa: F401 - the fixture
    libvirt,
    start_slow_migration,
)

#: START LEN SEED of the probe's `pattern fill|check`: 64 KiB (~0.4 s of guest time on kvm-pvm)
PATTERN = ("0x200000", "0x10000", "4242")
MODES = {"direct-native": (), "p2p-native": ("--p2p",), "p2p-tunnelled": ("--p2p", "--tunnelled")}


@pytest.fixture(scope="module")
def pair(hosts):  # noqa: F811 - test_mgmt_migration's fixture
    """Two refvmd daemons; each is reached as qemu:///session and as refvm:///session."""
    a, b, shared = hosts
    views = [Host(None, driver="refvm", daemon=host.daemon) for host in (a, b)]
    yield {"qemu": (a, b), "refvm": tuple(views)}, shared
    for host in views:
        host.close()


def boot(host: Host, shared: Path, name: str, driver: str, persistent: bool = False):
    xml = guest_xml(shared, name)
    if driver == "refvm":
        require(kvm_available(), "refvm domains need /dev/kvm")
        xml = xml.replace("type='qemu'", "type='kvm'")
    dom = host.conn.defineXML(xml) if persistent else host.conn.createXML(xml, 0)
    if persistent:
        dom.create()
    assert "bytes written" in console(host, name, "pattern fill " + " ".join(PATTERN))
    return dom


def assert_moved(src: Host, dst: Host, name: str) -> None:
    """Running on dst (reason migrated) with its RAM's pattern and a live console; not running on src."""
    assert dst.conn.lookupByName(name).state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED]
    assert f"pattern: {int(PATTERN[1], 0)} bytes ok" in console(dst, name, "pattern check " + " ".join(PATTERN))
    assert "probe>" in console(dst, name, "echo alive")
    active = src.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    assert name not in [d.name() for d in active]


@pytest.mark.parametrize("driver", ["qemu", "refvm"])
@pytest.mark.parametrize("mode", list(MODES))
def test_each_combination_moves_the_probe_guest(pair, driver: str, mode: str) -> None:
    (a, b), shared = pair[0][driver], pair[1]
    name = f"{driver}-{mode}"
    boot(a, shared, name, driver)
    out = a.virsh("migrate", "--live", *MODES[mode], name, b.uri)
    assert out.returncode == 0, out.stderr
    assert_moved(a, b, name)
    assert name not in [d.name() for d in a.conn.listAllDomains()]  # transient: gone from the source
    b.conn.lookupByName(name).destroy()


def test_libvirt_python_migrate_to_uri3_tunnelled(pair) -> None:
    """migrateToURI3(PEER2PEER | TUNNELLED | LIVE) from libvirt-python, there and back."""
    (a, b), shared = pair[0]["qemu"], pair[1]
    boot(a, shared, "py-tun", "qemu")
    flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_TUNNELLED | libvirt.VIR_MIGRATE_LIVE
    a.conn.lookupByName("py-tun").migrateToURI3(b.uri, {}, flags)
    assert_moved(a, b, "py-tun")
    b.conn.lookupByName("py-tun").migrateToURI3(a.uri, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 1000}, flags)
    assert_moved(b, a, "py-tun")
    a.conn.lookupByName("py-tun").destroy()


@pytest.mark.parametrize("driver", ["qemu", "refvm"])
def test_tunnelled_persistent_undefinesource(pair, driver: str) -> None:
    """--persistent --undefinesource over the tunnel: defined on the destination, gone from the source."""
    (a, b), shared = pair[0][driver], pair[1]
    name = f"{driver}-persist"
    boot(a, shared, name, driver, persistent=True)
    out = a.virsh("migrate", "--live", "--p2p", "--tunnelled", "--persistent", "--undefinesource", name, b.uri)
    assert out.returncode == 0, out.stderr
    assert_moved(a, b, name)
    assert name not in [d.name() for d in a.conn.listAllDomains()]
    dom = b.conn.lookupByName(name)
    assert dom.isPersistent()
    dom.destroy()
    dom.undefine()


def test_direct_tunnelled_is_refused_as_libvirt_refuses_it(pair) -> None:
    """--tunnelled without --p2p: libvirt's client refuses it before any daemon is asked (VIR_ERR_INVALID_ARG in
    libvirt 9, its text); refvmd refuses a raw Perform3 with the same flags too. The guest runs on, the
    destination has nothing."""
    (a, b), shared = pair[0]["qemu"], pair[1]
    boot(a, shared, "direct-tun", "qemu")
    out = a.virsh("migrate", "--live", "--tunnelled", "direct-tun", b.uri)
    assert out.returncode == 1
    assert "cannot perform tunnelled migration without using peer2peer flag" in out.stderr, out.stderr
    dom = a.conn.lookupByName("direct-tun")
    with pytest.raises(libvirt.libvirtError) as err:
        dom.migrate3(b.conn, {}, libvirt.VIR_MIGRATE_TUNNELLED)
    assert err.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG, err.value
    assert "cannot perform tunnelled migration without using peer2peer flag" in str(err.value)
    raw = Packer()  # Perform3Params(dom, dconnuri NULL, params [], cookie "", flags) as a raw client sends it
    pack_domain(raw, DomainRef("direct-tun", dom.UUID(), dom.ID()))
    raw.opt_string(None)
    raw.uint(0)
    raw.opaque(b"")
    raw.uint(libvirt.VIR_MIGRATE_TUNNELLED | libvirt.VIR_MIGRATE_LIVE)
    with RpcClient.open(a.uri) as client, pytest.raises(VirError) as verr:
        client.call(Proc.DOMAIN_MIGRATE_PERFORM3_PARAMS, raw.bytes())
    assert verr.value.code == libvirt.VIR_ERR_INVALID_ARG
    assert "cannot perform tunnelled migration without using peer2peer flag" in verr.value.message
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert "direct-tun" not in [d.name() for d in b.conn.listAllDomains()]
    dom.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_migrateuri_picks_the_data_port_and_bad_ones_are_refused(pair) -> None:
    """--migrateuri tcp://127.0.0.1:PORT: the destination listens there (seen while the slow stream flows);
    a scheme refvmd cannot carry is one line naming the URI."""
    (a, b), shared = pair[0]["qemu"], pair[1]
    port = _free_port()
    first = start_slow_migration(a, b, shared, "muri", ("--migrateuri", f"tcp://127.0.0.1:{port}"))
    try:
        listening = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} or dport = :{port} )"],
                                   capture_output=True, text=True).stdout
        assert f":{port}" in listening, listening
        assert a.virsh("migrate-setspeed", "muri", "100000").returncode == 0
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    b.conn.lookupByName("muri").destroy()
    boot(a, shared, "muri2", "qemu")
    out = a.virsh("migrate", "--live", "--migrateuri", "rdma://127.0.0.1", "muri2", b.uri)
    assert out.returncode == 1 and "unsupported migration URI 'rdma://127.0.0.1'" in out.stderr, out.stderr
    assert a.conn.lookupByName("muri2").state()[0] == libvirt.VIR_DOMAIN_RUNNING
    a.conn.lookupByName("muri2").destroy()


def test_timeout_suspends_the_guest_mid_migration(pair) -> None:
    """virsh migrate --timeout 1 (virsh's own watch: it calls virDomainSuspend when the time is up): refvmd
    pauses the migrating guest inside the migration job (SUSPENDED MIGRATED, paused/migration, as libvirt
    reports it), the tunnelled stream then ends and the guest runs on at the destination with its RAM."""
    (a, b), shared = pair[0]["qemu"], pair[1]
    log_start = len(a.daemon.log.read_text())
    first = start_slow_migration(a, b, shared, "tmo", ("--p2p", "--tunnelled", "--timeout", "1"))
    try:
        dom = a.conn.lookupByName("tmo")
        a.events.clear()
        deadline = time.monotonic() + 20
        while dom.state() != [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION]:
            assert time.monotonic() < deadline, dom.state()
            time.sleep(0.1)
        assert a.lifecycle("tmo", 1)[0] == (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED)
        log = a.daemon.log.read_text()[log_start:]
        assert f"call proc={Proc.DOMAIN_SUSPEND} " in log  # refvmd paused it because virsh called virDomainSuspend
        assert a.virsh("migrate-setspeed", "tmo", "100000").returncode == 0  # let the rest go now
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    ddom = b.conn.lookupByName("tmo")
    assert ddom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED]
    assert "probe>" in console(b, "tmo", "echo alive")
    ddom.destroy()


def test_destination_daemon_killed_during_tunnelled_migration(pair, tmp_path: Path) -> None:
    """The destination refvmd dies while the tunnelled stream flows: the source's stream breaks, the job fails,
    the guest runs on at the source with its memory."""
    (a, _), shared = pair[0]["qemu"], pair[1]
    c = Host(tmp_path / "c")
    try:
        first = start_slow_migration(a, c, shared, "tunkill", ("--p2p", "--tunnelled"))
        pid = json.loads((c.daemon.state_dir / "qemu-session" / "run" / "tunkill.status").read_text())["pid"]
        c.daemon.proc.kill()
        c.daemon.proc.wait()
        _, stderr = first.communicate(timeout=60)
        assert first.returncode == 1, stderr
        dom = a.conn.lookupByName("tunkill")
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert "probe>" in console(a, "tunkill", "echo still here")
        assert "Job type:         None" in a.virsh("domjobinfo", "tunkill").stdout
        dom.destroy()
        c.daemon.socket.unlink()  # the restarted destination kills the half-migrated VMM it finds
        c.daemon.start()
        c.conn = libvirt.open(c.uri)
        assert c.names() == []
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the destination VMM was left running"
    finally:
        c.close()

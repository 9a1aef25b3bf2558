"""refvmd's hypervisor drivers on real refvm and real QEMU (TCG) processes with the probe guest, driven through the
Python driver API: lifecycle in libvirt-tck's order, events as libvirt derives them from QMP, blkiotune read back
from the hypervisor, restart re-attach, crash detection, job serialisation."""
from __future__ import annotations

import os
import select
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from refvm.mgmt import errors, vir
from refvm.mgmt.drivers.base import DomainRef
from refvm.mgmt.drivers.qemu_driver import QemuDriver
from refvm.mgmt.drivers.refvm_driver import RefvmDriver
from refvm.mgmt.drivers.vmm_api import VmmDriver
from tests.conftest import kvm_available, require

PROBE = Path(__file__).resolve().parent.parent / "guests" / "probe" / "build" / "probe.elf"
E = vir.VIR_DOMAIN_EVENT_ID_LIFECYCLE
DRIVERS = {"refvm": RefvmDriver, "qemu": QemuDriver}


def domain_xml(kind: str, name: str, disk: Path, extra: str = "") -> str:
    return f"""<domain type='{"kvm" if kind == "refvm" else "qemu"}'><name>{name}</name>
      <memory unit='MiB'>32</memory><os><type>hvm</type><kernel>{PROBE}</kernel></os>
      <devices><disk type='file'><driver name='qemu' type='raw'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk><serial type='pty'/>{extra}</devices></domain>"""


class Harness:
    """One driver on a private state dir, collecting events; tears down every domain it started."""

    def __init__(self, kind: str, state: Path) -> None:
        self.kind, self.state = kind, state
        self.events: list[tuple[str, int, int, int]] = []
        self.driver = self.open()

    def open(self) -> VmmDriver:
        driver = DRIVERS[self.kind]("session", str(self.state), job_timeout=1.0)
        driver.add_event_sink(lambda ref, eid, ev, det: self.events.append((ref.name, eid, ev, det)))
        return driver

    def xml(self, name: str = "p1", extra: str = "") -> str:
        disk = self.state / f"{name}.img"  # one image per domain: QEMU locks images against a second writer
        if not disk.exists():
            disk.write_bytes(b"\0" * 1024 * 1024)
        return domain_xml(self.kind, name, disk, extra)

    def wait_events(self, count: int, timeout: float = 20.0) -> list[tuple[str, int, int, int]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.events)

    def cleanup(self) -> None:
        for ref in self.driver.list_all(vir.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                self.driver.destroy(ref)
            except errors.VirError:
                pass


@pytest.fixture(params=["refvm", "qemu"])
def h(request, tmp_path: Path):
    kind = request.param
    require(PROBE.exists(), "probe guest not built (make -C guests/probe)")
    if kind == "refvm":
        require(kvm_available(), "/dev/kvm is missing or not accessible")
    else:
        require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 not installed")
    harness = Harness(kind, tmp_path)
    yield harness
    harness.cleanup()


def vir_error(call, *args) -> errors.VirError:
    with pytest.raises(errors.VirError) as info:
        call(*args)
    return info.value


def test_lifecycle_in_libvirt_tck_order(h: Harness) -> None:
    d = h.driver
    ref = d.define_xml(h.xml())
    assert ref.id == -1 and d.state(ref) == (vir.VIR_DOMAIN_SHUTOFF, vir.VIR_DOMAIN_SHUTOFF_UNKNOWN)
    assert d.is_persistent(ref) and not d.is_active(ref)
    ref = d.create(ref)
    assert ref.id > 0 and d.lookup_by_id(ref.id) == ref
    assert d.state(ref) == (vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_BOOTED)
    err = vir_error(d.create, ref)
    assert (err.code, err.message) == (errors.VIR_ERR_OPERATION_INVALID,
                                       "Requested operation is not valid: domain is already running")
    d.suspend(ref)
    assert d.state(ref) == (vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_PAUSED_USER)
    assert d.info(ref).state == vir.VIR_DOMAIN_PAUSED
    d.resume(ref)
    assert d.state(ref) == (vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_UNPAUSED)
    d.reset(ref)
    d.destroy(ref)
    assert d.state(ref) == (vir.VIR_DOMAIN_SHUTOFF, vir.VIR_DOMAIN_SHUTOFF_DESTROYED)
    assert vir_error(d.suspend, ref).code == errors.VIR_ERR_OPERATION_INVALID
    d.undefine(ref)
    assert vir_error(d.lookup_by_name, "p1").code == errors.VIR_ERR_NO_DOMAIN
    assert [e[1:] for e in h.wait_events(7)] == [
        (E, vir.VIR_DOMAIN_EVENT_DEFINED, vir.VIR_DOMAIN_EVENT_DEFINED_ADDED),
        (E, vir.VIR_DOMAIN_EVENT_STARTED, vir.VIR_DOMAIN_EVENT_STARTED_BOOTED),
        (E, vir.VIR_DOMAIN_EVENT_SUSPENDED, vir.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
        (E, vir.VIR_DOMAIN_EVENT_RESUMED, vir.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
        (vir.VIR_DOMAIN_EVENT_ID_REBOOT, 0, 0),
        (E, vir.VIR_DOMAIN_EVENT_STOPPED, vir.VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
        (E, vir.VIR_DOMAIN_EVENT_UNDEFINED, vir.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED),
    ]


def test_transient_domain_and_start_paused(h: Harness) -> None:
    d = h.driver
    ref = d.create_xml(h.xml("t1"), vir.VIR_DOMAIN_START_PAUSED)
    assert d.state(ref) == (vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_PAUSED_USER)
    assert not d.is_persistent(ref)
    assert vir_error(d.create_xml, h.xml("t1")).code == errors.VIR_ERR_OPERATION_FAILED  # new uuid, same name
    assert vir_error(d.undefine, ref).code == errors.VIR_ERR_OPERATION_INVALID
    assert vir_error(d.set_autostart, ref, True).code == errors.VIR_ERR_OPERATION_INVALID
    d.resume(ref)
    d.destroy(ref)
    assert vir_error(d.lookup_by_name, "t1").code == errors.VIR_ERR_NO_DOMAIN, "a transient domain vanishes"
    assert [e[2:] for e in h.wait_events(4)] == [
        (vir.VIR_DOMAIN_EVENT_STARTED, vir.VIR_DOMAIN_EVENT_STARTED_BOOTED),
        (vir.VIR_DOMAIN_EVENT_SUSPENDED, vir.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
        (vir.VIR_DOMAIN_EVENT_RESUMED, vir.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
        (vir.VIR_DOMAIN_EVENT_STOPPED, vir.VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
    ]


def test_list_all_filters_and_xml_round_trip(h: Harness) -> None:
    d = h.driver
    off = d.define_xml(h.xml("off"))
    d.set_autostart(off, True)
    run = d.create(d.define_xml(h.xml("run")))
    d.create_xml(h.xml("tr"), vir.VIR_DOMAIN_START_PAUSED)

    def names(flags: int) -> set[str]:
        return {r.name for r in d.list_all(flags)}

    L = vir
    assert names(0) == {"off", "run", "tr"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_ACTIVE) == {"run", "tr"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_INACTIVE) == {"off"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_TRANSIENT) == {"tr"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_PERSISTENT | L.VIR_CONNECT_LIST_DOMAINS_ACTIVE) == {"run"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_PAUSED | L.VIR_CONNECT_LIST_DOMAINS_SHUTOFF) == {"tr", "off"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_RUNNING) == {"run"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_AUTOSTART) == {"off"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART) == {"run", "tr"}
    assert names(L.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT) == set()
    assert vir_error(d.list_all, 1 << 20).code == errors.VIR_ERR_INVALID_ARG
    live = d.xml_desc(run)
    assert f"id='{run.id}'" in live and "<alias name='virtio-disk0'/>" in live and "/dev/pts/" in live
    inactive = d.xml_desc(run, vir.VIR_DOMAIN_XML_INACTIVE)
    assert "id=" not in inactive.splitlines()[0] and "alias" not in inactive
    d.define_xml(inactive)  # the dumped XML defines the same domain again (an update)
    assert d.xml_desc(run, vir.VIR_DOMAIN_XML_INACTIVE) == inactive


def test_blkiotune_live_and_config(h: Harness) -> None:
    d = h.driver
    ref = d.create(d.define_xml(h.xml()))
    both = vir.VIR_DOMAIN_AFFECT_LIVE | vir.VIR_DOMAIN_AFFECT_CONFIG
    d.set_block_io_tune(ref, "vda", {"total_bytes_sec": 2_000_000, "write_iops_sec": 50}, both)
    # live values are read back from the hypervisor's query-block
    live = {n: v for n, _t, v in d.get_block_io_tune(ref, "vda", vir.VIR_DOMAIN_AFFECT_LIVE) if v}
    assert live == {"total_bytes_sec": 2_000_000, "write_iops_sec": 50}
    config = {n: v for n, _t, v in d.get_block_io_tune(ref, "vda", vir.VIR_DOMAIN_AFFECT_CONFIG) if v}
    assert config == live
    assert "<total_bytes_sec>2000000</total_bytes_sec>" in d.xml_desc(ref, vir.VIR_DOMAIN_XML_INACTIVE)
    err = vir_error(d.set_block_io_tune, ref, "vda", {"total_bytes_sec": 1, "read_bytes_sec": 1}, both)
    assert err.code == errors.VIR_ERR_INVALID_ARG and "cannot be set at the same time" in err.message
    assert vir_error(d.set_block_io_tune, ref, "vdz", {"total_bytes_sec": 1}, both).code == errors.VIR_ERR_INVALID_ARG
    assert vir_error(d.set_block_io_tune, ref, "vda", {"bogus": 1}, both).code == errors.VIR_ERR_INVALID_ARG
    d.set_block_io_tune(ref, "vda", {"read_bytes_sec": 1000}, vir.VIR_DOMAIN_AFFECT_LIVE)
    live = {n: v for n, _t, v in d.get_block_io_tune(ref, "vda", vir.VIR_DOMAIN_AFFECT_LIVE) if v}
    assert live == {"read_bytes_sec": 1000, "write_iops_sec": 50}, "setting read_* clears total_*, as libvirt"


def test_memory_balloon_and_stats(h: Harness) -> None:
    d = h.driver
    ref = d.create(d.define_xml(h.xml()))
    assert vir_error(d.set_memory, ref, 64 * 1024, vir.VIR_DOMAIN_AFFECT_LIVE).code == errors.VIR_ERR_INVALID_ARG
    d.set_memory(ref, 16 * 1024, vir.VIR_DOMAIN_AFFECT_LIVE)
    assert d.info(ref).memory == 16 * 1024
    stats = dict(d.memory_stats(ref, 13))
    assert stats[vir.VIR_DOMAIN_MEMORY_STAT_RSS] > 0 and vir.VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON in stats
    d.set_memory(ref, 24 * 1024, vir.VIR_DOMAIN_AFFECT_CONFIG)
    assert "<currentMemory unit='KiB'>24576</currentMemory>" in d.xml_desc(ref, vir.VIR_DOMAIN_XML_INACTIVE)


def _read_until(fd: int, needle: bytes, seen: bytes, deadline: float, poke: bool) -> bytes:
    while needle not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the hypervisor closed its end of the pty
                break
            if not chunk:
                break
            seen += chunk
        elif poke:
            os.write(fd, b"\r")
    return seen


def console_command(fd: int, command: bytes, timeout: float = 30.0, until: bytes = b"probe>") -> bytes:
    """Wait for the probe's prompt on the console fd, run ``command`` and return its output up to ``until`` (the
    next prompt by default), or whatever came before the guest went away, for a command that ends it."""
    deadline = time.monotonic() + timeout
    os.write(fd, b"\r")
    seen = _read_until(fd, b"probe>", b"", deadline, poke=True)
    assert b"probe>" in seen, seen
    os.write(fd, command + b"\r")
    echoed = _read_until(fd, command, b"", deadline, poke=False)
    tail = echoed.split(command, 1)[-1]
    return _read_until(fd, until, tail, deadline, poke=False)


def assert_guest_powered_off(h: Harness, ref: DomainRef) -> None:
    """After a guest poweroff: SHUTDOWN (guest) then STOPPED (shutdown), and the domain is shut off, reason
    shutdown, as libvirt's QEMU driver reports it."""
    assert [e[2:] for e in h.wait_events(2)] == [
        (vir.VIR_DOMAIN_EVENT_SHUTDOWN, vir.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST),
        (vir.VIR_DOMAIN_EVENT_STOPPED, vir.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN),
    ]
    assert h.driver.state(ref) == (vir.VIR_DOMAIN_SHUTOFF, vir.VIR_DOMAIN_SHUTOFF_SHUTDOWN)


def test_console_reaches_the_probe_shell(h: Harness) -> None:
    d = h.driver
    ref = d.create(d.define_xml(h.xml()))
    fd = d.open_console(ref, None)
    try:
        console_command(fd, b"help")
    finally:
        os.close(fd)


@pytest.mark.parametrize("on_reboot", ["restart", "destroy"])
def test_guest_reset_is_a_reboot_or_a_shutdown(h: Harness, on_reboot: str) -> None:
    """A reset the guest asks for (port 0xcf9) is a REBOOT event with on_reboot=restart; with destroy (-no-reboot)
    the hypervisor reports a guest SHUTDOWN and the domain ends shut off with reason 'shutdown'."""
    d = h.driver
    xml = h.xml().replace("</os>", f"</os><on_reboot>{on_reboot}</on_reboot>")
    ref = d.create(d.define_xml(xml))
    fd = d.open_console(ref, None)
    h.events.clear()
    try:
        console_command(fd, b"outb 0xcf9 6")
        if on_reboot == "restart":
            assert h.wait_events(1)[0][1] == vir.VIR_DOMAIN_EVENT_ID_REBOOT
            assert d.state(ref)[0] == vir.VIR_DOMAIN_RUNNING
            return
        assert_guest_powered_off(h, ref)
    finally:
        os.close(fd)


def test_acpi_shutdown_and_reboot(h: Harness) -> None:
    """virDomainShutdown presses the ACPI power button (system_powerdown); the probe's `pwrbtn` powers off on it.
    virDomainReboot is libvirt's fake reboot: the same button, then reset + cont once the guest powered off."""
    d = h.driver
    ref = d.create(d.define_xml(h.xml()))
    fd = d.open_console(ref, None)
    try:
        assert b"waiting for the power button" in console_command(fd, b"pwrbtn", until=b"power button")
        h.events.clear()
        d.reboot(ref)
        assert [e[1:] for e in h.wait_events(3)] == [
            (E, vir.VIR_DOMAIN_EVENT_SHUTDOWN, vir.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST),
            (vir.VIR_DOMAIN_EVENT_ID_REBOOT, 0, 0),
            (E, vir.VIR_DOMAIN_EVENT_RESUMED, vir.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
        ]
        assert d.state(ref) == (vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_BOOTED)
        assert b"waiting for the power button" in console_command(fd, b"pwrbtn", until=b"power button")
        h.events.clear()
        d.shutdown(ref)
        assert_guest_powered_off(h, ref)
    finally:
        os.close(fd)


def test_restart_reattaches_and_crash_is_detected(h: Harness) -> None:
    d = h.driver
    ref = d.create(d.define_xml(h.xml()))
    t = d.create_xml(h.xml("tr"))
    pid = d.domains[ref.uuid_str].vmm.pid
    d.close()  # the daemon goes away; the hypervisors keep running
    assert os.path.exists(f"/proc/{pid}")
    h.driver = d2 = h.open()
    assert d2.lookup_by_name("p1") == ref and d2.state(ref)[0] == vir.VIR_DOMAIN_RUNNING
    assert d2.lookup_by_name("tr") == t and not d2.is_persistent(t)
    d2.suspend(ref)  # the re-attached monitor works
    assert d2.state(ref)[0] == vir.VIR_DOMAIN_PAUSED
    h.events.clear()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while d2.is_active(ref) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d2.state(ref) == (vir.VIR_DOMAIN_SHUTOFF, vir.VIR_DOMAIN_SHUTOFF_CRASHED)
    assert h.wait_events(1)[0] == ("p1", E, vir.VIR_DOMAIN_EVENT_STOPPED, vir.VIR_DOMAIN_EVENT_STOPPED_FAILED)


def test_concurrent_jobs_are_serialised(h: Harness) -> None:
    d = h.driver
    ref = d.create(d.define_xml(h.xml()))
    obj = d.domains[ref.uuid_str]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with obj.begin_job("remoteDispatchDomainSuspend", 5):
            held.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait(5)
    try:
        err = vir_error(d.suspend, ref)
        assert err.code == errors.VIR_ERR_OPERATION_TIMEOUT
        assert err.message.startswith("Timed out during operation: cannot acquire state change lock")
    finally:
        release.set()
        worker.join()
    d.suspend(ref)  # the lock is free again
    assert d.state(ref)[0] == vir.VIR_DOMAIN_PAUSED


def test_lookup_and_define_conflicts(h: Harness) -> None:
    d = h.driver
    ref = d.define_xml(h.xml())
    assert d.lookup_by_uuid(ref.uuid) == ref
    err = vir_error(d.lookup_by_uuid, b"\x01" * 16)
    assert (err.code, err.domain) == (errors.VIR_ERR_NO_DOMAIN, errors.VIR_FROM_QEMU)
    assert vir_error(d.lookup_by_id, 4242).code == errors.VIR_ERR_NO_DOMAIN
    err = vir_error(d.define_xml, h.xml())  # same name, new uuid
    assert err.code == errors.VIR_ERR_OPERATION_FAILED and f"already exists with uuid {ref.uuid_str}" in err.message
    other = DomainRef("p1", b"\x02" * 16)
    assert vir_error(d.create, other).code == errors.VIR_ERR_NO_DOMAIN
    assert vir_error(d.destroy, ref, 8).code == errors.VIR_ERR_INVALID_ARG


def test_tap_opened_by_the_daemon_is_passed_as_an_fd(h: Harness) -> None:
    """<interface type='ethernet'>: refvmd creates the tap and passes it as -netdev tap,fd=N, as libvirt does."""
    require(os.access("/dev/net/tun", os.R_OK | os.W_OK), "/dev/net/tun is not accessible")
    tap = f"mgd{h.kind[:2]}{os.getpid() % 10000}"
    d = h.driver
    ref = d.create(d.define_xml(h.xml(extra=f"<interface type='ethernet'><target dev='{tap}'/>"
                                             "<model type='virtio'/></interface>")))
    pid = d.domains[ref.uuid_str].vmm.pid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    netdev = next(a for a in argv if a.startswith(b"tap,fd="))
    fd = int(netdev.split(b",")[1][3:])
    assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/net/tun"
    assert Path(f"/sys/class/net/{tap}").exists()
    stats = d.interface_stats(ref, tap)
    assert stats.rx_bytes >= 0 and stats.tx_packets >= 0
    assert "<target dev='" + tap + "'/>" in d.xml_desc(ref)
    d.destroy(ref)
    deadline = time.monotonic() + 5
    while Path(f"/sys/class/net/{tap}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/sys/class/net/{tap}").exists(), "the tap goes away with the hypervisor"


def test_sigterm_from_the_host_is_a_shutdown_not_a_crash(h: Harness) -> None:
    """A hypervisor told to quit by the host emits SHUTDOWN (host) and exits: libvirt reports SHUTDOWN HOST then
    STOPPED SHUTDOWN and keeps reason 'shutdown', where a SIGKILL gives 'crashed'."""
    d = h.driver
    ref = d.create(d.define_xml(h.xml()))
    h.events.clear()
    os.kill(d.domains[ref.uuid_str].vmm.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while d.is_active(ref) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d.state(ref) == (vir.VIR_DOMAIN_SHUTOFF, vir.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
    assert [e[2:] for e in h.wait_events(2)] == [
        (vir.VIR_DOMAIN_EVENT_SHUTDOWN, vir.VIR_DOMAIN_EVENT_SHUTDOWN_HOST),
        (vir.VIR_DOMAIN_EVENT_STOPPED, vir.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN),
    ]


def test_autostart_on_driver_start(h: Harness) -> None:
    d = h.driver
    ref = d.define_xml(h.xml())
    d.set_autostart(ref, True)
    assert d.get_autostart(ref)
    d.close()
    h.driver = d2 = h.open()  # a new daemon starts the autostart domains it finds
    assert d2.is_active(ref) and d2.get_autostart(ref)
    d2.set_autostart(ref, False)
    assert not d2.get_autostart(ref)


def test_attach_and_detach_device_config(h: Harness) -> None:
    d = h.driver
    ref = d.define_xml(h.xml())
    (h.state / "extra.img").write_bytes(b"\0" * 65536)
    disk = f"<disk type='file'><source file='{h.state / 'extra.img'}'/><target dev='vdb' bus='virtio'/></disk>"
    d.attach_device(ref, disk, vir.VIR_DOMAIN_AFFECT_CONFIG)
    assert "<target dev='vdb' bus='virtio'/>" in d.xml_desc(ref)
    assert vir_error(d.attach_device, ref, disk, vir.VIR_DOMAIN_AFFECT_CONFIG).code == errors.VIR_ERR_OPERATION_FAILED
    d.create(ref)
    err = vir_error(d.attach_device, ref, disk.replace("vdb", "vdc"), vir.VIR_DOMAIN_AFFECT_LIVE)
    assert err.code == errors.VIR_ERR_OPERATION_UNSUPPORTED
    d.detach_device(ref, disk, vir.VIR_DOMAIN_AFFECT_CONFIG)
    assert "vdb" not in d.xml_desc(ref, vir.VIR_DOMAIN_XML_INACTIVE)
    err = vir_error(d.detach_device, ref, disk, vir.VIR_DOMAIN_AFFECT_CONFIG)
    assert err.code == errors.VIR_ERR_DEVICE_MISSING


def test_a_hypervisor_that_fails_to_start_leaves_the_domain_shut_off(h: Harness) -> None:
    d = h.driver
    ref = d.define_xml(h.xml().replace(str(h.state / "p1.img"), str(h.state / "missing.img")))
    err = vir_error(d.create, ref)
    assert err.code == errors.VIR_ERR_INTERNAL_ERROR and "missing.img" in err.message
    assert d.state(ref)[0] == vir.VIR_DOMAIN_SHUTOFF and not d.is_active(ref)
    assert [e[2] for e in h.wait_events(1, timeout=0.5)] == [vir.VIR_DOMAIN_EVENT_DEFINED]


def test_block_stats_count_the_guests_requests(h: Harness) -> None:
    d = h.driver
    ref = d.create(d.define_xml(h.xml()))
    if h.kind == "refvm":  # refvm has no query-blockstats: libvirt's "not supported" error, not a wrong number
        err = vir_error(d.block_stats, ref, "vda")
        assert err.code == errors.VIR_ERR_OPERATION_UNSUPPORTED and "query-blockstats" in err.message
        return
    before = d.block_stats(ref, "vda")
    fd = d.open_console(ref, None)
    try:
        assert b"probe>" in console_command(fd, b"blk read 0")  # the prompt again: the request completed
    finally:
        os.close(fd)
    after = d.block_stats(ref, str(h.state / "p1.img"))  # by source path too
    assert after.rd_req > before.rd_req and after.rd_bytes >= before.rd_bytes + 512
    assert vir_error(d.block_stats, ref, "vdz").code == errors.VIR_ERR_INVALID_ARG

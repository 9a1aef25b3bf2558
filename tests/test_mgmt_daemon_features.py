"""refvmd features seen through the real clients (issue 10): `virsh console` over a libvirt stream, REBOOT
events, blkdeviotune live and persisted, memory stats, a daemon restart that keeps running domains, the
`refvmd` and `refvm virsh` commands."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import termios
import threading
import time

import pytest

from tests.conftest import IN_CI, kvm_available, require
from tests.mgmt_daemon import Refvmd
from tests.test_mgmt_libvirt_clients import PROBE, probe_xml

libvirt = __import__("libvirt") if IN_CI else pytest.importorskip("libvirt")
pexpect = __import__("pexpect") if IN_CI else pytest.importorskip("pexpect")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    libvirt.virEventRegisterDefaultImpl()
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, daemon=True).start()
    d = Refvmd(tmp_path_factory.mktemp("refvmd"))
    d.start()
    yield d
    d.stop()
    stop.set()


@pytest.fixture
def running(daemon, tmp_path):
    """A running transient probe-guest domain with a raw disk vda."""
    require(kvm_available(), "/dev/kvm is missing or not accessible to this user")
    require(PROBE.exists(), f"{PROBE} not built (make -C guests/probe)")
    disk = tmp_path / "vda.img"
    disk.write_bytes(b"\0" * (1 << 20))
    xml = probe_xml("feat1").replace(
        "<devices>", f"<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>")
    conn = libvirt.open(daemon.uri)
    dom = conn.createXML(xml, 0)
    yield conn, dom
    try:  # the restart test closes this connection and destroys the domain itself
        if dom.isActive():
            dom.destroy()
        conn.close()
    except libvirt.libvirtError:
        pass


def virsh(daemon: Refvmd, *args: str) -> str:
    out = subprocess.run(["virsh", "-c", daemon.uri, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_for_raw_tty(child: pexpect.spawn, timeout: float = 30.0) -> None:
    """virsh prints "Escape character is ^]" before it switches its terminal to raw mode, and the switch
    (TCSAFLUSH) discards pending input: an ^] typed in between waits in the line discipline for a newline that
    never comes, and is then thrown away. Keys are sent only once the pty is raw (the master shares the slave's
    termios on Linux)."""
    deadline = time.monotonic() + timeout
    while termios.tcgetattr(child.child_fd)[3] & termios.ICANON:
        if time.monotonic() > deadline:
            pytest.fail("virsh console never switched its terminal to raw mode")
        time.sleep(0.05)


def test_virsh_console_talks_to_the_guest_serial(daemon, running):
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients) is not installed")
    child = pexpect.spawn("virsh", ["-c", daemon.uri, "console", "feat1"], timeout=30, encoding="utf-8")
    try:
        child.expect("Escape character is")
        wait_for_raw_tty(child)
        child.send("\r")
        child.expect("probe> ")
        child.send("\r")
        child.expect("probe> ")  # input reached the guest through the stream, its answer came back
        child.sendcontrol("]")
        try:
            child.expect(pexpect.EOF)
        except pexpect.TIMEOUT:
            log = daemon.log.read_text(errors="replace")[-4000:]
            pytest.fail(f"virsh console did not exit 30 s after ^]; refvmd's log ends with:\n{log}")
    finally:
        child.close(force=True)
    assert running[1].isActive()


def test_virsh_console_ends_when_the_domain_goes(daemon, running):
    """The pty's end of file reaches virsh, whose closing packet must still find the stream to be answered
    (libvirtd keeps a stream registered after EOF until the client ends it); otherwise virsh waits forever."""
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients) is not installed")
    child = pexpect.spawn("virsh", ["-c", daemon.uri, "console", "feat1"], timeout=30, encoding="utf-8")
    try:
        child.expect("Escape character is")
        wait_for_raw_tty(child)
        child.send("\r")
        child.expect("probe> ")
        running[1].destroy()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert not running[0].listAllDomains()  # a transient domain is gone once destroyed


def test_reset_sends_reboot_event(running):
    conn, dom = running
    seen: list[str] = []
    cb = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
                                     lambda c, d, opaque: seen.append(d.name()), None)
    try:
        dom.reset(0)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        conn.domainEventDeregisterAny(cb)
    assert seen == ["feat1"]
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_deregistering_an_unknown_callback_is_an_rpc_error(running):
    conn, _ = running
    with pytest.raises(libvirt.libvirtError) as exc:
        conn.domainEventDeregisterAny(987654)
    assert exc.value.get_error_code() in (libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_INVALID_ARG)


def test_blkdeviotune_live_through_virsh(daemon, running):
    _, dom = running
    virsh(daemon, "blkdeviotune", "feat1", "vda", "--total-bytes-sec", "1000000", "--total-iops-sec", "50",
          "--live")
    params = dom.blockIoTune("vda", libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert params["total_bytes_sec"] == 1000000 and params["total_iops_sec"] == 50
    shown = dict(line.split(":", 1) for line in virsh(daemon, "blkdeviotune", "feat1", "vda").splitlines()
                 if ":" in line)
    assert shown["total_bytes_sec"].strip() == "1000000"
    with pytest.raises(libvirt.libvirtError) as exc:  # libvirt's validation: total with read is refused
        dom.setBlockIoTune("vda", {"total_bytes_sec": 5, "read_bytes_sec": 6}, 0)
    assert exc.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG


def test_memory_stats_and_dominfo(daemon, running):
    _, dom = running
    stats = dom.memoryStats()
    assert stats["actual"] == 32768
    info = dict(line.split(":", 1) for line in virsh(daemon, "dominfo", "feat1").splitlines() if ":" in line)
    assert info["State"].strip() == "running" and info["Persistent"].strip() == "no"


def test_restarted_daemon_keeps_running_domain(daemon, running):
    conn, dom = running
    dom_id, uuid = dom.ID(), dom.UUIDString()
    conn.close()
    daemon.stop()
    daemon.start()
    again = libvirt.open(daemon.uri)
    try:
        found = again.lookupByUUIDString(uuid)
        assert found.ID() == dom_id and found.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        found.destroy()
    finally:
        again.close()


def test_refvmd_help_and_refvm_virsh(daemon):
    out = subprocess.run([sys.executable, "-m", "refvm.mgmt.refvmd", "--help"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "--daemon" in out.stdout and "--state-dir" in out.stdout
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients) is not installed")
    env = dict(os.environ, REFVMD_SOCKET=str(daemon.socket))
    out = subprocess.run([sys.executable, "-m", "refvm", "virsh", "uri"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"refvm+unix:///session?socket={daemon.socket}"


def _pids_serving(sock) -> list[int]:
    """Processes whose command line names this socket (only refvmds this test started use it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"refvm.mgmt.refvmd" in cmdline and str(sock).encode() in cmdline:
                pids.append(int(entry))
    return pids


def test_system_socket_is_0660_with_group_and_daemon_mode_detaches(tmp_path):
    sock = tmp_path / "system-sock"
    out = subprocess.run([sys.executable, "-m", "refvm.mgmt.refvmd", "--daemon", "--system", "--group", "root",
                          "--socket", str(sock), "--state-dir", str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=30)
    try:
        assert out.returncode == 0, out.stderr  # the parent returns once the socket listens
        st = sock.stat()
        assert st.st_mode & 0o777 == 0o660 and st.st_gid == 0
        assert _pids_serving(sock), "the detached refvmd is not running"
    finally:
        for pid in _pids_serving(sock):
            os.kill(pid, 15)


def test_attach_detach_config_iotune_persisted_and_autostart(daemon, tmp_path):
    require(PROBE.exists(), f"{PROBE} not built (make -C guests/probe)")
    image = tmp_path / "vdb.img"
    image.write_bytes(b"\0" * (1 << 20))
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{image}'/>"
            "<target dev='vdb' bus='virtio'/></disk>")
    conn = libvirt.open(daemon.uri)
    dom = conn.defineXML(probe_xml("cfg1"))
    try:
        dom.attachDeviceFlags(disk, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert "vdb" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom.setBlockIoTune("vdb", {"read_iops_sec": 7}, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert "<iotune>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert dom.blockIoTune("vdb", libvirt.VIR_DOMAIN_AFFECT_CONFIG)["read_iops_sec"] == 7
        dom.detachDeviceFlags(disk, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert "vdb" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom.setAutostart(1)
        assert dom.autostart() == 1
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.listAllDomains(1 << 30)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    finally:
        dom.undefine()
        conn.close()


def test_event_callback_filtered_by_domain(daemon):
    require(kvm_available(), "/dev/kvm is missing or not accessible to this user")
    require(PROBE.exists(), f"{PROBE} not built (make -C guests/probe)")
    conn = libvirt.open(daemon.uri)
    watched = conn.defineXML(probe_xml("evA"))
    other = conn.defineXML(probe_xml("evB"))
    seen: list[tuple[str, int]] = []
    everything: list[str] = []
    cb = conn.domainEventRegisterAny(watched, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                     lambda c, d, ev, det, opaque: seen.append((d.name(), ev)), None)
    cb_all = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         lambda c, d, ev, det, opaque: everything.append(d.name()), None)
    try:
        other.create()
        other.destroy()
        watched.create()
        watched.destroy()
        deadline = time.monotonic() + 10
        while len(everything) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == [("evA", libvirt.VIR_DOMAIN_EVENT_STARTED), ("evA", libvirt.VIR_DOMAIN_EVENT_STOPPED)]
        assert everything == ["evB", "evB", "evA", "evA"]
    finally:
        conn.domainEventDeregisterAny(cb)
        conn.domainEventDeregisterAny(cb_all)
        watched.undefine()
        other.undefine()
        conn.close()

"""Domain -> hypervisor argv, URIs -> drivers, and the state directory (no hypervisor is started here)."""
from __future__ import annotations

import pytest

from refvm.mgmt import errors
from refvm.mgmt.argv import build_argv
from refvm.mgmt.domain_xml import parse_domain
from refvm.mgmt.drivers import parse_uri
from refvm.mgmt.state import StatePaths, StateStore

XML = """<domain type='kvm'><name>a,b</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>
  <os><type>hvm</type><kernel>/k,1</kernel><cmdline>console=ttyS0</cmdline></os><on_reboot>destroy</on_reboot>
  <devices><disk type='file'><driver name='qemu' type='qcow2' cache='none'/><source file='/d.qcow2'/>
    <target dev='vda' bus='virtio'/><iotune><total_bytes_sec>5000</total_bytes_sec></iotune><readonly/></disk>
  <interface type='ethernet'><mac address='52:54:00:00:00:01'/></interface><serial type='pty'/>
  <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng></devices></domain>"""


def _opt(argv: list[str], name: str) -> list[str]:
    """Values of option ``name`` (after the program: ``python -m refvm`` has a -m of its own)."""
    start = argv.index("-name")
    return [argv[i + 1] for i, a in enumerate(argv) if a == name and i >= start]


def test_refvm_and_qemu_argv_differ_only_where_the_vmms_differ() -> None:
    dom = parse_domain(XML)
    refvm = build_argv("refvm", dom, "/run/q.qmp", [17]).argv
    qemu = build_argv("qemu", dom, "/run/q.qmp", [17]).argv
    assert refvm[1:3] == ["-m", "refvm"] and qemu[0].endswith("qemu-system-x86_64")
    for argv in (refvm, qemu):
        assert "-S" in argv and "-no-reboot" in argv
        assert _opt(argv, "-qmp") == ["unix:/run/q.qmp,server=on,wait=off"]
        assert _opt(argv, "-m") == ["64M"] and _opt(argv, "-smp") == ["2"]
        assert _opt(argv, "-kernel") == ["/k,1"]
        drive = _opt(argv, "-drive")[0]
        assert drive.startswith("file=/d.qcow2,if=none,id=drive-virtio-disk0,format=qcow2,cache=none,readonly=on")
        assert "throttling.bps-total=5000" in drive
        assert "tap,fd=17,id=hostnet0" in _opt(argv, "-netdev")
        assert any(d.startswith("virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:00:00:01,addr=0x")
                   for d in _opt(argv, "-device"))
    assert _opt(refvm, "-name") == ["a,b"] and _opt(qemu, "-name") == ["guest=a,,b"]
    assert "-no-shutdown" in qemu and "-no-shutdown" in refvm  # libvirt's way: refvmd quits or fake-reboots
    assert set(_opt(refvm, "-device")) == set(_opt(qemu, "-device"))


def test_refvm_needs_kvm_and_a_direct_kernel() -> None:
    dom = parse_domain(XML.replace("type='kvm'", "type='qemu'"))
    with pytest.raises(errors.VirError) as info:
        build_argv("refvm", dom, "/q", [3])
    assert info.value.code == errors.VIR_ERR_CONFIG_UNSUPPORTED
    assert "-accel" not in build_argv("qemu", dom, "/q", [3]).argv and "pc,accel=tcg" in build_argv(
        "qemu", dom, "/q", [3]).argv


@pytest.mark.parametrize("uri", ["refvm:///session", "refvm:///system", "qemu:///session", "qemu:///system"])
def test_uris_served(uri: str) -> None:
    assert parse_uri(uri) == tuple(uri.replace(":///", " ").split())


@pytest.mark.parametrize("uri", ["xen:///system", "refvm://host/session", "refvm:///other", "test:///default"])
def test_other_uris_have_no_driver(uri: str) -> None:
    with pytest.raises(errors.VirError) as info:
        parse_uri(uri)
    assert info.value.code == errors.VIR_ERR_NO_CONNECT


def test_state_store_survives_a_torn_status_file(tmp_path) -> None:
    store = StateStore(StatePaths.for_uri("refvm", "session", tmp_path))
    store.save_config("d1", "<domain/>")
    store.set_autostart("d1", True)
    store.save_status("d1", {"pid": 1})
    (store.paths.run / "d2.status").write_text("{torn")
    assert store.load_configs() == {"d1": "<domain/>"} and store.autostart("d1")
    assert store.load_statuses() == {"d1": {"pid": 1}}
    assert not (store.paths.run / "d2.status").exists()
    store.delete_config("d1")
    assert store.load_configs() == {} and not store.autostart("d1")
    assert oct(store.paths.config.stat().st_mode & 0o777) == "0o700"


def test_session_state_lives_in_the_users_config_and_runtime_dirs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "rt"))
    paths = StatePaths.for_uri("qemu", "session")
    assert paths.config == tmp_path / "cfg" / "refvm" / "qemu"
    assert paths.run == tmp_path / "rt" / "refvm" / "qemu"
    assert StatePaths.for_uri("refvm", "session").config != paths.config, "one state tree per URI"

"""Storage pools and volumes in refvmd (issue 11) through the real virsh and libvirt-python, checked on the
files themselves and with qemu-img."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import IN_CI, require
from tests.mgmt_daemon import Refvmd

libvirt = __import__("libvirt") if IN_CI else pytest.importorskip("libvirt")
MIB = 1 << 20


@pytest.fixture(scope="module")
def pause_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("wipe-pauses")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, pause_dir):
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    d = Refvmd(tmp_path_factory.mktemp("refvmd"))
    os.environ["REFVM_WIPE_PAUSE_DIR"] = str(pause_dir)
    try:
        d.start()
    finally:
        del os.environ["REFVM_WIPE_PAUSE_DIR"]
    yield d
    d.stop()


def virsh(uri: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients) is not installed")
    out = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def qemu_img_info(path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True,
                                     text=True, check=True).stdout)


@pytest.mark.parametrize("kind", ["dir", "fs"])
def test_pool_and_volume_lifecycle_through_virsh(daemon, tmp_path, kind) -> None:
    uri, target, name = daemon.uri, tmp_path / "pool", f"p-{kind}"
    if kind == "fs":
        require(os.geteuid() == 0, "mounting an fs pool needs root")
        dev = tmp_path / "fs.img"
        dev.write_bytes(b"")
        os.truncate(dev, 64 * MIB)
        virsh(uri, "pool-define-as", name, "fs", "--source-dev", str(dev), "--source-format", "ext4",
              "--target", str(target))
        virsh(uri, "pool-build", name, "--no-overwrite")
        assert "ext4" in subprocess.run(["blkid", str(dev)], capture_output=True, text=True).stdout
    else:
        virsh(uri, "pool-define-as", name, "dir", "--target", str(target))
        virsh(uri, "pool-build", name)
    virsh(uri, "pool-start", name)
    virsh(uri, "pool-autostart", name)
    try:
        if kind == "fs":
            assert os.path.ismount(target)
        virsh(uri, "vol-create-as", name, "a.img", "4M", "--allocation", "0")
        virsh(uri, "vol-create-as", name, "full.img", "2M", "--allocation", "2M")
        virsh(uri, "vol-create-as", name, "b.qcow2", "8M", "--format", "qcow2", "--backing-vol", "a.img",
              "--backing-vol-format", "raw")
        assert os.stat(target / "a.img").st_blocks == 0 and os.stat(target / "full.img").st_blocks * 512 >= 2 * MIB
        info = qemu_img_info(target / "b.qcow2")
        assert info["format"] == "qcow2" and info["virtual-size"] == 8 * MIB
        assert info["backing-filename"] == str(target / "a.img")
        subprocess.run(["qemu-img", "check", str(target / "b.qcow2")], check=True, capture_output=True)
        assert qemu_img_info(target / "a.img")["virtual-size"] == 4 * MIB
        doc = ET.fromstring(virsh(uri, "vol-dumpxml", "b.qcow2", "--pool", name).stdout)
        assert doc.find("target/format").get("type") == "qcow2"
        assert doc.findtext("backingStore/path") == str(target / "a.img")
        assert "Capacity:       4.00 MiB" in virsh(uri, "vol-info", "a.img", "--pool", name).stdout
        # clone with conversion: the qcow2 over its raw backing file becomes a self-contained raw image
        (target / "a.img").write_bytes(b"\x5a" * 4 * MIB)
        clone_xml = tmp_path / "clone.xml"
        clone_xml.write_text("<volume><name>c.img</name><capacity>8388608</capacity>"
                             "<target><format type='raw'/></target></volume>")
        virsh(uri, "vol-create-from", name, str(clone_xml), "b.qcow2", "--inputpool", name)
        assert qemu_img_info(target / "c.img")["format"] == "raw"
        data = (target / "c.img").read_bytes()
        assert data[:4 * MIB] == b"\x5a" * 4 * MIB and data[4 * MIB:] == bytes(4 * MIB)
        virsh(uri, "vol-clone", "a.img", "a2.img", "--pool", name)
        assert (target / "a2.img").read_bytes() == b"\x5a" * 4 * MIB
        # resize: grow, refused shrink, shrink with --shrink
        virsh(uri, "vol-resize", "a.img", "6M", "--pool", name)
        assert os.path.getsize(target / "a.img") == 6 * MIB
        err = virsh(uri, "vol-resize", "a.img", "1M", "--pool", name, ok=False)
        assert err.returncode and "shrink" in err.stderr
        virsh(uri, "vol-resize", "a.img", "--pool", name, "--shrink", "--delta", "--", "-1M")
        assert os.path.getsize(target / "a.img") == 5 * MIB
        virsh(uri, "vol-resize", "b.qcow2", "16M", "--pool", name)
        assert qemu_img_info(target / "b.qcow2")["virtual-size"] == 16 * MIB
        # upload, download
        payload = os.urandom(MIB)
        (tmp_path / "up").write_bytes(payload)
        virsh(uri, "vol-upload", "a.img", str(tmp_path / "up"), "--pool", name, "--offset", "4096")
        virsh(uri, "vol-download", "a.img", str(tmp_path / "down"), "--pool", name, "--offset", "4096",
              "--length", str(MIB))
        assert (tmp_path / "down").read_bytes() == payload
        virsh(uri, "vol-wipe", "a.img", "--pool", name, "--algorithm", "zero")
        assert (target / "a.img").read_bytes() == bytes(5 * MIB)
        # refresh finds a file added behind the daemon's back
        (target / "outside.img").write_bytes(bytes(MIB))
        assert "outside.img" not in virsh(uri, "vol-list", name).stdout
        virsh(uri, "pool-refresh", name)
        assert "outside.img" in virsh(uri, "vol-list", name).stdout
        for bad in ("../x.img", "a/b.img"):
            assert virsh(uri, "vol-create-as", name, bad, "1M", ok=False).returncode
        for vol in ("a.img", "full.img", "b.qcow2", "c.img", "a2.img", "outside.img"):
            virsh(uri, "vol-delete", vol, "--pool", name)
        assert not [f for f in os.listdir(target) if f != "lost+found"]
    finally:
        virsh(uri, "pool-destroy", name, ok=False)
    if kind == "fs":
        assert not os.path.ismount(target)
    virsh(uri, "pool-delete", name, ok=kind == "dir")
    virsh(uri, "pool-undefine", name)


def test_pool_with_volumes_is_not_deleted(daemon, tmp_path) -> None:
    conn = libvirt.open(daemon.uri)
    pool = conn.storagePoolDefineXML(f"<pool type='dir'><name>keep</name><target><path>{tmp_path / 'k'}</path>"
                                     "</target></pool>")
    pool.build(0)
    pool.create(0)
    pool.createXML("<volume><name>v</name><capacity>1024</capacity></volume>", 0)
    pool.destroy()
    with pytest.raises(libvirt.libvirtError) as exc:
        pool.delete(0)
    assert "Directory not empty" in str(exc.value) and (tmp_path / "k" / "v").exists()
    with pytest.raises(libvirt.libvirtError) as exc:
        pool.createXML("<volume><name>w</name><capacity>1</capacity></volume>", 0)
    assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
    pool.undefine()
    conn.close()


def test_pool_state_survives_a_daemon_restart(tmp_path) -> None:
    d = Refvmd(tmp_path)
    d.start()
    try:
        conn = libvirt.open(d.uri)
        pool = conn.storagePoolDefineXML(f"<pool type='dir'><name>auto</name><target><path>{tmp_path / 'a'}</path>"
                                         "</target></pool>")
        pool.build(0)
        pool.setAutostart(1)
        conn.close()
    finally:
        d.stop()
    d.start()
    try:
        conn = libvirt.open(d.uri)
        pool = conn.storagePoolLookupByName("auto")
        assert pool.isActive() and pool.autostart() and pool.isPersistent()
        conn.close()
    finally:
        d.stop()


PASSES = {"zero": "0", "nnsa": "RR0", "dod": "R0F", "bsi": "F" * 9, "gutmann": "R" * 4 + "G" * 27 + "R" * 4,
          "schneier": "0F" + "R" * 5, "pfitzner7": "R" * 7, "pfitzner33": "R" * 33, "random": "R", "trim": "T"}
BSI = [0xFF, 0xFE, 0xFD, 0xFB, 0xF7, 0xEF, 0xDF, 0xBF, 0x7F]


@pytest.mark.parametrize("algorithm", list(PASSES))
def test_every_wipe_pass_is_seen_on_the_file(daemon, pause_dir, tmp_path, algorithm) -> None:
    """The daemon pauses after each pass (REFVM_WIPE_PAUSE_DIR); the test reads the file at every pause."""
    conn = libvirt.open(daemon.uri)
    pool = conn.storagePoolCreateXML(f"<pool type='dir'><name>w-{algorithm}</name><target><path>{tmp_path}"
                                     "</path></target></pool>", 0)
    vol = pool.createXML("<volume><name>v</name><capacity>65536</capacity><allocation>65536</allocation>"
                         "</volume>", 0)
    path = tmp_path / "v"
    path.write_bytes(b"\x33" * 65536)
    number = getattr(libvirt, f"VIR_STORAGE_VOL_WIPE_ALG_{algorithm.upper()}")
    seen: list[bytes] = []
    done = threading.Event()
    (pause_dir / "enabled").write_text("")
    threading.Thread(target=lambda: (vol.wipePattern(number, 0), done.set()), daemon=True).start()
    while len(seen) < len(PASSES[algorithm]):
        mark = pause_dir / f"pass-{len(seen) + 1}"
        while not mark.exists():
            assert not done.is_set(), f"wipe ended after {len(seen)} passes"
        seen.append(path.read_bytes())
        mark.unlink()
    done.wait(10)
    (pause_dir / "enabled").unlink()
    assert done.is_set() and not list(pause_dir.iterdir())
    gutmann, bsi = 0, 0
    for kind, data in zip(PASSES[algorithm], seen, strict=True):
        if kind == "R":
            assert len(set(data)) > 200 and data.count(0) < 2000, "a random pass"
        elif kind == "0":
            assert data == bytes(65536)
        elif kind == "F" and algorithm == "bsi":
            assert data == bytes([BSI[bsi]]) * 65536
            bsi += 1
        elif kind == "F":
            assert data == b"\xff" * 65536
        elif kind == "G":
            assert len(set(data[:3])) in (1, 3) and data[:6] * (65536 // 6) == data[:65532]
            gutmann += 1
        elif kind == "T":
            assert data == bytes(65536) and os.stat(path).st_blocks == 0
    assert len(set(seen)) == len(seen) or algorithm in ("bsi", "zero", "trim", "gutmann")
    pool.destroy()
    conn.close()


def test_64mib_with_holes_round_trips_sparse(daemon, tmp_path) -> None:
    uri = daemon.uri
    conn = libvirt.open(uri)
    pool = conn.storagePoolCreateXML(f"<pool type='dir'><name>sparse</name><target><path>{tmp_path / 'p'}"
                                     "</path></target></pool>", 1)
    pool.createXML(f"<volume><name>big</name><capacity>{64 * MIB}</capacity></volume>", 0)
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.truncate(64 * MIB)
        for at in range(0, 64 * MIB, 8 * MIB):
            f.seek(at)
            f.write(os.urandom(MIB))
    virsh(uri, "vol-upload", "big", str(src), "--pool", "sparse", "--sparse")
    vol_path = tmp_path / "p" / "big"
    assert vol_path.read_bytes() == src.read_bytes()
    assert os.stat(vol_path).st_blocks * 512 <= 9 * MIB, "holes stayed holes in the volume"
    virsh(uri, "vol-download", "big", str(tmp_path / "dst"), "--pool", "sparse", "--sparse")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "dst").st_blocks * 512 <= 9 * MIB, "holes stayed holes in the download"
    virsh(uri, "vol-download", "big", str(tmp_path / "dense"), "--pool", "sparse")
    assert (tmp_path / "dense").read_bytes() == src.read_bytes()
    pool.destroy()
    conn.close()


def test_logical_pools_need_device_mapper(daemon) -> None:
    conn = libvirt.open(daemon.uri)
    with pytest.raises(libvirt.libvirtError) as exc:
        conn.storagePoolDefineXML("<pool type='logical'><name>vg</name><target><path>/dev/vg</path></target>"
                                  "</pool>")
    assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT and "device-mapper" in str(exc.value)
    conn.close()


def test_domain_disk_of_type_volume(daemon, tmp_path) -> None:
    """<disk type='volume'> resolves to the volume's path at start; the volume cannot be deleted meanwhile."""
    from tests.conftest import kvm_available
    from tests.test_mgmt_libvirt_clients import PROBE

    require(kvm_available(), "/dev/kvm is missing or not accessible to this user")
    require(PROBE.exists(), f"{PROBE} not built (make -C guests/probe)")
    conn = libvirt.open(daemon.uri)
    pool = conn.storagePoolCreateXML(f"<pool type='dir'><name>vm-vols</name><target><path>{tmp_path}</path>"
                                     "</target></pool>", 0)
    vol = pool.createXML("<volume><name>disk.qcow2</name><capacity>1048576</capacity>"
                         "<target><format type='qcow2'/></target></volume>", 0)
    dom = conn.createXML(f"<domain type='kvm'><name>volguest</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
                         f"<os><type arch='x86_64'>hvm</type><kernel>{PROBE}</kernel></os><devices>"
                         "<disk type='volume' device='disk'><source pool='vm-vols' volume='disk.qcow2'/>"
                         "<target dev='vda' bus='virtio'/></disk></devices></domain>", 0)
    try:
        cmdline = next(open(f"/proc/{p}/cmdline").read() for p in os.listdir("/proc") if p.isdigit()
                       and "volguest" in open(f"/proc/{p}/cmdline").read().replace("\0", " ")
                       and "refvm.mgmt.refvmd" not in open(f"/proc/{p}/cmdline").read())
        assert f"file={vol.path()}" in cmdline and "format=qcow2" in cmdline
        with pytest.raises(libvirt.libvirtError) as exc:
            vol.delete(0)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and "volguest" in str(exc.value)
    finally:
        dom.destroy()
    vol.delete(0)
    pool.destroy()
    conn.close()

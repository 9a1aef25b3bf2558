"""Storage: a dir pool's lifecycle and its volumes (virStoragePool*, virStorageVol*).

A driver without storage (VIR_ERR_NO_SUPPORT) skips with its own message; operations a driver documents as
unsupported (the test driver has no resize or wipe) skip the same way.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt
import pytest

from conformance.drivers.libvirt import PREFIX, call_error
from conformance.libvirt_api.conftest import skip_unsupported

SPEC = "libvirt-api"
MIB = 1024 * 1024


def _pool_xml(name: str, path: str) -> str:
    return f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"


def _vol_xml(name: str, capacity: int, fmt: str = "raw") -> str:
    return (f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
            f"<allocation unit='bytes'>0</allocation><target><format type='{fmt}'/></target></volume>")


@pytest.fixture
def pool(conn, tmp_path) -> Iterator[libvirt.virStoragePool]:  # noqa: ANN001
    """A running dir pool in a directory of this test's own."""
    skip_unsupported(call_error(conn.listAllStoragePools), "storage pools")
    p = conn.storagePoolDefineXML(_pool_xml(f"{PREFIX}pool-{tmp_path.name}"[:60], str(tmp_path / "pool")))
    p.build(0)
    p.create(0)
    yield p
    if p.isActive():
        for vol in p.listAllVolumes():
            call_error(lambda v=vol: v.delete(0))
        call_error(p.destroy)
    call_error(p.undefine)


@pytest.mark.clause(SPEC, "virStoragePool/lifecycle")
def test_pool_lifecycle(conn, tmp_path) -> None:  # noqa: ANN001
    skip_unsupported(call_error(conn.listAllStoragePools), "storage pools")
    name = f"{PREFIX}lifecycle"
    p = conn.storagePoolDefineXML(_pool_xml(name, str(tmp_path / "p")))
    assert p.isPersistent() == 1 and p.isActive() == 0
    p.build(0)
    p.create(0)
    assert p.isActive() == 1
    state, capacity, allocation, available = p.info()
    assert state == libvirt.VIR_STORAGE_POOL_RUNNING and capacity >= allocation and available >= 0
    assert conn.storagePoolLookupByName(name).UUIDString() == p.UUIDString()
    p.destroy()
    assert p.isActive() == 0
    p.undefine()
    err = call_error(lambda: conn.storagePoolLookupByName(name))
    assert err is not None and err.code == libvirt.VIR_ERR_NO_STORAGE_POOL


@pytest.mark.clause(SPEC, "virStorageVolCreateXML/raw")
def test_create_and_look_up_a_volume(conn, pool) -> None:  # noqa: ANN001
    vol = pool.createXML(_vol_xml("disk0.img", 4 * MIB), 0)
    vtype, capacity, _allocation = vol.info()
    assert capacity == 4 * MIB and vtype == libvirt.VIR_STORAGE_VOL_FILE
    assert pool.storageVolLookupByName("disk0.img").key() == vol.key()
    assert conn.storageVolLookupByPath(vol.path()).name() == "disk0.img"
    assert conn.storageVolLookupByKey(vol.key()).path() == vol.path()
    doc = ET.fromstring(vol.XMLDesc(0))
    assert doc.findtext("name") == "disk0.img" and int(doc.findtext("capacity")) == 4 * MIB
    assert "disk0.img" in pool.listVolumes()


@pytest.mark.clause(SPEC, "virStorageVolCreateXMLFrom/clone")
def test_clone_a_volume(pool) -> None:  # noqa: ANN001
    src = pool.createXML(_vol_xml("src.img", 2 * MIB), 0)
    clone = pool.createXMLFrom(_vol_xml("clone.img", 2 * MIB), src, 0)
    assert clone.info()[1] == 2 * MIB


@pytest.mark.clause(SPEC, "virStorageVolResize/grow-shrink")
def test_resize_rules(pool) -> None:  # noqa: ANN001
    vol = pool.createXML(_vol_xml("grow.img", 2 * MIB), 0)
    err = call_error(lambda: vol.resize(4 * MIB, 0))
    skip_unsupported(err, "volume resize")
    assert err is None and vol.info()[1] == 4 * MIB
    err = call_error(lambda: vol.resize(1 * MIB, 0))
    assert err is not None and err.code == libvirt.VIR_ERR_INVALID_ARG, "shrinking needs VIR_STORAGE_VOL_RESIZE_SHRINK"
    vol.resize(1 * MIB, libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK)
    assert vol.info()[1] == 1 * MIB


@pytest.mark.clause(SPEC, "virStorageVolWipe/zero")
def test_wipe(pool) -> None:  # noqa: ANN001
    vol = pool.createXML(_vol_xml("wipe.img", 1 * MIB), 0)
    err = call_error(lambda: vol.wipe(0))
    skip_unsupported(err, "volume wipe")
    assert err is None


@pytest.mark.clause(SPEC, "virStorageVolUpload/download")
def test_upload_then_download(conn, pool) -> None:  # noqa: ANN001
    vol = pool.createXML(_vol_xml("data.img", 1 * MIB), 0)
    payload = bytes(range(256)) * 1024  # 256 KiB
    stream = conn.newStream(0)
    err = call_error(lambda: vol.upload(stream, 0, len(payload), 0))
    skip_unsupported(err, "volume upload")
    assert err is None, f"upload failed: {err}"
    stream.send(payload)
    stream.finish()
    down = conn.newStream(0)
    vol.download(down, 0, len(payload), 0)
    got = bytearray()
    while True:
        chunk = down.recv(65536)
        if not chunk:
            break
        got += chunk
    down.finish()
    assert bytes(got) == payload


@pytest.mark.clause(SPEC, "virStorageVolDelete/gone")
def test_delete_a_volume(pool) -> None:  # noqa: ANN001
    vol = pool.createXML(_vol_xml("del.img", 1 * MIB), 0)
    vol.delete(0)
    err = call_error(lambda: pool.storageVolLookupByName("del.img"))
    assert err is not None and err.code == libvirt.VIR_ERR_NO_STORAGE_VOL

"""Memory bounds and block I/O tuning (virDomainSetMemory, virDomainSetBlockIoTune/GetBlockIoTune)."""

from __future__ import annotations

import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from conformance.drivers.libvirt import call_error

SPEC = "libvirt-api"


def _disk(path: str) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{path}'/>"
            "<target dev='vda' bus='virtio'/></disk>")


@pytest.fixture
def disk_image() -> Iterator[str]:
    """A 1 MiB raw image the hypervisor's own user can open (libvirtd runs QEMU as libvirt-qemu)."""
    folder = Path(tempfile.mkdtemp(prefix="tck-disk-", dir="/var/tmp"))
    folder.chmod(0o755)
    path = folder / "disk.raw"
    path.write_bytes(b"\0" * (1 << 20))
    path.chmod(0o666)
    yield str(path)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.clause(SPEC, "virDomainSetMemory/within-max")
def test_set_memory_of_an_inactive_domain_config(conn, make_xml, name) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name(), memory_mib=64))
    dom.setMemoryFlags(32 * 1024, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert root.findtext("currentMemory") == str(32 * 1024)
    assert root.findtext("memory") == str(64 * 1024)


@pytest.mark.clause(SPEC, "virDomainSetBlockIoTune/live")
def test_block_io_tune_live(conn, make_xml, name, disk_image) -> None:  # noqa: ANN001
    dom = conn.createXML(make_xml(name(), extra_devices=_disk(disk_image)))
    # The *_max burst values are given too: libvirt's test driver checks the rate against a max of 0.
    params = {"total_bytes_sec": 1048576, "total_bytes_sec_max": 2097152, "total_iops_sec": 100,
              "total_iops_sec_max": 200}
    dom.setBlockIoTune("vda", params, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    got = dom.blockIoTune("vda", libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert got["total_bytes_sec"] == 1048576 and got["total_iops_sec"] == 100


@pytest.mark.clause(SPEC, "virDomainSetBlockIoTune/persistent")
def test_block_io_tune_persisted_in_xml(conn, make_xml, name, disk_image) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name(), extra_devices=_disk(disk_image)))
    params = {"read_bytes_sec": 2097152, "read_bytes_sec_max": 4194304}
    dom.setBlockIoTune("vda", params, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert dom.blockIoTune("vda", libvirt.VIR_DOMAIN_AFFECT_CONFIG)["read_bytes_sec"] == 2097152
    iotune = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("devices/disk/iotune")
    assert iotune is not None and iotune.findtext("read_bytes_sec") == "2097152"


@pytest.mark.clause(SPEC, "virDomainSetBlockIoTune/validation")
@pytest.mark.parametrize(
    "params",
    [{"total_bytes_sec": 1000, "read_bytes_sec": 10}, {"total_iops_sec": 10, "write_iops_sec": 5}],
    ids=["total-and-read-bytes", "total-and-write-iops"],
)
def test_block_io_tune_total_excludes_read_write(conn, make_xml, name, disk_image, params) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name(), extra_devices=_disk(disk_image)))
    err = call_error(lambda: dom.setBlockIoTune("vda", params, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    assert err is not None and err.code == libvirt.VIR_ERR_INVALID_ARG, f"got {err}"


@pytest.mark.clause(SPEC, "virDomainSetBlockIoTune/unknown-disk")
def test_block_io_tune_of_a_missing_disk(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name()))
    err = call_error(lambda: dom.setBlockIoTune("vdz", {"total_bytes_sec": 1}, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    assert err is not None and (err.code, err.domain) == (libvirt.VIR_ERR_INVALID_ARG, driver_error_domain), err


@pytest.mark.clause(SPEC, "virDomainMigrate/two-hosts")
def test_migration_needs_two_hosts(conn) -> None:  # noqa: ANN001
    pytest.skip("the target offers one host: migration is judged where a targets file names a second URI")

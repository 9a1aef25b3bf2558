"""Connection-level API: capabilities, node info, versions, URI, type (libvirt-tck 005-010)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlparse

import libvirt
import pytest

SPEC = "libvirt-api"


@pytest.mark.clause(SPEC, "virConnectGetCapabilities/documented-elements")
def test_capabilities_document_host_and_guests(conn: libvirt.virConnect) -> None:
    caps = ET.fromstring(conn.getCapabilities())
    assert caps.tag == "capabilities"
    host = caps.find("host")
    assert host is not None and (host.findtext("cpu/arch") or "").strip(), "capabilities lack host/cpu/arch"
    guests = caps.findall("guest")
    assert guests, "capabilities list no guest"
    for guest in guests:
        assert (guest.findtext("os_type") or "").strip() in {"hvm", "xen", "exe", "linux", "uml"}
        arch = guest.find("arch")
        assert arch is not None and arch.get("name"), "a guest has no arch name"
        assert arch.findall("domain"), f"guest arch {arch.get('name')} offers no domain type"
        assert all(d.get("type") for d in arch.findall("domain"))


@pytest.mark.clause(SPEC, "virNodeGetInfo/fields")
def test_node_info_is_consistent(conn: libvirt.virConnect) -> None:
    model, memory_mib, cpus, mhz, nodes, sockets, cores, threads = conn.getInfo()
    assert isinstance(model, str) and model
    assert memory_mib > 0 and cpus > 0 and mhz >= 0
    assert nodes >= 1 and sockets >= 1 and cores >= 1 and threads >= 1
    # virNodeInfo: "cpus: the number of active CPUs"; the topology fields multiply up to at least that
    # (libvirt reports nodes=1 and sockets folded in when the host's NUMA layout is irregular).
    assert nodes * sockets * cores * threads >= cpus


@pytest.mark.clause(SPEC, "virConnectGetVersion/values")
def test_versions_are_numbers(conn: libvirt.virConnect) -> None:
    assert conn.getVersion() >= 0
    lib = conn.getLibVersion()
    assert lib >= 1_000_000, "getLibVersion is major * 1,000,000 + minor * 1,000 + release"


@pytest.mark.clause(SPEC, "virConnectGetURI/canonical")
def test_uri_names_the_driver(conn: libvirt.virConnect) -> None:
    uri = urlparse(conn.getURI())
    assert uri.scheme, f"getURI gave {conn.getURI()!r}, which has no scheme"
    assert conn.getType(), "getType gave an empty name"
    assert conn.isAlive() == 1


@pytest.mark.clause(SPEC, "virConnectGetMaxVcpus/positive")
def test_max_vcpus_positive(conn: libvirt.virConnect, kind) -> None:  # noqa: ANN001
    err = None
    try:
        assert conn.getMaxVcpus(kind.domain_type) >= 1
    except libvirt.libvirtError as e:
        err = e
    if err is not None:
        pytest.fail(f"getMaxVcpus({kind.domain_type!r}) failed: {err}")

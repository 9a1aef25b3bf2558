"""Domain lifecycle in libvirt-tck's order: transient, then persistent; state and reason after each step.

Expectations are libvirt's API documentation (virDomainCreateXML, virDomainDefineXML, virDomainCreate,
virDomainDestroy, virDomainUndefine, virDomainGetState) and the reasons its drivers report.
"""

from __future__ import annotations

import libvirt
import pytest

from conformance.drivers.libvirt import call_error
from conformance.libvirt_api.known import START_PAUSED_REFUSED
from conformance.verdicts import expect

SPEC = "libvirt-api"


def _gone(conn: libvirt.virConnect, dom_name: str) -> bool:
    err = call_error(lambda: conn.lookupByName(dom_name))
    return err is not None and err.code == libvirt.VIR_ERR_NO_DOMAIN


@pytest.mark.clause(SPEC, "virDomainCreateXML/transient")
def test_create_xml_runs_a_transient_domain(conn, make_xml, name) -> None:  # noqa: ANN001
    n = name()
    dom = conn.createXML(make_xml(n))
    assert dom.isActive() == 1 and dom.isPersistent() == 0
    assert dom.ID() > 0, "a running domain has a positive id"
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]
    assert conn.lookupByID(dom.ID()).name() == n
    assert conn.lookupByUUID(dom.UUID()).name() == n


@pytest.mark.clause(SPEC, "virDomainDestroy/transient-vanishes")
def test_destroying_a_transient_domain_removes_it(conn, make_xml, name) -> None:  # noqa: ANN001
    n = name()
    dom = conn.createXML(make_xml(n))
    dom.destroy()
    assert _gone(conn, n), "a destroyed transient domain is still known"


@pytest.mark.clause(SPEC, "virDomainDefineXML/persistent-inactive")
def test_define_makes_a_persistent_inactive_domain(conn, make_xml, name) -> None:  # noqa: ANN001
    n = name()
    dom = conn.defineXML(make_xml(n))
    assert dom.isPersistent() == 1 and dom.isActive() == 0
    assert dom.ID() == -1, "an inactive domain has id -1"
    assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN]


@pytest.mark.clause(SPEC, "virDomainCreate/persistent-start-stop")
def test_start_destroy_keeps_the_definition(conn, make_xml, name) -> None:  # noqa: ANN001
    n = name()
    dom = conn.defineXML(make_xml(n))
    dom.create()
    assert dom.isActive() == 1 and dom.ID() > 0
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]
    dom.destroy()
    assert dom.isActive() == 0 and dom.isPersistent() == 1 and dom.ID() == -1
    assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    dom.undefine()
    assert _gone(conn, n)


@pytest.mark.clause(SPEC, "virDomainUndefine/running-becomes-transient")
def test_undefining_a_running_domain_makes_it_transient(conn, make_xml, name) -> None:  # noqa: ANN001
    n = name()
    dom = conn.defineXML(make_xml(n))
    dom.create()
    dom.undefine()
    assert dom.isActive() == 1 and dom.isPersistent() == 0, "undefine must leave the running instance alone"
    dom.destroy()
    assert _gone(conn, n)


@pytest.mark.clause(SPEC, "virDomainCreateWithFlags/start-paused")
@pytest.mark.known(START_PAUSED_REFUSED)
def test_start_paused(conn, make_xml, name) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name()))
    err = call_error(lambda: dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED))
    expect(err is None, f"createWithFlags(START_PAUSED) failed: {err}")
    assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    dom.resume()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


@pytest.mark.clause(SPEC, "virDomainSuspend/resume-states")
def test_suspend_and_resume(conn, make_xml, name) -> None:  # noqa: ANN001
    dom = conn.createXML(make_xml(name()))
    dom.suspend()
    assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    assert dom.info()[0] == libvirt.VIR_DOMAIN_PAUSED
    dom.resume()
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_UNPAUSED]


@pytest.mark.clause(SPEC, "virDomainDefineXML/redefine-updates")
def test_redefine_updates_the_persistent_config(conn, make_xml, name) -> None:  # noqa: ANN001
    n = name()
    dom = conn.defineXML(make_xml(n, memory_mib=64))
    uuid = dom.UUIDString()
    again = conn.defineXML(make_xml(n, memory_mib=96, uuid=uuid))
    assert again.UUIDString() == uuid
    assert again.maxMemory() == 96 * 1024


@pytest.mark.clause(SPEC, "virDomainGetInfo/fields")
def test_info_of_a_running_domain(conn, make_xml, name) -> None:  # noqa: ANN001
    dom = conn.createXML(make_xml(name(), memory_mib=64))
    state, max_kib, cur_kib, vcpus, _cpu_time = dom.info()
    assert state == libvirt.VIR_DOMAIN_RUNNING
    assert max_kib == 64 * 1024 and 0 < cur_kib <= max_kib
    assert vcpus == 1

"""The error for each misuse: the exact virErrorNumber, and the error domain libvirt's drivers use.

Driver-level checks report in the driver's own domain (VIR_FROM_QEMU, VIR_FROM_TEST, ...; the suite learns
it from a failed lookup); checks in libvirt's shared domain-config code report VIR_FROM_DOMAIN (or VIR_FROM_XML
for values the XML parser rejects). The expected numbers are those of libvirt's QEMU driver, the reference a
management application is written against.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import pytest

from conformance.drivers.libvirt import call_error
from conformance.libvirt_api.known import (
    AUTOSTART_TRANSIENT_ALLOWED,
    CREATE_RUNNING_INTERNAL_ERROR,
    SUSPEND_INACTIVE_INTERNAL_ERROR,
)
from conformance.verdicts import expect

SPEC = "libvirt-api"
DRIVER = "driver"  # stands for the driver's own error domain


@dataclass(frozen=True)
class Misuse:
    clause: str
    code: int
    domain: int | str


def _check(err, want: Misuse, driver_domain: int) -> None:  # noqa: ANN001
    expect(err is not None, f"the misuse succeeded; expected error {want.code}")
    domain = driver_domain if want.domain == DRIVER else want.domain
    expect((err.code, err.domain) == (want.code, domain), f"expected ({want.code}, {domain}), got {err}")


@pytest.mark.clause(SPEC, "virDomainLookupByName/missing")
@pytest.mark.parametrize("how", ["name", "uuid", "id"])
def test_lookup_of_a_missing_domain(conn, driver_error_domain, how: str) -> None:  # noqa: ANN001
    lookups: dict[str, Callable[[], object]] = {
        "name": lambda: conn.lookupByName("tck-missing"),
        "uuid": lambda: conn.lookupByUUIDString("8f7e6d5c-4b3a-2918-0706-f5e4d3c2b1a0"),
        "id": lambda: conn.lookupByID(987654),
    }
    err = call_error(lookups[how])
    _check(err, Misuse("", libvirt.VIR_ERR_NO_DOMAIN, DRIVER), driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainCreate/already-running")
@pytest.mark.known(CREATE_RUNNING_INTERNAL_ERROR)
def test_starting_a_running_domain(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name()))
    dom.create()
    _check(call_error(dom.create), Misuse("", libvirt.VIR_ERR_OPERATION_INVALID, DRIVER), driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainDestroy/not-running")
def test_destroying_an_inactive_domain(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name()))
    _check(call_error(dom.destroy), Misuse("", libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_DOMAIN),
           driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainSuspend/not-running")
@pytest.mark.known(SUSPEND_INACTIVE_INTERNAL_ERROR)
def test_suspending_an_inactive_domain(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name()))
    _check(call_error(dom.suspend), Misuse("", libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_DOMAIN),
           driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainDefineXML/malformed")
@pytest.mark.parametrize(
    "case",
    [
        ("not-well-formed", libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_FROM_DOMAIN),
        ("no-name", libvirt.VIR_ERR_NO_NAME, libvirt.VIR_FROM_DOMAIN),
        ("bad-memory", libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_XML),
        ("bad-type", libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_FROM_DOMAIN),
        ("no-type", libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_DOMAIN),
        ("no-name-and-bad-type", libvirt.VIR_ERR_NO_NAME, libvirt.VIR_FROM_DOMAIN),
        ("slash-in-name", libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN),
    ],
    ids=lambda c: c[0],
)
def test_define_of_bad_xml(conn, make_xml, driver_error_domain, case) -> None:  # noqa: ANN001
    what, code, domain = case
    good = make_xml("tck-bad-xml")
    bad = {
        "not-well-formed": good[: len(good) // 2],
        "no-name": good.replace("<name>tck-bad-xml</name>", ""),
        "bad-memory": good.replace("<memory unit='MiB'>64</memory>", "<memory unit='MiB'>lots</memory>"),
        "bad-type": re.sub(r"<domain type='[^']*'", "<domain type='nosuchhv'", good, count=1),
        "slash-in-name": good.replace("tck-bad-xml", "tck-bad/xml"),
        "no-type": re.sub(r"<domain type='[^']*'", "<domain", good, count=1),
        "no-name-and-bad-type": re.sub(r"<domain type='[^']*'", "<domain type='nosuchhv'", good,
                                       count=1).replace("<name>tck-bad-xml</name>", ""),
    }[what]
    _check(call_error(lambda: conn.defineXML(bad)), Misuse("", code, domain), driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainDefineXML/duplicate-name")
def test_define_with_a_taken_name_and_another_uuid(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    n = name()
    conn.defineXML(make_xml(n))
    err = call_error(lambda: conn.defineXML(make_xml(n, uuid="0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9")))
    _check(err, Misuse("", libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_DOMAIN), driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainUndefine/missing")
def test_undefine_twice(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name()))
    dom.undefine()
    _check(call_error(dom.undefine), Misuse("", libvirt.VIR_ERR_NO_DOMAIN, DRIVER), driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainSetMemory/above-max")
def test_set_memory_above_max(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    dom = conn.createXML(make_xml(name(), memory_mib=64))
    err = call_error(lambda: dom.setMemory(128 * 1024))
    _check(err, Misuse("", libvirt.VIR_ERR_INVALID_ARG, DRIVER), driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainSetMaxMemory/active")
def test_set_max_memory_of_a_running_domain(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    dom = conn.createXML(make_xml(name(), memory_mib=64))
    err = call_error(lambda: dom.setMaxMemory(128 * 1024))
    _check(err, Misuse("", libvirt.VIR_ERR_OPERATION_INVALID, DRIVER), driver_error_domain)


@pytest.mark.clause(SPEC, "virDomainSetAutostart/transient")
@pytest.mark.known(AUTOSTART_TRANSIENT_ALLOWED)
def test_autostart_of_a_transient_domain(conn, make_xml, name, driver_error_domain) -> None:  # noqa: ANN001
    dom = conn.createXML(make_xml(name()))
    err = call_error(lambda: dom.setAutostart(1))
    _check(err, Misuse("", libvirt.VIR_ERR_OPERATION_INVALID, DRIVER), driver_error_domain)


@pytest.mark.clause(SPEC, "virConnectOpenReadOnly/denied")
def test_read_only_connection_refuses_changes(libvirt_uri, kind) -> None:  # noqa: ANN001
    ro = libvirt.openReadOnly(libvirt_uri)
    try:
        err = call_error(lambda: ro.defineXML(f"<domain type='{kind.domain_type}'><name>tck-ro</name></domain>"))
        assert err is not None and err.code == libvirt.VIR_ERR_OPERATION_DENIED, f"got {err}"
        any_dom = ro.listAllDomains()
        if any_dom:
            err = call_error(lambda: any_dom[0].XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
            assert err is not None and err.code == libvirt.VIR_ERR_OPERATION_DENIED, f"got {err}"
    finally:
        ro.close()

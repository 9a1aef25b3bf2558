"""Lifecycle events with their detail codes, for every step (virConnectDomainEventCallbackRegisterAny)."""

from __future__ import annotations

import libvirt
import pytest

SPEC = "libvirt-api"
E = libvirt


@pytest.mark.clause(SPEC, "virConnectDomainEventRegisterAny/lifecycle-persistent")
def test_persistent_lifecycle_events(conn, make_xml, name, lifecycle) -> None:  # noqa: ANN001
    n = name()
    dom = conn.defineXML(make_xml(n))
    dom.create()
    dom.suspend()
    dom.resume()
    dom.destroy()
    dom.undefine()
    expected = [
        (E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_ADDED),
        (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED),
        (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
        (E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
        (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
        (E.VIR_DOMAIN_EVENT_UNDEFINED, E.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED),
    ]
    assert lifecycle.wait_for(n, len(expected)) == expected


@pytest.mark.clause(SPEC, "virConnectDomainEventRegisterAny/lifecycle-transient")
def test_transient_lifecycle_events(conn, make_xml, name, lifecycle) -> None:  # noqa: ANN001
    n = name()
    dom = conn.createXML(make_xml(n))
    dom.destroy()
    expected = [
        (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED),
        (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
    ]
    assert lifecycle.wait_for(n, len(expected)) == expected


@pytest.mark.clause(SPEC, "virConnectDomainEventRegisterAny/redefine-updated")
def test_redefine_sends_defined_updated(conn, make_xml, name, lifecycle) -> None:  # noqa: ANN001
    n = name()
    dom = conn.defineXML(make_xml(n))
    conn.defineXML(make_xml(n, memory_mib=96, uuid=dom.UUIDString()))
    expected = [
        (E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_ADDED),
        (E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_UPDATED),
    ]
    assert lifecycle.wait_for(n, len(expected)) == expected


@pytest.mark.clause(SPEC, "virConnectDomainEventDeregisterAny/stops")
def test_deregistered_callback_gets_nothing(conn, make_xml, name) -> None:  # noqa: ANN001
    from conformance.drivers.libvirt import LifecycleRecorder

    recorder = LifecycleRecorder()
    cb = conn.domainEventRegisterAny(None, E.VIR_DOMAIN_EVENT_ID_LIFECYCLE, recorder.callback, None)
    conn.domainEventDeregisterAny(cb)
    n = name()
    conn.defineXML(make_xml(n))
    assert recorder.wait_for(n, 1, timeout=1.0) == []

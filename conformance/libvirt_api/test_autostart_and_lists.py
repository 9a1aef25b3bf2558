"""Autostart, and listAllDomains with each filter flag (virConnectListAllDomains)."""

from __future__ import annotations

import libvirt
import pytest

SPEC = "libvirt-api"
L = libvirt


@pytest.mark.clause(SPEC, "virDomainSetAutostart/persistent")
def test_autostart_flag_round_trips(conn, make_xml, name) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name()))
    assert dom.autostart() == 0
    dom.setAutostart(1)
    assert dom.autostart() == 1
    dom.setAutostart(0)
    assert dom.autostart() == 0


@pytest.fixture
def population(conn, make_xml, name):  # noqa: ANN001, ANN201
    """One domain in each interesting state: inactive, running, transient, paused, autostart."""
    doms = {}
    doms["inactive"] = conn.defineXML(make_xml(name()))
    doms["running"] = conn.defineXML(make_xml(name()))
    doms["running"].create()
    doms["transient"] = conn.createXML(make_xml(name()))
    doms["paused"] = conn.defineXML(make_xml(name()))
    doms["paused"].create()
    doms["paused"].suspend()
    doms["autostart"] = conn.defineXML(make_xml(name()))
    doms["autostart"].setAutostart(1)
    return {k: d.name() for k, d in doms.items()}


FILTERS = {
    "ACTIVE": (L.VIR_CONNECT_LIST_DOMAINS_ACTIVE, {"running", "transient", "paused"}),
    "INACTIVE": (L.VIR_CONNECT_LIST_DOMAINS_INACTIVE, {"inactive", "autostart"}),
    "PERSISTENT": (L.VIR_CONNECT_LIST_DOMAINS_PERSISTENT, {"inactive", "running", "paused", "autostart"}),
    "TRANSIENT": (L.VIR_CONNECT_LIST_DOMAINS_TRANSIENT, {"transient"}),
    "RUNNING": (L.VIR_CONNECT_LIST_DOMAINS_RUNNING, {"running", "transient"}),
    "PAUSED": (L.VIR_CONNECT_LIST_DOMAINS_PAUSED, {"paused"}),
    "SHUTOFF": (L.VIR_CONNECT_LIST_DOMAINS_SHUTOFF, {"inactive", "autostart"}),
    "AUTOSTART": (L.VIR_CONNECT_LIST_DOMAINS_AUTOSTART, {"autostart"}),
    "NO_AUTOSTART": (L.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART, {"inactive", "running", "transient", "paused"}),
    "ACTIVE|PERSISTENT": (L.VIR_CONNECT_LIST_DOMAINS_ACTIVE | L.VIR_CONNECT_LIST_DOMAINS_PERSISTENT,
                          {"running", "paused"}),
}


@pytest.mark.clause(SPEC, "virConnectListAllDomains/filters")
@pytest.mark.parametrize("flag", list(FILTERS))
def test_list_all_domains_filter(conn, population, flag: str) -> None:  # noqa: ANN001
    flags, want = FILTERS[flag]
    ours = set(population.values())
    listed = {d.name() for d in conn.listAllDomains(flags)} & ours
    assert listed == {population[k] for k in want}


@pytest.mark.clause(SPEC, "virConnectNumOfDomains/counts")
def test_counts_match_lists(conn, population) -> None:  # noqa: ANN001
    assert conn.numOfDomains() == len(conn.listDomainsID())
    assert conn.numOfDefinedDomains() == len(conn.listDefinedDomains())
    active = {d.name() for d in conn.listAllDomains(L.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    assert {conn.lookupByID(i).name() for i in conn.listDomainsID()} == active

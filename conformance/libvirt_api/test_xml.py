"""Domain XML: the inactive and live round trip, and what the live XML adds (virDomainGetXMLDesc)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

SPEC = "libvirt-api"


@pytest.mark.clause(SPEC, "virDomainGetXMLDesc/inactive-round-trip")
def test_inactive_xml_round_trips(conn, make_xml, name) -> None:  # noqa: ANN001
    n = name()
    dom = conn.defineXML(make_xml(n))
    first = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    again = conn.defineXML(first)
    assert again.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == first
    root = ET.fromstring(first)
    assert root.findtext("name") == n and root.findtext("uuid") == dom.UUIDString()
    assert "id" not in root.attrib, "an inactive domain's XML carries no id"


@pytest.mark.clause(SPEC, "virDomainGetXMLDesc/live")
def test_live_xml_carries_the_id(conn, make_xml, name) -> None:  # noqa: ANN001
    dom = conn.createXML(make_xml(name()))
    root = ET.fromstring(dom.XMLDesc(0))
    assert root.get("id") == str(dom.ID())
    secure = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
    assert secure.findtext("uuid") == dom.UUIDString()


@pytest.mark.clause(SPEC, "virDomainGetXMLDesc/defaults-filled")
def test_defaults_are_filled_in(conn, make_xml, name) -> None:  # noqa: ANN001
    dom = conn.defineXML(make_xml(name()))
    root = ET.fromstring(dom.XMLDesc(0))
    uuid = root.findtext("uuid") or ""
    assert len(uuid) == 36 and uuid.count("-") == 4, "libvirt generates a uuid when the XML has none"
    assert root.find("memory").get("unit") == "KiB" and root.findtext("memory") == str(64 * 1024)

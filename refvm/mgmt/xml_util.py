"""Small helpers for reading libvirt XML with libvirt's error texts (shared by domain and device parsing)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from refvm.mgmt.errors import (
    VIR_ERR_INVALID_ARG,
    VIR_ERR_XML_DETAIL,
    VIR_ERR_XML_ERROR,
    VIR_FROM_DOMAIN,
    VIR_FROM_NONE,
    VIR_FROM_XML,
    VirError,
)

# virScaleInteger's suffixes -> bytes
_UNITS: dict[str, int] = {"b": 1, "bytes": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    _UNITS[_p] = _UNITS[_p + "ib"] = 1024 ** _i
    _UNITS[_p + "b"] = 1000 ** _i


def parse_document(text: str, root: str) -> ET.Element:
    """Parse ``text`` and check its root element, with libvirt's errors for each failure."""
    try:
        elem = ET.fromstring(text)
    except ET.ParseError as err:
        line = err.position[0] if err.position else 1
        reason = str(err).split(":")[0]
        raise VirError(VIR_ERR_XML_DETAIL, f"({root}_definition):{line}: {reason}", domain=VIR_FROM_DOMAIN) from None
    if elem.tag != root:
        raise VirError(VIR_ERR_XML_ERROR, f"expecting root element of '{root}', not '{elem.tag}'",
                       domain=VIR_FROM_XML)
    return elem


def bad_attr(elem: ET.Element, attr: str, value: str, expected: str = "") -> VirError:
    """virXMLProp*'s "Invalid value for attribute 'A' in element 'E': 'V'." error."""
    suffix = f" {expected}" if expected else ""
    text = f"Invalid value for attribute '{attr}' in element '{elem.tag}': '{value}'.{suffix}"
    return VirError(VIR_ERR_XML_ERROR, text, domain=VIR_FROM_XML)


def bad_value(value: str, xpath: str) -> VirError:
    """virXPath*'s "Invalid value 'V' for element or attribute 'XPATH'" error."""
    return VirError(VIR_ERR_XML_ERROR, f"Invalid value '{value}' for element or attribute '{xpath}'",
                    domain=VIR_FROM_XML)


def missing_attr(elem: ET.Element, attr: str) -> VirError:
    return VirError(VIR_ERR_XML_ERROR, f"Missing required attribute '{attr}' in element '{elem.tag}'",
                    domain=VIR_FROM_XML)


def enum_attr(elem: ET.Element, attr: str, allowed: tuple[str, ...], default: str | None = None,
              required: bool = False) -> str | None:
    """An attribute restricted to ``allowed`` values (virXMLPropEnum)."""
    value = elem.get(attr)
    if value is None:
        if required:
            raise missing_attr(elem, attr)
        return default
    if value not in allowed:
        raise bad_attr(elem, attr, value)
    return value


def uint_attr(elem: ET.Element, attr: str, default: int | None = None) -> int | None:
    """A non-negative integer attribute (decimal or 0x hex, as libvirt's virStrToLong_ui with base 0)."""
    value = elem.get(attr)
    if value is None:
        return default
    try:
        number = int(value, 0)
    except ValueError:
        raise bad_attr(elem, attr, value, "Expected non-negative integer value") from None
    if number < 0:
        raise bad_attr(elem, attr, value, "Expected non-negative integer value")
    return number


def scaled_kib(elem: ET.Element | None, xpath: str, default_unit: str = "KiB") -> int | None:
    """<memory unit='MiB'>N</memory> -> KiB, rounded up as libvirt rounds (VIR_DIV_UP)."""
    if elem is None:
        return None
    text = (elem.text or "").strip()
    try:
        number = int(text, 10)
        if number < 0:
            raise ValueError
    except ValueError:
        raise bad_value(text, xpath) from None
    unit = elem.get("unit", default_unit)
    scale = _UNITS.get(unit.lower())
    if scale is None:
        raise VirError(VIR_ERR_INVALID_ARG, f"unknown suffix '{unit}'", domain=VIR_FROM_NONE)
    return -(-number * scale // 1024)


def text_of(parent: ET.Element, path: str) -> str | None:
    """The text of a child element, or None when absent; empty text is None too, as libvirt's virXPathString."""
    node = parent.find(path)
    if node is None or node.text is None or node.text == "":
        return None
    return node.text

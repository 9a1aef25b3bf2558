"""Deliberate deviations of refvmd from libvirt's API semantics, off unless named with `refvmd --x-deviation`.

As refvm's own `x-deviation`s (refvm/deviations.py) prove the VMM suites can fail, these prove the libvirt_api
suite can: each breaks one documented behaviour in a way a libvirt-python client sees, and
tests/test_libvirt_api_deviations.py shows that each turns its named conformance test red.
"""

from __future__ import annotations

#: name -> the behaviour it breaks, and the libvirt_api test that must catch it.
KNOWN: dict[str, tuple[str, str]] = {
    "error-domain-driver": (
        "'domain is not running' is reported in the driver's error domain, not VIR_FROM_DOMAIN",
        "conformance/libvirt_api/test_errors.py::test_destroying_an_inactive_domain",
    ),
    "no-undefined-event": (
        "undefine sends no VIR_DOMAIN_EVENT_UNDEFINED",
        "conformance/libvirt_api/test_events.py::test_persistent_lifecycle_events",
    ),
    "list-ignores-autostart": (
        "listAllDomains ignores the AUTOSTART / NO_AUTOSTART filter flags",
        "conformance/libvirt_api/test_autostart_and_lists.py::test_list_all_domains_filter",
    ),
}

ACTIVE: frozenset[str] = frozenset()


def enable(names: list[str]) -> None:
    """Turn deviations on for this daemon; an unknown name is an error naming the known ones."""
    global ACTIVE
    unknown = set(names) - set(KNOWN)
    if unknown:
        raise ValueError(f"unknown deviation(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN))}")
    ACTIVE = frozenset(names)


def active(name: str) -> bool:
    return name in ACTIVE

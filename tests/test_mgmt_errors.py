"""refvmd's libvirt numbers and messages are libvirt's own: checked against libvirt-python and test:///default."""
from __future__ import annotations

import pytest

from refvm.mgmt import errors, vir
from tests.conftest import require

try:
    import libvirt  # type: ignore[no-redef]
except ImportError:  # pragma: no cover - CI installs it
    libvirt = None


def _libvirt():
    require(libvirt is not None, "libvirt-python is not installed (pip install libvirt-python)")
    return libvirt


def _public_names(module) -> list[str]:
    return [n for n in dir(module) if n.startswith("VIR_") and isinstance(getattr(module, n), int)]


@pytest.mark.parametrize("module", [errors, vir], ids=["errors", "vir"])
def test_every_constant_equals_libvirt_pythons(module) -> None:
    lv = _libvirt()
    ours = {n for n in _public_names(module) if n != "VIR_CONNECT_LIST_DOMAINS_ALL_FLAGS"}
    assert ours, "no constants found"
    wrong = {n: (getattr(module, n), getattr(lv, n, None)) for n in ours if getattr(module, n) != getattr(lv, n, None)}
    assert not wrong


def test_iotune_parameter_names_are_libvirts() -> None:
    lv = _libvirt()
    names = {getattr(lv, n) for n in dir(lv) if n.startswith("VIR_DOMAIN_BLOCK_IOTUNE_")}
    assert {name for name, _ in vir.BLOCK_IOTUNE_PARAMS} == names


def test_messages_are_formatted_as_libvirt_formats_them() -> None:
    assert errors.VirError(errors.VIR_ERR_OPERATION_INVALID, "domain is already running").message == \
        "Requested operation is not valid: domain is already running"
    assert errors.VirError(errors.VIR_ERR_NO_DOMAIN).message == "Domain not found"
    err = errors.operation_invalid("domain is not running")
    assert (err.code, err.domain, err.level) == (55, 10, 2)


def test_same_texts_as_libvirts_test_driver() -> None:
    """The same misuse through libvirt's own test driver gives the text refvmd formats for that code."""
    lv = _libvirt()
    conn = lv.open("test:///default")
    dom = conn.lookupByName("test")
    dom.destroy()  # test:///default's state is shared by the whole test process: start it again afterwards
    seen = {}
    try:
        for call in (dom.suspend, lambda: conn.lookupByName("no-such-domain")):
            with pytest.raises(lv.libvirtError) as info:
                call()
            e = info.value
            seen[e.get_error_code()] = e.get_error_message()
    finally:
        dom.create()
    for code, message in seen.items():
        detail = message.split(": ", 1)[1] if ": " in message else None
        assert errors.format_message(code, detail) == message

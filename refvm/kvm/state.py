"""Raw state blobs of the KVM state ioctls: one fixed-size uapi struct each, validated on the way in.

State is data: every getter returns the kernel's struct as ``bytes`` (what a migration stream or a snapshot
stores), every setter takes such bytes back and refuses a blob of the wrong size by name. ``view()`` gives a
mutable, typed copy for reading or editing fields (``view("struct kvm_vcpu_events", raw).nmi.masked``), and
``blob()`` turns it back into bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._ffi import ffi
from ._sys import ioctl_ptr

#: uapi struct of each state kind, by the name used in error messages.
STRUCTS = {
    "xsave": "struct kvm_xsave",
    "lapic": "struct kvm_lapic_state",
    "vcpu events": "struct kvm_vcpu_events",
    "irqchip": "struct kvm_irqchip",
    "pit2": "struct kvm_pit_state2",
    "clock": "struct kvm_clock_data",
    "xcrs": "struct kvm_xcrs",
}


class StateSizeError(ValueError):
    """A state blob whose size is not its struct's (names the state and both sizes)."""


def view(ctype: str, raw: bytes | None = None) -> object:
    """A fresh ``ctype *`` (zeroed, or a copy of `raw`), whose fields can be read and written."""
    c = ffi.new(f"{ctype} *")
    if raw is not None:
        size = ffi.sizeof(ctype)
        if len(raw) != size:
            raise StateSizeError(f"{ctype}: state is {len(raw)} bytes, expected {size}")
        ffi.buffer(c)[:] = raw
    return c


def blob(c: object) -> bytes:
    """The bytes of a struct built or edited with ``view``."""
    return bytes(ffi.buffer(c))


def get_blob(fd: int, request: int, kind: str, init: dict[str, int] | None = None) -> bytes:
    """Run a get ioctl into a zeroed struct (fields in `init` preset, e.g. an irqchip's chip_id)."""
    c = view(STRUCTS[kind])
    for name, value in (init or {}).items():
        setattr(c, name, value)
    ioctl_ptr(fd, request, c, kind)
    return blob(c)


def set_blob(fd: int, request: int, kind: str, raw: bytes) -> None:
    """Run a set ioctl with `raw`, which must be exactly its struct."""
    ioctl_ptr(fd, request, view(STRUCTS[kind], raw), kind)


def blob_accessors(kind: str, get_request: int, set_request: int, doc: str) -> tuple[Callable, Callable]:
    """A getter and a setter method for a state kept as one raw struct (on an object with ``_fd``)."""

    def getter(self: Any) -> bytes:
        return get_blob(self._fd, get_request, kind)

    def setter(self: Any, raw: bytes) -> None:
        set_blob(self._fd, set_request, kind, raw)

    getter.__doc__ = f"{doc} (the raw {STRUCTS[kind]})."
    setter.__doc__ = f"Restore what the getter returned: a {STRUCTS[kind]} of exactly its size."
    return getter, setter

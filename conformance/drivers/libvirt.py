"""The libvirt_api suite's only client: libvirt-python, against any libvirt URI.

A target is a URI (`test:///default`, `qemu:///system`, `refvm+unix:///session?socket=...`). Everything
the suite knows of it comes through the public API: the capabilities XML tells which domain type and
architecture to put in a guest's XML and whether guests really run (the test driver only pretends), and
errors are read back as (virErrorNumber, virErrorDomain, message), the triple libvirt's API promises.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

#: Every domain and pool the suite creates carries this prefix, so cleanup never touches anything else.
PREFIX = "tck-"


@dataclass(frozen=True)
class LibvirtError:
    """What a failed call reported: the fields libvirt's API documents for virError."""

    code: int
    domain: int
    message: str


def call_error(fn: Callable[[], Any]) -> LibvirtError | None:
    """Run fn; return the libvirt error it raised, or None when it succeeded."""
    try:
        fn()
    except libvirt.libvirtError as err:
        return LibvirtError(err.get_error_code(), err.get_error_domain(), err.get_error_message() or "")
    return None


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; the suite reads them from the exception instead."""


libvirt.registerErrorHandler(_quiet, None)


class EventLoop:
    """libvirt's default event loop on a thread: callbacks registered on a connection run here.

    libvirt needs the loop registered before the connection that registers callbacks is opened, so the
    suite starts it once per process, first.
    """

    _started = False
    _lock = threading.Lock()

    @classmethod
    def ensure(cls) -> None:
        with cls._lock:
            if cls._started:
                return
            libvirt.virEventRegisterDefaultImpl()
            thread = threading.Thread(target=cls._run, name="libvirt-events", daemon=True)
            thread.start()
            cls._started = True

    @staticmethod
    def _run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()


@dataclass
class LifecycleRecorder:
    """Lifecycle events (event, detail) per domain name, in the order the target sent them."""

    events: list[tuple[str, int, int]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=lambda: threading.Condition(threading.RLock()))

    def callback(self, _conn: object, dom: libvirt.virDomain, event: int, detail: int, _opaque: object) -> None:
        with self.cond:
            self.events.append((dom.name(), event, detail))
            self.cond.notify_all()

    def for_domain(self, name: str) -> list[tuple[int, int]]:
        with self.cond:  # reentrant use from wait_until: Condition wraps an RLock
            return [(e, d) for n, e, d in self.events if n == name]

    def wait_until(self, name: str, last: tuple[int, int], timeout: float = 10.0) -> list[tuple[int, int]]:
        """Every event of domain `name` up to and including the first `last` (all of them on a timeout)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while last not in self.for_domain(name):
                left = deadline - time.monotonic()
                if left <= 0:
                    return self.for_domain(name)
                self.cond.wait(left)
            seen = self.for_domain(name)
            return seen[: seen.index(last) + 1]

    def wait_for(self, name: str, count: int, timeout: float = 10.0) -> list[tuple[int, int]]:
        """The first `count` events of domain `name`, waiting up to `timeout` for them to arrive."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len([1 for n, _, _ in self.events if n == name]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
        return self.for_domain(name)[:count] if count else self.for_domain(name)


@dataclass(frozen=True)
class GuestKind:
    """What a domain's XML must say on this target, read from its capabilities."""

    domain_type: str  # <domain type=...>
    arch: str  # <os><type arch=...>
    runs_guests: bool  # False for the test driver: its domains are bookkeeping only


def guest_kind(conn: libvirt.virConnect) -> GuestKind:
    """The first hvm guest the capabilities XML offers (x86_64 first): its domain type and architecture."""
    caps = ET.fromstring(conn.getCapabilities())
    guests = caps.findall("guest")
    guests.sort(key=lambda g: (g.find("arch") is None or g.find("arch").get("name") != "x86_64"))
    for guest in guests:
        if (guest.findtext("os_type") or "").strip() != "hvm":
            continue
        arch = guest.find("arch")
        if arch is None:
            continue
        dom = arch.find("domain")
        if dom is None:
            continue
        dtype = dom.get("type", "")
        return GuestKind(dtype, arch.get("name", ""), runs_guests=dtype != "test")
    raise AssertionError("the capabilities XML offers no hvm guest")


def domain_xml(
    kind: GuestKind, name: str, *, kernel: str | None = None, memory_mib: int = 64, uuid: str | None = None,
    extra_devices: str = "",
) -> str:
    """A minimal domain the target can run: the probe guest where guests run, XML only elsewhere."""
    os_kernel = f"<kernel>{kernel}</kernel>" if (kernel and kind.runs_guests) else ""
    devices = "<serial type='pty'/><console type='pty'/>" if kind.runs_guests else ""
    uuid_el = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (
        f"<domain type='{kind.domain_type}'><name>{name}</name>{uuid_el}"
        f"<memory unit='MiB'>{memory_mib}</memory><currentMemory unit='MiB'>{memory_mib}</currentMemory>"
        f"<vcpu>1</vcpu><os><type arch='{kind.arch}' machine='pc'>hvm</type>{os_kernel}</os>"
        "<features><acpi/></features>"
        "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
        f"<devices>{devices}{extra_devices}</devices></domain>"
    )


def cleanup(conn: libvirt.virConnect) -> None:
    """Destroy and undefine every domain and storage pool the suite made (names with PREFIX)."""
    for dom in conn.listAllDomains():
        if not dom.name().startswith(PREFIX):
            continue
        if dom.isActive():
            call_error(dom.destroy)
        if call_error(dom.isPersistent) is None and dom.isPersistent():
            call_error(dom.undefine)
    try:
        pools = conn.listAllStoragePools()
    except libvirt.libvirtError:
        return
    for pool in pools:
        if not pool.name().startswith(PREFIX):
            continue
        if pool.isActive():
            for vol in call_list(pool.listAllVolumes):
                call_error(lambda v=vol: v.delete(0))
            call_error(pool.destroy)
        call_error(pool.undefine)


def call_list(fn: Callable[[], list]) -> list:
    try:
        return fn()
    except libvirt.libvirtError:
        return []

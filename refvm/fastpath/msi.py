"""MSI-X delivery through KVM irqfds: one GSI routed to each live MSI message, one eventfd bound to it.

Why: KVM_SIGNAL_MSI is an ioctl on the VM fd; an irqfd turns "raise this MSI" into an 8-byte write to an
eventfd that any thread (or, one day, another process such as a vhost back-end) can do, and the kernel
injects the interrupt from that write directly.

Semantics stay exactly Msix's: masking, pending bits and "deliver the pending message on unmask" are all
still decided by :class:`refvm.devices.pci.msix.Msix`; only its very last step -- the PCI bus handing
(address, data) to the machine's MSI sink -- changes. :class:`MsiRoutes` wraps that sink: if an irqfd
exists for this exact (address, data) the write goes to its eventfd, otherwise to the original sink
(KVM_SIGNAL_MSI inside the MSI window, DMA to RAM outside it). So a route that lags behind a table
change can never deliver a wrong message: at worst the slow path is taken.

Which routes exist follows every function's vector table: an Msix listener (called under the function's
lock on every table, Message Control or reset change) recomputes the messages of the vectors that are
enabled and unmasked, and the GSI table (KVM_SET_GSI_ROUTING, which replaces the whole table) is
rewritten only when that set changes. The table always starts with KVM's default x86 irqchip routes
for GSIs 0-23 (PIC pins for 0-15, IOAPIC pins for 0-23), which KVM_IRQ_LINE and the PIT go through.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from refvm.kvm import IrqchipRoute, KvmError, MsiRoute

if TYPE_CHECKING:
    from refvm.devices.pci.bus import PciBus
    from refvm.devices.pci.msix import Msix
    from refvm.fastpath.stats import FastPathStats
    from refvm.kvm import Vm

__all__ = ["MsiRoutes", "default_irqchip_routes", "FIRST_MSI_GSI", "MSI_WINDOW"]

log = logging.getLogger(__name__)

#: GSIs below this are the in-kernel irqchip's pins.
FIRST_MSI_GSI = 24
#: Messages outside this window are DMA writes, not interrupts: never routed.
MSI_WINDOW = range(0xFEE0_0000, 0xFEF0_0000)
#: Leave room below KVM_CAP_IRQ_ROUTING (4096 here) and bound the work of one table rewrite.
MAX_MSI_ROUTES = 1024
_PIC_MASTER, _PIC_SLAVE, _IOAPIC = 0, 1, 2


def default_irqchip_routes() -> list[IrqchipRoute]:
    """KVM's default x86 routing (virt/kvm/irqchip default_routing): GSI i -> IOAPIC pin i for 0..23,
    and also -> PIC pin i % 8 of the master (i < 8) or slave PIC for 0..15."""
    routes: list[IrqchipRoute] = []
    for gsi in range(24):
        routes.append(IrqchipRoute(gsi, _IOAPIC, gsi))
        if gsi < 16:
            routes.append(IrqchipRoute(gsi, _PIC_MASTER if gsi < 8 else _PIC_SLAVE, gsi % 8))
    return routes


@dataclass
class _Route:
    gsi: int
    efd: int


class MsiRoutes:
    """irqfd-backed MSI delivery for every MSI-X function on ``bus``; see the module docstring."""

    def __init__(self, vm: Vm, bus: PciBus, stats: FastPathStats, *, max_routes: int = MAX_MSI_ROUTES) -> None:
        self.vm = vm
        self.bus = bus
        self.stats = stats
        self.max_routes = max_routes
        self._lock = threading.Lock()  # leaf lock: taken under a function's lock, never the other way
        self._routes: dict[tuple[int, int], _Route] = {}
        self._wanted: dict[int, set[tuple[int, int]]] = {}  # id(Msix) -> live messages
        self._free_gsis: list[int] = []
        self._next_gsi = FIRST_MSI_GSI
        self._closed = False
        self._original_sink: Callable[[int, int], None] = bus.msi_sink
        self._msix: list[Msix] = [dev.msix for _, _, dev in bus.devices() if dev.msix is not None]
        bus.msi_sink = self.deliver
        for msix in self._msix:
            msix.add_listener(self.msix_changed)  # also runs msix_changed() once, under the function lock

    # ---------------------------------------------------------------- delivery (any thread)
    def deliver(self, address: int, data: int) -> None:
        """The bus's MSI sink while attached: an irqfd write if routed, else the machine's own sink."""
        with self._lock:
            route = self._routes.get((address, data))
            if route is not None:
                os.eventfd_write(route.efd, 1)
                self.stats.irqfd_msis += 1
                return
        self.stats.msi_fallbacks += 1
        self._original_sink(address, data)

    # ---------------------------------------------------------------- routes
    @staticmethod
    def live_messages(msix: Msix) -> set[tuple[int, int]]:
        """(address, data) of every vector that would be delivered now (enabled, unmasked, in the window)."""
        if msix.function_masked:
            return set()
        messages = set()
        for vector in range(msix.table_size):
            if not msix.entry_masked(vector):
                address, data = msix.message(vector)
                if address in MSI_WINDOW:
                    messages.add((address, data))
        return messages

    def msix_changed(self, msix: Msix) -> None:
        """Msix listener (called with the function's lock held): re-sync routes; never raises."""
        try:
            live = self.live_messages(msix)
            with self._lock:
                if self._closed or self._wanted.get(id(msix)) == live:
                    return
                self._wanted[id(msix)] = live
                self._sync_locked()
        except Exception:  # noqa: BLE001 - a guest table write must not fail because of us
            self.stats.errors += 1
            log.exception("fastpath: MSI route sync failed")

    def _sync_locked(self) -> None:
        wanted: set[tuple[int, int]] = set().union(*self._wanted.values())
        stale = [key for key in self._routes if key not in wanted]
        new = [key for key in sorted(wanted) if key not in self._routes]
        new = new[: max(0, self.max_routes - (len(self._routes) - len(stale)))]  # the rest: signal_msi
        if not stale and not new:
            return
        for key in stale:
            route = self._routes.pop(key)
            self._unbind(route)
        for key in new:
            gsi = self._free_gsis.pop() if self._free_gsis else self._take_gsi()
            self._routes[key] = _Route(gsi, os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
        self._write_table()
        for key in new:
            route = self._routes[key]
            try:
                self.vm.irqfd(route.efd, route.gsi)
            except KvmError as err:
                self.stats.errors += 1
                log.warning("fastpath: irqfd for GSI %d: %s", route.gsi, err)
                del self._routes[key]
                os.close(route.efd)
                self._free_gsis.append(route.gsi)

    def _take_gsi(self) -> int:
        gsi = self._next_gsi
        self._next_gsi += 1
        return gsi

    def _unbind(self, route: _Route) -> None:
        try:
            self.vm.irqfd(route.efd, route.gsi, deassign=True)
        except KvmError as err:
            self.stats.errors += 1
            log.warning("fastpath: deassigning irqfd for GSI %d: %s", route.gsi, err)
        os.close(route.efd)
        self._free_gsis.append(route.gsi)

    def _write_table(self) -> None:
        table: list[IrqchipRoute | MsiRoute] = list(default_irqchip_routes())
        table += [MsiRoute(r.gsi, address, data) for (address, data), r in sorted(self._routes.items())]
        self.vm.set_gsi_routing(table)
        self.stats.route_updates += 1

    def routes(self) -> dict[tuple[int, int], int]:
        """(address, data) -> GSI of every irqfd route now (for tests and the stats query)."""
        with self._lock:
            return {key: r.gsi for key, r in self._routes.items()}

    # ---------------------------------------------------------------- teardown
    def close(self) -> None:
        """Give the bus its own sink back, drop every irqfd and restore KVM's default routing table."""
        for msix in self._msix:
            msix.remove_listener(self.msix_changed)
        if self.bus.msi_sink == self.deliver:
            self.bus.msi_sink = self._original_sink
        with self._lock:
            self._closed = True
            had_routes = bool(self._routes)
            for route in self._routes.values():
                self._unbind(route)
            self._routes.clear()
            self._wanted.clear()
            if had_routes:
                try:
                    self._write_table()
                except KvmError as err:  # the VM is about to be closed anyway
                    log.warning("fastpath: restoring the default GSI routing: %s", err)

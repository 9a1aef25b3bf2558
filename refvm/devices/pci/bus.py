"""PciBus: slots and functions of one PCI bus, BAR decoding on the PIO/MMIO buses, INTx and MSI routing.

Decoding. A BAR is registered on the PIO or MMIO bus exactly while its function would decode it
(:meth:`PciDevice.bar_address`: COMMAND bit set, valid address); every config write touching COMMAND,
a BAR or the ROM BAR re-synchronises all mappings. refvm's buses cannot overlap ranges the way QEMU's
memory regions can (QEMU lets a PCI BAR shadow a platform device at priority 1), so a BAR whose range is
taken or unreachable (an I/O BAR above 64 KiB) stays unmapped and is listed in :attr:`PciBus.conflicts`;
it is retried whenever mappings change.

INTx. refvm has no firmware, so the bus plays SeaBIOS on QEMU's ``pc`` machine: the PIIX routes a
function's pin to PIRQ ``(slot - 1 + pin - 1) & 3`` (QEMU's pci_slot_get_pirq, SeaBIOS's
piix_pci_slot_get_irq) and SeaBIOS points PIRQ A-D at IRQs 10, 10, 11, 11; the IRQ is written into
Interrupt Line when the function is plugged and after reset (as firmware would; measured on QEMU 7.2:
00:02.0 -> 10, 00:03.0 -> 11, 00:05.0 -> 10). Functions sharing an IRQ are wire-ORed: the sink hears
``(irq, 1)`` when the first function asserts and ``(irq, 0)`` when the last one deasserts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from refvm.bus import BusError, MmioBus, PioBus
from refvm.devices.pci.config import INTERRUPT_LINE
from refvm.devices.pci.device import PciDevice

__all__ = ["PciBus", "PciError", "MsiSink", "IntxSink", "PC_PIRQ_IRQS", "pirq_for"]

MsiSink = Callable[[int, int], None]
IntxSink = Callable[[int, int], None]
#: IRQs SeaBIOS gives PIRQ A..D on QEMU's pc (i440fx/PIIX3) and q35 machines.
PC_PIRQ_IRQS = (10, 10, 11, 11)
SLOTS = 32
FUNCTIONS = 8


class PciError(Exception):
    """A device cannot be plugged where asked (QEMU-worded message)."""


def pirq_for(slot: int, pin: int) -> int:
    """PIRQ index 0..3 (A..D) that INTx ``pin`` (1..4) of a function in ``slot`` reaches on the PIIX."""
    return (slot - 1 + pin - 1) & 3


class PciBus:
    """Bus 0 of a PC: up to 32 slots x 8 functions, reached through a config mechanism."""

    def __init__(
        self,
        pio: PioBus,
        mmio: MmioBus,
        msi_sink: MsiSink,
        intx_sink: IntxSink,
        *,
        bus_number: int = 0,
        pirq_irqs: tuple[int, int, int, int] = PC_PIRQ_IRQS,
        assign_irq_lines: bool = True,
    ) -> None:
        self.pio = pio
        self.mmio = mmio
        self.msi_sink = msi_sink
        self.intx_sink = intx_sink
        self.bus_number = bus_number
        self.pirq_irqs = pirq_irqs
        self.assign_irq_lines = assign_irq_lines
        self._devices: dict[tuple[int, int], PciDevice] = {}
        self._mapped: dict[tuple[int, int, int], tuple[PioBus | MmioBus, int]] = {}
        self.conflicts: dict[tuple[int, int, int], str] = {}
        self._asserted: dict[int, set[tuple[int, int]]] = {}
        self._device_irq: dict[tuple[int, int], int] = {}
        self._mapping_listeners: list[Callable[[], None]] = []
        #: PIRQ index -> IRQ (None: not routed); the PIIX3's route registers when present, else pirq_irqs.
        self.pirq_router: Callable[[int], int | None] | None = None
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- plugging
    def add(self, device: PciDevice, slot: int | None = None, function: int = 0) -> tuple[int, int]:
        """Plug ``device`` at (slot, function); ``slot=None`` takes the lowest empty slot."""
        with self._lock:
            if device.bus is not None:
                raise PciError(f"PCI: {device.name} is already plugged at {device.slot:02x}.{device.function}")
            if not 0 <= function < FUNCTIONS:
                raise PciError(f"PCI: function {function} out of range 0..7 for {device.name}")
            if slot is None:
                for candidate in range(SLOTS):
                    if not any((candidate, f) in self._devices for f in range(FUNCTIONS)):
                        slot = candidate
                        break
                else:
                    raise PciError(f"PCI: no slot/function available for {device.name}, all in use or reserved")
            if not 0 <= slot < SLOTS:
                raise PciError(f"PCI: slot {slot} out of range 0..31 for {device.name}")
            other = self._devices.get((slot, function))
            if other is not None:
                raise PciError(
                    f"PCI: slot {slot} function {function} not available for {device.name}, "
                    f"in use by {other.name},id={other.qdev_id or '(null)'}"
                )
            self._check_multifunction(device, slot, function)
            self._devices[(slot, function)] = device
            device.bus, device.slot, device.function = self, slot, function
            self._assign_line(device)
            self.update_mappings()
            return slot, function

    def _check_multifunction(self, device: PciDevice, slot: int, function: int) -> None:
        """QEMU's rules: functions 1-7 need a multi-function fn 0; a single-function fn 0 needs them empty."""
        if function:
            f0 = self._devices.get((slot, 0))
            if f0 is not None and not f0.multifunction:
                raise PciError(f"PCI: single function device can't be populated in function {slot:x}.{function:x}")
            return
        if device.multifunction:
            return
        for fn in range(1, FUNCTIONS):
            if (slot, fn) in self._devices:
                raise PciError(f"PCI: {slot:x}.0 indicates single function, but {slot:x}.{fn:x} is already populated.")

    def remove(self, slot: int, function: int = 0) -> PciDevice:
        """Unplug a function: its BARs are unmapped and its INTx released."""
        with self._lock:
            device = self._devices.pop((slot, function), None)
            if device is None:
                raise PciError(f"PCI: nothing at slot {slot} function {function}")
            for irq, asserted in self._asserted.items():
                if (slot, function) in asserted:
                    asserted.discard((slot, function))
                    if not asserted:
                        self.intx_sink(irq, 0)
            self.update_mappings()
            device.bus, device.slot, device.function = None, -1, -1
            return device

    def find(self, slot: int, function: int = 0) -> PciDevice | None:
        return self._devices.get((slot, function))

    def devices(self) -> list[tuple[int, int, PciDevice]]:
        """(slot, function, device) in devfn order."""
        return [(s, f, d) for (s, f), d in sorted(self._devices.items())]

    # ---------------------------------------------------------------- configuration cycles
    def config_read(self, bus: int, dev: int, fn: int, offset: int, size: int) -> int:
        """A configuration read; an absent bus/device/function reads all-ones (master abort, §6.1)."""
        device = self._devices.get((dev, fn)) if bus == self.bus_number else None
        if device is None:
            return (1 << (8 * max(0, min(size, 8)))) - 1
        return device.config_read(offset, size)

    def config_write(self, bus: int, dev: int, fn: int, offset: int, size: int, value: int) -> None:
        """A configuration write; to an absent function it is dropped."""
        device = self._devices.get((dev, fn)) if bus == self.bus_number else None
        if device is not None:
            device.config_write(offset, size, value)

    # ---------------------------------------------------------------- BAR decoding
    def update_mappings(self) -> None:
        """Make the PIO/MMIO buses match what every function decodes now."""
        with self._lock:
            want: dict[tuple[int, int, int], tuple[PioBus | MmioBus, int]] = {}
            for (slot, fn), device in sorted(self._devices.items()):
                for index, spec in device.bars.items():
                    addr = device.bar_address(index)
                    if addr is not None:
                        want[(slot, fn, index)] = (self.pio if spec.is_io else self.mmio, addr)
            for key, (bus, addr) in list(self._mapped.items()):
                if want.get(key) != (bus, addr):
                    del self._mapped[key]
                    try:
                        bus.unregister(addr)
                    except BusError:
                        pass  # someone else removed it; nothing left to undo
            self.conflicts = {k: v for k, v in self.conflicts.items() if k in want}
            for key, (bus, addr) in want.items():
                if key in self._mapped:
                    continue
                slot, fn, index = key
                device = self._devices[(slot, fn)]
                spec = device.bars[index]
                try:
                    bus.register(addr, spec.size, spec.region, f"{device.name} {slot:02x}.{fn} BAR{index}")
                except BusError as err:
                    self.conflicts[key] = str(err)
                    continue
                self.conflicts.pop(key, None)
                self._mapped[key] = (bus, addr)
            for listener in list(self._mapping_listeners):
                listener()

    def add_mapping_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every :meth:`update_mappings` (e.g. to move ioeventfds with a BAR).

        It runs with the bus lock held, on whatever thread changed the mappings (usually a vCPU thread in
        a config write): it may read :meth:`mapped_address` / :meth:`mappings` and take leaf locks of its
        own, but must not call into a device (devices take their own lock before the bus's) nor block.
        It is also called once right away, so the listener starts from the current mappings without a race.
        """
        with self._lock:
            self._mapping_listeners.append(callback)
            callback()

    def remove_mapping_listener(self, callback: Callable[[], None]) -> None:
        """Undo :meth:`add_mapping_listener` (unknown callbacks are ignored)."""
        with self._lock:
            if callback in self._mapping_listeners:
                self._mapping_listeners.remove(callback)

    def mappings(self) -> dict[tuple[int, int, int], int]:
        """Snapshot of every decoded BAR: (slot, function, BAR index) -> address on its bus."""
        with self._lock:
            return {key: addr for key, (_bus, addr) in self._mapped.items()}

    def mapped_address(self, slot: int, function: int, index: int) -> int | None:
        """Where a BAR is registered on its bus now (None if not decoding or in conflict)."""
        entry = self._mapped.get((slot, function, index))
        return entry[1] if entry else None

    # ---------------------------------------------------------------- interrupts
    def irq_for(self, device: PciDevice) -> int | None:
        """The IRQ the function's INTx pin reaches (None without a pin)."""
        pin = device.interrupt_pin
        if not 1 <= pin <= 4:
            return None
        if device.fixed_irq is not None:
            return device.fixed_irq
        pirq = pirq_for(device.slot, pin)
        if self.pirq_router is not None:
            return self.pirq_router(pirq)
        return self.pirq_irqs[pirq]

    def _assign_line(self, device: PciDevice) -> None:
        irq = self.irq_for(device)
        if self.assign_irq_lines and irq is not None:
            device.config.set_u8(INTERRUPT_LINE, irq)

    def intx_update(self, device: PciDevice) -> None:
        """Recompute one function's contribution to IRQ lines (its level, Interrupt Disable or routing changed).

        Each function remembers the IRQ it holds, so a route change lowers the old line before the new one
        is raised; shared lines are ORed, so the sink only hears real level changes.
        """
        if device.bus is not self:
            return
        key = (device.slot, device.function)
        new_irq = self.irq_for(device) if device.intx_asserted else None
        changes: list[tuple[int, int]] = []
        with self._lock:
            old_irq = self._device_irq.get(key)
            if old_irq == new_irq:
                return
            if old_irq is not None:
                holders = self._asserted.get(old_irq, set())
                holders.discard(key)
                del self._device_irq[key]
                if not holders:
                    changes.append((old_irq, 0))
            if new_irq is not None:
                holders = self._asserted.setdefault(new_irq, set())
                if not holders:
                    changes.append((new_irq, 1))
                holders.add(key)
                self._device_irq[key] = new_irq
        for irq, level in changes:
            self.intx_sink(irq, level)

    def reroute_intx(self) -> None:
        """PIRQ routing changed: move every asserted INTx to the IRQ it now reaches."""
        for _, _, device in self.devices():
            self.intx_update(device)

    def irq_level(self, irq: int) -> bool:
        """Whether any function holds ``irq`` high."""
        return bool(self._asserted.get(irq))

    def deliver_msi(self, address: int, data: int) -> None:
        self.msi_sink(address, data)

    # ---------------------------------------------------------------- reset
    def reset(self) -> None:
        """System reset: every function resets, then (as firmware would) Interrupt Line is set again."""
        # No bus lock around device resets: devices take their own lock first and then the bus's
        # (config writes, INTx), so holding ours here would invert that order.
        for _, _, device in self.devices():
            device.reset()
            self._assign_line(device)
        self.update_mappings()

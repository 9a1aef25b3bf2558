"""MSI-X (PCI 3.0 §6.8.2): the capability's Message Control, the vector table and the Pending Bit Array.

State lives in three places, as on hardware: Message Control (Enable bit 15, Function Mask bit 14) in
configuration space, the table (16 bytes per vector: address low/high, data, vector control with the
Mask bit 0) and the PBA in memory BARs. A vector fires only when MSI-X is enabled, the function is not
masked and its own Mask bit is clear; otherwise its pending bit is set, and the message goes out the
moment the vector becomes unmasked (§6.8.2.9). This follows QEMU's hw/pci/msix.c where the spec leaves
room: with MSI-X disabled a notification also just sets the pending bit, disabling MSI-X keeps pending
bits, table reads return exactly what was written (reserved vector-control bits included), and writes to
the PBA are ignored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Msix", "MSIX_CAP_ID", "MSIX_ENABLE", "MSIX_FUNCTION_MASK", "ENTRY_SIZE"]

MSIX_CAP_ID = 0x11
MSIX_ENABLE = 1 << 15
MSIX_FUNCTION_MASK = 1 << 14
ENTRY_SIZE = 16
_CTRL = 12
_MASKBIT = 1


class _TableRegion:
    """Bus device for the vector table (any size/alignment is served; drivers use dwords and qwords)."""

    def __init__(self, msix: Msix) -> None:
        self._msix = msix

    def read(self, offset: int, size: int) -> int:
        return self._msix.table_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._msix.table_write(offset, size, value)


class _PbaRegion:
    """Bus device for the Pending Bit Array: read-only to software."""

    def __init__(self, msix: Msix) -> None:
        self._msix = msix

    def read(self, offset: int, size: int) -> int:
        return self._msix.pba_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """Pending bits are read-only (§6.8.2.10); the write is dropped."""


class Msix:
    """One function's MSI-X state. Built by :meth:`PciDevice.add_msix`, which places the regions.

    ``control`` reads/writes the 16-bit Message Control word in config space; ``send`` delivers a
    message (address, data) -- the device routes it to the bus's MSI sink (or drops it, see there).
    """

    def __init__(
        self,
        table_size: int,
        cap_offset: int,
        control: Callable[[], int],
        send: Callable[[int, int], None],
        lock: threading.RLock | None = None,
    ) -> None:
        if not 1 <= table_size <= 2048:
            raise ValueError(f"MSI-X table size must be 1..2048, not {table_size}")
        self.table_size = table_size
        self.cap_offset = cap_offset
        self._control = control
        self._send = send
        self._lock = lock or threading.RLock()
        self.table = bytearray(ENTRY_SIZE * table_size)
        self.pba = bytearray(((table_size + 63) // 64) * 8)
        self.table_region = _TableRegion(self)
        self.pba_region = _PbaRegion(self)
        self.delivered = 0
        self._listeners: list[Callable[[Msix], None]] = []
        self._mask_all_entries()

    # ---------------------------------------------------------------- listeners
    def add_listener(self, callback: Callable[[Msix], None]) -> None:
        """Call ``callback(self)`` after the table, Message Control or reset may have changed which
        vectors are deliverable and with which message (KVM MSI routes follow this).

        It runs with this function's lock held, on the thread that made the change: it may read the
        state here (:meth:`masked`, :meth:`message`) and take leaf locks, but not block or call a device.
        It is also called once right away, so the listener starts from the current state without a race.
        """
        with self._lock:
            self._listeners.append(callback)
            callback(self)

    def remove_listener(self, callback: Callable[[Msix], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def loaded(self) -> None:
        """The table and PBA were restored from a migration stream: listeners (KVM MSI routes) re-read them."""
        with self._lock:
            self._changed()

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener(self)

    # ---------------------------------------------------------------- state
    @property
    def enabled(self) -> bool:
        return bool(self._control() & MSIX_ENABLE)

    @property
    def function_masked(self) -> bool:
        """Masked as a whole: Function Mask set or MSI-X disabled (QEMU's msix_function_masked)."""
        ctl = self._control()
        return not (ctl & MSIX_ENABLE) or bool(ctl & MSIX_FUNCTION_MASK)

    def entry_masked(self, vector: int) -> bool:
        return bool(self.table[vector * ENTRY_SIZE + _CTRL] & _MASKBIT)

    def masked(self, vector: int) -> bool:
        return self.function_masked or self.entry_masked(vector)

    def pending(self, vector: int) -> bool:
        return bool(self.pba[vector // 8] & (1 << (vector % 8)))

    def _set_pending(self, vector: int, on: bool) -> None:
        if on:
            self.pba[vector // 8] |= 1 << (vector % 8)
        else:
            self.pba[vector // 8] &= ~(1 << (vector % 8)) & 0xFF

    def message(self, vector: int) -> tuple[int, int]:
        """(address, data) programmed in the vector's table entry."""
        base = vector * ENTRY_SIZE
        entry = self.table[base : base + ENTRY_SIZE]
        address = int.from_bytes(entry[0:8], "little")
        return address, int.from_bytes(entry[8:12], "little")

    # ---------------------------------------------------------------- device side
    def notify(self, vector: int) -> None:
        """Signal ``vector``: deliver now, or set its pending bit if masked. Unknown vectors are ignored."""
        if not 0 <= vector < self.table_size:
            return
        with self._lock:
            if self.masked(vector):
                self._set_pending(vector, True)
                return
            self._deliver(vector)

    def _deliver(self, vector: int) -> None:
        address, data = self.message(vector)
        self.delivered += 1
        self._send(address, data)

    def _mask_update(self, vector: int, was_masked: bool) -> None:
        """A vector went from masked to unmasked: a pending message goes out now (§6.8.2.9)."""
        if was_masked and not self.masked(vector) and self.pending(vector):
            self._set_pending(vector, False)
            self._deliver(vector)

    def control_written(self, was_function_masked: bool) -> bool:
        """Message Control was written (the caller saved ``function_masked`` before the write).

        Returns True if MSI-X is now enabled (then the caller deasserts INTx, as QEMU does).
        """
        with self._lock:
            self._changed()  # before pending messages go out, so they can take the new routes
            if not self.enabled:
                return False
            if self.function_masked != was_function_masked:
                for vector in range(self.table_size):
                    self._mask_update(vector, was_function_masked or self.entry_masked(vector))
            return True

    def reset(self) -> None:
        """Table cleared with every vector masked, PBA cleared (Message Control is reset by the device)."""
        with self._lock:
            self.table[:] = bytes(len(self.table))
            self.pba[:] = bytes(len(self.pba))
            self._mask_all_entries()
            self._changed()

    def _mask_all_entries(self) -> None:
        for vector in range(self.table_size):
            self.table[vector * ENTRY_SIZE + _CTRL] = _MASKBIT

    # ---------------------------------------------------------------- guest side
    @staticmethod
    def _read_bytes(buf: bytearray, offset: int, size: int) -> int:
        if offset < 0 or size <= 0:
            return 0
        return int.from_bytes(buf[offset : offset + size].ljust(size, b"\0"), "little")

    def table_read(self, offset: int, size: int) -> int:
        with self._lock:
            return self._read_bytes(self.table, offset, size)

    def table_write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or size <= 0 or offset >= len(self.table):
            return
        with self._lock:
            end = min(offset + size, len(self.table))
            vectors = range(offset // ENTRY_SIZE, (end - 1) // ENTRY_SIZE + 1)
            was = {v: self.masked(v) for v in vectors}
            self.table[offset:end] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")[: end - offset]
            self._changed()  # before pending messages go out, so they can take the new routes
            for vector in vectors:
                self._mask_update(vector, was[vector])

    def pba_read(self, offset: int, size: int) -> int:
        with self._lock:
            return self._read_bytes(self.pba, offset, size)

    def __repr__(self) -> str:
        return f"<Msix {self.table_size} vectors enabled={self.enabled} fmask={self.function_masked}>"

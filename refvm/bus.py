"""I/O buses: dispatch port-I/O and MMIO accesses to devices by address range.

The vCPU loop calls :meth:`Bus.read`/:meth:`Bus.write` on every PIO/MMIO exit, so dispatch is a
dict hit for addresses seen before and a ``bisect`` over sorted range starts otherwise -- no
allocation on the hot path beyond the returned int.

Semantics follow real hardware and QEMU:

* an unclaimed read returns all-ones of the access size (a floating ISA/PCI bus reads 0xFF..)
  and is counted in :attr:`Bus.misses`; an unclaimed write is dropped;
* a device sees offsets relative to its base;
* an access that runs past the end of a device's range is split into single-byte accesses,
  each dispatched on its own (so the part outside the device reads 0xFF), and reassembled
  little endian.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Device", "BusError", "BusRange", "Bus", "PioBus", "MmioBus"]


@runtime_checkable
class Device(Protocol):
    """Something that answers bus accesses; ``offset`` is relative to the registered base."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusError(Exception):
    """Bad registration (overlap, out of range) or an access of an unsupported size."""


@dataclass(eq=False)
class BusRange:
    """One registered device window [base, base+length)."""

    base: int
    length: int
    device: Any
    name: str

    @property
    def end(self) -> int:
        return self.base + self.length

    def describe(self) -> str:
        return f"{self.name or type(self.device).__name__} [{self.base:#x}-{self.end - 1:#x}]"


class Bus:
    """Address-range dispatch. Subclasses fix the address space and allowed access sizes."""

    kind = "bus"
    addr_limit = 1 << 64
    sizes: frozenset[int] = frozenset({1, 2, 4, 8})
    # Entries in the per-address cache before we stop adding to it (bounds memory use when a
    # guest scans a large MMIO window).
    _CACHE_MAX = 4096

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: list[BusRange] = []
        self._cache: dict[int, BusRange] = {}
        self.misses = 0

    # ---------------------------------------------------------------- registration
    def register(self, base: int, length: int, device: Device, name: str = "") -> BusRange:
        """Claim [base, base+length) for ``device``; overlapping an existing range is a BusError."""
        if length <= 0 or base < 0 or base + length > self.addr_limit:
            raise BusError(
                f"{self.kind}: cannot register {name or type(device).__name__} at base={base:#x} "
                f"length={length:#x}: outside {self.kind} address space 0..{self.addr_limit - 1:#x}"
            )
        new = BusRange(base, length, device, name)
        for r in self._ranges:
            if base < r.end and r.base < base + length:
                raise BusError(f"{self.kind}: {new.describe()} overlaps {r.describe()}")
        idx = bisect.bisect_left(self._starts, base)
        self._starts.insert(idx, base)
        self._ranges.insert(idx, new)
        self._cache.clear()
        return new

    def unregister(self, base: int) -> Any:
        """Remove the range starting at ``base``; returns its device."""
        idx = bisect.bisect_left(self._starts, base)
        if idx >= len(self._starts) or self._starts[idx] != base:
            raise BusError(f"{self.kind}: no device registered at base {base:#x}")
        del self._starts[idx]
        r = self._ranges.pop(idx)
        self._cache.clear()
        return r.device

    # ---------------------------------------------------------------- lookup
    def lookup(self, addr: int) -> BusRange | None:
        """The range claiming ``addr``, or None."""
        r = self._cache.get(addr)
        if r is not None:
            return r
        idx = bisect.bisect_right(self._starts, addr) - 1
        if idx < 0:
            return None
        r = self._ranges[idx]
        if addr >= r.base + r.length:
            return None
        if len(self._cache) < self._CACHE_MAX:
            self._cache[addr] = r
        return r

    def ranges(self) -> list[tuple[int, int, str]]:
        """(base, length, name) of every registration, sorted; for debugging and `info mtree`."""
        return [(r.base, r.length, r.name or type(r.device).__name__) for r in self._ranges]

    def __repr__(self) -> str:
        inner = ", ".join(r.describe() for r in self._ranges)
        return f"<{type(self).__name__} {inner}>"

    # ---------------------------------------------------------------- access
    def _check(self, addr: int, size: int) -> None:
        if size not in self.sizes:
            raise BusError(f"{self.kind}: unsupported access size {size} at {addr:#x}")
        if addr < 0 or addr + size > self.addr_limit:
            raise BusError(f"{self.kind}: access {addr:#x}+{size} outside address space")

    def read(self, addr: int, size: int) -> int:
        """Dispatch a read; unclaimed bytes read as 0xFF."""
        r = self._cache.get(addr) or self.lookup(addr)
        if r is not None and addr + size <= r.base + r.length and size in self.sizes:
            return r.device.read(addr - r.base, size) & ((1 << (8 * size)) - 1)
        self._check(addr, size)
        if r is None and self._unclaimed(addr, size):
            self.misses += 1
            return (1 << (8 * size)) - 1
        return self._split_read(addr, size)

    def write(self, addr: int, size: int, value: int) -> None:
        """Dispatch a write (value masked to ``size`` bytes); unclaimed bytes are dropped."""
        r = self._cache.get(addr) or self.lookup(addr)
        if r is not None and addr + size <= r.base + r.length and size in self.sizes:
            r.device.write(addr - r.base, size, value & ((1 << (8 * size)) - 1))
            return
        self._check(addr, size)
        if r is None and self._unclaimed(addr, size):
            self.misses += 1
            return
        self._split_write(addr, size, value & ((1 << (8 * size)) - 1))

    def _unclaimed(self, addr: int, size: int) -> bool:
        """True if no byte of [addr, addr+size) belongs to any device."""
        idx = bisect.bisect_left(self._starts, addr + size)
        if idx == 0:
            return True
        r = self._ranges[idx - 1]
        return r.base + r.length <= addr

    def _split_read(self, addr: int, size: int) -> int:
        value = 0
        for i in range(size):
            r = self.lookup(addr + i)
            if r is None:
                self.misses += 1
                byte = 0xFF
            else:
                byte = r.device.read(addr + i - r.base, 1) & 0xFF
            value |= byte << (8 * i)
        return value

    def _split_write(self, addr: int, size: int, value: int) -> None:
        for i in range(size):
            r = self.lookup(addr + i)
            if r is None:
                self.misses += 1
                continue
            r.device.write(addr + i - r.base, 1, (value >> (8 * i)) & 0xFF)


class PioBus(Bus):
    """x86 port I/O: 64 KiB of ports, accesses of 1, 2 or 4 bytes."""

    kind = "pio"
    addr_limit = 0x10000
    sizes = frozenset({1, 2, 4})


class MmioBus(Bus):
    """Memory-mapped I/O: the 64-bit physical address space, accesses of 1, 2, 4 or 8 bytes."""

    kind = "mmio"

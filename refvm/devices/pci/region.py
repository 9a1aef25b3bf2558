"""BarRegion: one BAR's window, split into sub-ranges that belong to different devices.

A BAR is mapped on the bus as a single range; what lies inside is the device's business. virtio's
MSI-X BAR holds the MSI-X table and the PBA, its modern BAR holds four configuration structures. The
region dispatches an access at BAR-relative ``offset`` to the sub-device covering it, with an offset
relative to that sub-range. Accesses that straddle sub-ranges are split into bytes; bytes nobody claims
read as ``fill`` bytes -- all-ones by default, refvm's rule for unclaimed bus cycles (QEMU reads 0 in
such holes) -- and writes to them are dropped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

__all__ = ["BarRegion", "SubRange"]


@dataclass(frozen=True)
class SubRange:
    offset: int
    length: int
    device: Any
    name: str

    @property
    def end(self) -> int:
        return self.offset + self.length


class BarRegion:
    """A BAR-sized container dispatching to sub-devices (each with read(offset,size)/write(offset,size,value))."""

    def __init__(self, size: int, name: str = "", fill: int = 0xFF) -> None:
        if size <= 0:
            raise ValueError(f"BarRegion size must be positive, not {size}")
        self.size = size
        self.name = name
        self.fill = fill & 0xFF
        self._starts: list[int] = []
        self._subs: list[SubRange] = []

    def add(self, offset: int, length: int, device: Any, name: str = "") -> SubRange:
        """Place ``device`` at [offset, offset+length) inside the BAR; ValueError on overlap or overflow."""
        if offset < 0 or length <= 0 or offset + length > self.size:
            raise ValueError(f"{self.name or 'BAR'}: sub-range {offset:#x}+{length:#x} outside {self.size:#x} bytes")
        for sub in self._subs:
            if offset < sub.end and sub.offset < offset + length:
                raise ValueError(f"{self.name or 'BAR'}: {name or device!r} at {offset:#x} overlaps {sub.name}")
        sub = SubRange(offset, length, device, name or type(device).__name__)
        idx = bisect.bisect_left(self._starts, offset)
        self._starts.insert(idx, offset)
        self._subs.insert(idx, sub)
        return sub

    def subranges(self) -> list[SubRange]:
        return list(self._subs)

    def _find(self, offset: int) -> SubRange | None:
        idx = bisect.bisect_right(self._starts, offset) - 1
        if idx < 0:
            return None
        sub = self._subs[idx]
        return sub if offset < sub.end else None

    def read(self, offset: int, size: int) -> int:
        sub = self._find(offset)
        if sub is not None and offset + size <= sub.end:
            return sub.device.read(offset - sub.offset, size)
        value = 0
        for i in range(size):
            byte_sub = self._find(offset + i)
            byte = self.fill if byte_sub is None else byte_sub.device.read(offset + i - byte_sub.offset, 1) & 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        sub = self._find(offset)
        if sub is not None and offset + size <= sub.end:
            sub.device.write(offset - sub.offset, size, value)
            return
        for i in range(size):
            byte_sub = self._find(offset + i)
            if byte_sub is not None:
                byte_sub.device.write(offset + i - byte_sub.offset, 1, (value >> (8 * i)) & 0xFF)

    def __repr__(self) -> str:
        inner = ", ".join(f"{s.name}@{s.offset:#x}+{s.length:#x}" for s in self._subs)
        return f"<BarRegion {self.name} {self.size:#x}: {inner}>"

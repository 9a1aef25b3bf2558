"""Test-side virtio driver: rings laid out byte by byte in real GuestMemory (no tests here).

The tests are the driver (the libqos idea): they write descriptors, available entries and flags
with plain little-endian stores, bring a device up through the status register sequence of
VIRTIO 1.2 section 3.1.1, and read back used elements the same way.
"""

from __future__ import annotations

import struct

from refvm.memory import GuestMemory
from refvm.virtio import features as F
from refvm.virtio import status as S
from refvm.virtio.device import VirtioDevice
from refvm.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Virtqueue

RAM_SIZE = 1 << 20
MODERN = F.bit(F.VIRTIO_F_VERSION_1)
INDIRECT = F.bit(F.VIRTIO_F_RING_INDIRECT_DESC)
EVENT_IDX = F.bit(F.VIRTIO_F_RING_EVENT_IDX)
PACKED = F.bit(F.VIRTIO_F_RING_PACKED)

__all__ = [
    "DESC_F_INDIRECT",
    "DESC_F_NEXT",
    "DESC_F_WRITE",
    "EchoDevice",
    "SplitDriver",
    "PackedDriver",
    "make_mem",
    "bring_up",
    "MODERN",
    "INDIRECT",
    "EVENT_IDX",
    "PACKED",
]


def make_mem(size: int = RAM_SIZE) -> GuestMemory:
    mem = GuestMemory()
    mem.add_ram(0, size)
    return mem


class EchoDevice(VirtioDevice):
    """Copies each chain's readable bytes into its writable part (device ID 0xFFFF: test only).

    ``strict``: a chain whose writable part cannot hold the echo is a driver error.
    """

    device_id = 0xFFFF
    features = 1 << 0  # a device-type bit of our own: "ECHO_UPPER" (upper-cases the echo)
    feature_names = {0: "ECHO_UPPER"}
    queue_max_sizes = (8, 8)

    def __init__(self, mem: GuestMemory, *, strict: bool = True, sizes: tuple[int, ...] = (8, 8), **kw: bool) -> None:
        self.queue_max_sizes = sizes
        self.strict = strict
        self.handled = 0
        super().__init__(mem, config_size=8, **kw)
        self.config[0:4] = (0x12345678).to_bytes(4, "little")

    def validate_features(self, features: int) -> str | None:
        # A made-up dependency to exercise the hook: ECHO_UPPER needs INDIRECT_DESC.
        if features & 1 and not features & INDIRECT:
            return "ECHO_UPPER requires RING_INDIRECT_DESC"
        return None

    def write_config(self, offset: int, data: bytes) -> None:
        if offset >= 4:  # bytes 4..7 are driver-writable
            self.config[offset : offset + len(data)] = data[: 8 - offset]
        else:
            super().write_config(offset, data)

    def handle_queue(self, queue: Virtqueue) -> None:
        # Unbounded on purpose: the queue must stop yielding chains by itself (pending <= size).
        while (chain := queue.pop()) is not None:
            self.handled += 1
            data = chain.read_all()
            if self.negotiated(0):
                data = data.upper()
            n = chain.write_into(data, exact=self.strict)
            queue.push(chain, n)


def bring_up(dev: VirtioDevice, features: int = MODERN, *, configure=None, driver_ok: bool = True) -> bool:
    """Section 3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, re-read, queues, DRIVER_OK."""
    dev.write_status(0)
    assert dev.status == 0
    dev.write_status(S.ACKNOWLEDGE)
    dev.write_status(S.ACKNOWLEDGE | S.DRIVER)
    dev.set_driver_feature_word(0, features & 0xFFFFFFFF)
    dev.set_driver_feature_word(1, features >> 32)
    dev.write_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    if not dev.status & S.FEATURES_OK:
        return False
    if configure is not None:
        configure(dev)
    if driver_ok:
        dev.write_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    return True


class SplitDriver:
    """Driver side of one split queue (2.7)."""

    def __init__(self, mem: GuestMemory, size: int, base: int = 0x10000) -> None:
        self.mem = mem
        self.size = size
        self.desc = base
        self.avail = base + 16 * size
        self.avail = (self.avail + 1) & ~1
        self.used = (self.avail + 6 + 2 * size + 3) & ~3
        self.idx = 0
        mem.fill(base, self.used + 6 + 8 * size - base)

    def configure(self, dev: VirtioDevice, index: int = 0) -> None:
        q = dev.queues[index]
        q.size = self.size
        q.desc_addr, q.driver_addr, q.device_addr = self.desc, self.avail, self.used
        q.enabled = True

    # descriptors and avail ring
    def set_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.mem.write(self.desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def chain(self, head: int, elems: list[tuple[int, int, bool]]) -> int:
        """Lay ``(addr, len, writable)`` elements out as descriptors head, head+1, ...; returns head."""
        for k, (addr, length, w) in enumerate(elems):
            i = (head + k) % self.size
            last = k == len(elems) - 1
            flags = (DESC_F_WRITE if w else 0) | (0 if last else DESC_F_NEXT)
            self.set_desc(i, addr, length, flags, (i + 1) % self.size)
        return head

    def publish(self, *heads: int, bump: bool = True) -> None:
        for h in heads:
            self.mem.write_u16(self.avail + 4 + 2 * (self.idx % self.size), h)
            self.idx = (self.idx + 1) & 0xFFFF
        if bump:
            self.mem.write_u16(self.avail + 2, self.idx)

    def set_avail_idx(self, value: int) -> None:
        self.idx = value & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.idx)

    def set_avail_flags(self, flags: int) -> None:
        self.mem.write_u16(self.avail, flags)

    def set_used_event(self, value: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * self.size, value)

    # used ring
    def used_idx(self) -> int:
        return self.mem.read_u16(self.used + 2)

    def used_flags(self) -> int:
        return self.mem.read_u16(self.used)

    def used_elem(self, n: int) -> tuple[int, int]:
        off = self.used + 4 + 8 * (n % self.size)
        return self.mem.read_u32(off), self.mem.read_u32(off + 4)

    def avail_event(self) -> int:
        return self.mem.read_u16(self.used + 4 + 8 * self.size)


class PackedDriver:
    """Driver side of one packed queue (2.8), following the example of 2.8.21.3."""

    def __init__(self, mem: GuestMemory, size: int, base: int = 0x10000) -> None:
        self.mem = mem
        self.size = size
        self.desc = base
        self.driver_area = base + 16 * size
        self.device_area = self.driver_area + 4
        self.next_avail = 0
        self.avail_wrap = 1
        self.next_used = 0
        self.used_wrap = 1
        self.lengths: dict[int, int] = {}
        mem.fill(base, 16 * size + 8)

    def configure(self, dev: VirtioDevice, index: int = 0) -> None:
        q = dev.queues[index]
        q.size = self.size
        q.desc_addr, q.driver_addr, q.device_addr = self.desc, self.driver_area, self.device_area
        q.enabled = True

    def avail_flags(self, write: bool = False) -> int:
        f = DESC_F_WRITE if write else 0
        return f | ((1 << 7) if self.avail_wrap else (1 << 15))

    def add(self, elems: list[tuple[int, int, bool]], buf_id: int, *, indirect: bool = False) -> int:
        """Make one buffer available; the head's flags are stored last. Returns the head slot."""
        first = self.next_avail
        head_flags = 0
        if indirect:
            descs = [(elems[0][0], elems[0][1], DESC_F_INDIRECT)]
        else:
            descs = [(a, ln, DESC_F_WRITE if w else 0) for a, ln, w in elems]
        for k, (a, ln, f) in enumerate(descs):
            flags = f | self.avail_flags() | (DESC_F_NEXT if k < len(descs) - 1 else 0)
            slot = self.next_avail
            self.mem.write(self.desc + 16 * slot, struct.pack("<QIH", a, ln, buf_id))
            if slot == first:
                head_flags = flags
            else:
                self.mem.write_u16(self.desc + 16 * slot + 14, flags)
            self.next_avail += 1
            if self.next_avail == self.size:
                self.next_avail = 0
                self.avail_wrap ^= 1
        self.lengths[buf_id] = len(descs)
        self.mem.write_u16(self.desc + 16 * first + 14, head_flags)
        return first

    def get_used(self) -> tuple[int, int, int] | None:
        """(id, len, flags) of the next used descriptor, or None; skips the buffer's slots."""
        flags = self.mem.read_u16(self.desc + 16 * self.next_used + 14)
        avail = (flags >> 7) & 1
        used = (flags >> 15) & 1
        if avail != self.used_wrap or used != self.used_wrap:
            return None
        length = self.mem.read_u32(self.desc + 16 * self.next_used + 8)
        buf_id = self.mem.read_u16(self.desc + 16 * self.next_used + 12)
        self.next_used += self.lengths.pop(buf_id)
        if self.next_used >= self.size:
            self.next_used -= self.size
            self.used_wrap ^= 1
        return buf_id, length, flags

    def set_driver_event(self, flags: int, off: int = 0, wrap: int = 0) -> None:
        self.mem.write(self.driver_area, struct.pack("<HH", off | (wrap << 15), flags))

    def device_event(self) -> tuple[int, int]:
        return self.mem.read_u16(self.device_area), self.mem.read_u16(self.device_area + 2)

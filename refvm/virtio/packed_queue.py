"""Device side of the packed virtqueue (VIRTIO 1.2 section 2.8).

One Descriptor Ring (``{addr, len, id, flags}`` x size, 16-aligned, any size up to 2^15), read and
written by both sides, plus two 4-byte event suppression structures (2.8.14): the Driver Event
Suppression in the Driver Area (read by the device) and the Device Event Suppression in the
Device Area (written by the device).

Wrap counters (2.8.1): both sides start at 1. A descriptor is available when its AVAIL bit equals
the driver's wrap counter and its USED bit does not; the device marks it used by setting both bits
to its own wrap counter. The device tracks the driver's counter for the slot it polls next
(2.8.2), toggling it whenever it passes the end of the ring, and toggles its own counter whenever
it writes (or skips) past the last slot.

Rules enforced (each a :class:`VirtqueueError`):

* 2.8.11: alignment; 4.1.4.3: size in 1..max; areas in RAM;
* 2.8.17: a list (NEXT chain) no longer than the queue size; every descriptor of a list already
  available when the first one is (the driver exposes the head last); writable after readable;
* 2.8.19: INDIRECT only if negotiated and never in a list linked by NEXT; table length a nonzero
  multiple of 16 and no longer than the queue size. Inside the table only WRITE counts: 2.8.7 says
  the other flags (NEXT, INDIRECT) and the Buffer ID are reserved and ignored by the device.

Device duties: 2.8.15 -- a descriptor is used only after its AVAIL bit changed; the used
descriptor (id, len) is complete before its flags are stored; 2.8.6 -- one used descriptor per
list, written at the device's position, which then skips the list's length; 2.8.10 / 2.8.14 --
used buffer notifications follow the driver's ENABLE / DISABLE / DESC event flags.
"""

from __future__ import annotations

import struct

from refvm.virtio.queue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    Chain,
    Virtqueue,
    VirtqueueError,
    map_into,
)
from refvm.virtio.state import QueueState

__all__ = [
    "PackedQueue",
    "VIRTQ_DESC_F_AVAIL",
    "VIRTQ_DESC_F_USED",
    "RING_EVENT_FLAGS_ENABLE",
    "RING_EVENT_FLAGS_DISABLE",
    "RING_EVENT_FLAGS_DESC",
]

VIRTQ_DESC_F_AVAIL = 1 << 7
VIRTQ_DESC_F_USED = 1 << 15
RING_EVENT_FLAGS_ENABLE = 0
RING_EVENT_FLAGS_DISABLE = 1
RING_EVENT_FLAGS_DESC = 2

_DESC = struct.Struct("<QIHH")  # addr, len, id, flags
_U16 = struct.Struct("<H")
_LEN_ID = struct.Struct("<IH")  # len at +8, id at +12
_U32_LIMIT = 1 << 32
_BOTH = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED


class PackedQueue(Virtqueue):
    """A packed virtqueue as the device sees it."""

    kind = "packed"
    _ALIGN = (16, 4, 4)

    def _reset_ring(self) -> None:
        self.next_avail = 0  # slot the device polls next (2.8.2)
        self.avail_wrap = 1  # the driver's wrap counter expected at next_avail
        self.next_used = 0  # slot of the next used descriptor
        self.used_wrap = 1  # Device Ring Wrap Counter (2.8.1)
        self._signalled = 0  # linear used position at the last needs_interrupt()
        self._used_slots = 0  # slots written or skipped since then
        self._pushed = 0
        self.in_flight = 0

    def _area_sizes(self) -> tuple[int, int, int]:
        return 16 * self.size, 4, 4

    # ------------------------------------------------------------------ available side
    def pop(self) -> Chain | None:
        """The next available buffer (2.8.21), or None if the polled slot is not available."""
        if self._desc is None:
            self._activate()
        desc = self._desc
        assert desc is not None
        off = self.next_avail
        wrap = self.avail_wrap
        flags = _U16.unpack_from(desc, 16 * off + 14)[0]
        # 2.8.1: available <=> AVAIL == driver wrap counter and USED != it.
        if (flags >> 7) & 1 != wrap or (flags >> 15) & 1 == wrap:
            return None
        size = self.size
        mem = self.mem
        q = self.index
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        ranges: list[tuple[int, int]] = []
        rlen = wlen = 0
        count = 0
        unpack = _DESC.unpack_from
        while True:
            addr, length, buf_id, flags = unpack(desc, 16 * off)
            if count and ((flags >> 7) & 1 != wrap or (flags >> 15) & 1 == wrap):
                raise VirtqueueError(
                    "2.8.17",
                    f"queue {q}: descriptor {off} continues a list but is not available "
                    "(the first descriptor was made available before the rest)",
                )
            count += 1
            if flags & DESC_F_INDIRECT:
                if count != 1 or flags & DESC_F_NEXT:
                    raise VirtqueueError("2.8.19", f"queue {q}: INDIRECT descriptor {off} in a list linked by NEXT")
                rlen, wlen = self._indirect(addr, length, readable, writable, ranges)
            elif flags & DESC_F_WRITE:
                map_into(writable, mem, addr, length, "2.8.4", q, "descriptor", off)
                ranges.append((addr, length))
                wlen += length
            else:
                if writable:
                    raise VirtqueueError(
                        "2.8.17", f"queue {q}: device-readable descriptor {off} after a device-writable one"
                    )
                map_into(readable, mem, addr, length, "2.8.4", q, "descriptor", off)
                rlen += length
            off += 1
            if off == size:
                off = 0
                wrap ^= 1
            if not flags & DESC_F_NEXT:
                break
            if count >= size:
                raise VirtqueueError("2.8.17", f"queue {q}: descriptor list longer than the queue size {size}")
        if rlen + wlen > _U32_LIMIT:
            raise VirtqueueError("2.8.17", f"queue {q}: buffer of {rlen + wlen} bytes is more than 2^32")
        self.next_avail = off
        self.avail_wrap = wrap
        self.in_flight += 1
        # 2.8.6: the Buffer ID is in the last descriptor of the list.
        return Chain(buf_id, readable, writable, mem, rlen, wlen, count, ranges)

    def _indirect(
        self,
        addr: int,
        length: int,
        readable: list[memoryview],
        writable: list[memoryview],
        ranges: list[tuple[int, int]],
    ) -> tuple[int, int]:
        """Elements of an indirect table (2.8.7): sequential, ``len / 16`` entries, only WRITE honoured."""
        q = self.index
        if not self.indirect:
            raise VirtqueueError("2.8.19", f"queue {q}: INDIRECT descriptor but VIRTIO_F_INDIRECT_DESC not negotiated")
        if length == 0 or length % 16:
            raise VirtqueueError("2.8.7", f"queue {q}: indirect table length {length} is not a nonzero multiple of 16")
        n = length // 16
        limit = max(self.size, self.max_size)
        if n > limit:
            raise VirtqueueError("2.8.5", f"queue {q}: indirect table of {n} descriptors exceeds the limit {limit}")
        mem = self.mem
        views: list[memoryview] = []
        map_into(views, mem, addr, length, "2.8.7", q, "indirect table", -1)
        table = bytes(views[0]) if len(views) == 1 else b"".join(views)  # a copy: the driver may rewrite it
        rlen = wlen = 0
        for i, (a, ln, _id, flags) in enumerate(_DESC.iter_unpack(table)):
            if flags & DESC_F_WRITE:
                map_into(writable, mem, a, ln, "2.8.7", q, "indirect descriptor", i)
                ranges.append((a, ln))
                wlen += ln
            else:
                if writable:
                    raise VirtqueueError(
                        "2.8.17", f"queue {q}: device-readable indirect descriptor {i} after a device-writable one"
                    )
                map_into(readable, mem, a, ln, "2.8.7", q, "indirect descriptor", i)
                rlen += ln
        return rlen, wlen

    # ------------------------------------------------------------------ used side
    def add_used(self, chain: Chain, written: int) -> None:
        """Write the used descriptor in place: id and len first, then flags (2.8.15, 2.8.21).

        The flags store is what makes it visible, so a packed element is published as it is added."""
        self._check_push(chain, written)
        desc = self._desc
        assert desc is not None
        off = self.next_used
        base = 16 * off
        _LEN_ID.pack_into(desc, base + 8, written, chain.head)
        flags = _BOTH if self.used_wrap else 0
        if chain.writable:
            flags |= DESC_F_WRITE  # 2.8.3: the device wrote (or could write) into the buffer
        _U16.pack_into(desc, base + 14, flags)
        if self.mem.dirty_logging:
            self._log_used(chain, self.desc_addr + base + 8, 8)
        off += chain.desc_count
        size = self.size
        if off >= size:
            off -= size
            self.used_wrap ^= 1
        self.next_used = off
        self._used_slots += chain.desc_count
        self.in_flight -= 1
        self._pushed += 1

    def _linear(self, off: int, wrap: int) -> int:
        """Position of slot ``off`` in lap ``wrap`` on a circle of 2*size (laps alternate wrap 1, 0)."""
        return off + (self.size if not wrap else 0)

    def needs_interrupt(self) -> bool:
        """Used buffer notification decision per the Driver Event Suppression structure (2.8.10, 2.8.14)."""
        if not self._pushed or self._driver is None:
            return False
        old = self._signalled
        new = self._linear(self.next_used, self.used_wrap)
        slots = self._used_slots
        self._signalled = new
        self._used_slots = 0
        self._pushed = 0
        drv = self._driver
        event_flags = _U16.unpack_from(drv, 2)[0] & 3
        if event_flags == RING_EVENT_FLAGS_DISABLE:
            return False
        if event_flags != RING_EVENT_FLAGS_DESC or not self.event_idx:
            return True  # ENABLE; DESC without EVENT_IDX and the reserved 3 are treated as ENABLE
        ring = 2 * self.size
        if slots >= ring:
            return True
        off_wrap = _U16.unpack_from(drv, 0)[0]
        event = self._linear(off_wrap & 0x7FFF, off_wrap >> 15)
        # The slots used since the last check are [old, new) on the circle; notify if the event slot is one.
        return (event - old) % ring < (new - old) % ring

    # ------------------------------------------------------------------ migration
    def _save_ring(self, st: QueueState, held: tuple[Chain, ...]) -> None:
        slot, wrap = self.next_avail - sum(c.desc_count for c in held), self.avail_wrap
        while slot < 0:  # held chains from the previous lap
            slot, wrap = slot + self.size, wrap ^ 1
        st.last_avail_idx, st.avail_wrap = slot, bool(wrap)
        st.used_idx, st.used_wrap = self.next_used, bool(self.used_wrap)
        st.signalled_used, st.used_slots, st.pushed = self._signalled, self._used_slots, self._pushed

    def _ring_problem(self, st: QueueState) -> tuple[str, str] | None:
        for name, value, limit in (("last_avail_idx", st.last_avail_idx, st.size),
                                   ("used_idx", st.used_idx, st.size),
                                   ("signalled_used", st.signalled_used, 2 * st.size)):
            if value >= limit:
                return name, f"{value} is not a slot position below {limit}"
        return None

    def _load_ring(self, st: QueueState) -> None:
        self.next_avail, self.avail_wrap = st.last_avail_idx, int(st.avail_wrap)
        self.next_used, self.used_wrap = st.used_idx, int(st.used_wrap)
        self._signalled, self._used_slots, self._pushed = st.signalled_used, st.used_slots, st.pushed

    def suppress_notifications(self, suppress: bool) -> None:
        """Device Event Suppression (2.8.14): DISABLE while suppressed, else ENABLE."""
        self.suppressed = suppress
        if self._device is None:
            if not self.ready:
                return
            self._activate()
        assert self._device is not None
        _U16.pack_into(self._device, 0, 0)
        _U16.pack_into(self._device, 2, RING_EVENT_FLAGS_DISABLE if suppress else RING_EVENT_FLAGS_ENABLE)
        if self.mem.dirty_logging:
            self._log_ring(self.device_addr, 4)

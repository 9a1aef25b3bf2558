"""Device side of the split virtqueue (VIRTIO 1.2 section 2.7).

Layout (2.7): the Descriptor Table (16 bytes per entry, 16-aligned), the Available Ring
(``flags, idx, ring[size], used_event``, 2-aligned) and the Used Ring (``flags, idx,
ring[size] of {id, len}, avail_event``, 4-aligned). Indices are free-running 16-bit counters
(2.7.13.3: "idx always increments, and wraps naturally at 65536").

Rules enforced here, each a :class:`VirtqueueError` (the device then sets DEVICE_NEEDS_RESET):

* 2.7.1 / 4.1.4.3: area alignment, queue size a power of 2 within the device maximum, areas in RAM;
* 2.7.6 / 2.7.13: the available idx never moves more than the queue size past what the device consumed;
* 2.7.5: ring entries and ``next`` must index the table; 2.7.5.2: no loops, no chain over 2^32 bytes;
* 2.7.4.2: device-writable elements come after device-readable ones;
* 2.7.5.3.1: INDIRECT only if negotiated, never with NEXT, never inside an indirect table, a chain
  no longer than the queue size; table length a nonzero multiple of 16 (the table is ``desc[len/16]``);
* 2.7.5.3.2: a direct chain may end in one INDIRECT descriptor, whose WRITE flag is ignored;
* buffers must be guest RAM (checked at pop, before the device acts on any part of the request).

Device duties: 2.7.8.2 -- the used element (id, len) is stored before used ``idx`` (stores go to
guest RAM in program order, which x86 keeps); 2.7.7.2 -- used buffer notifications follow
VIRTQ_AVAIL_F_NO_INTERRUPT, or ``used_event`` through :func:`vring_need_event` with EVENT_IDX;
2.7.10.2 -- the device advises the driver with VIRTQ_USED_F_NO_NOTIFY (flags 0 or 1) or, with
EVENT_IDX, keeps flags 0 and publishes ``avail_event``.
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
from refvm.virtio.state import NO_EVENT, QueueState

__all__ = ["SplitQueue", "vring_need_event", "VIRTQ_AVAIL_F_NO_INTERRUPT", "VIRTQ_USED_F_NO_NOTIFY"]

VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")  # id, len
_U32_LIMIT = 1 << 32


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """True if ``event_idx`` lies in the window of indices ``[old_idx, new_idx)`` (mod 2^16).

    2.7.7.2: with EVENT_IDX the device MUST notify when the used ``idx`` that determined where
    an entry was placed equals ``used_event``; the entries written since the last check occupy
    ``old_idx .. new_idx-1``. Same rule (roles swapped) for ``avail_event`` (2.7.10).
    """
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


class SplitQueue(Virtqueue):
    """A split virtqueue as the device sees it."""

    kind = "split"
    _ALIGN = (16, 2, 4)

    def _reset_ring(self) -> None:
        self.last_avail_idx = 0  # next available ring entry the device will read
        self.used_idx = 0  # the device's used idx (what it will publish)
        self._published = 0  # used idx as stored in guest memory
        self._avail_shadow = 0  # avail idx as last read: guest memory is read again only when it is used up
        self._avail_event = -1  # avail_event as this device last wrote it (-1: not written)
        self._signalled_used = 0  # used idx at the last needs_interrupt()
        self._pushed = 0  # used elements written since then
        self.in_flight = 0

    def _check_size(self) -> None:
        size = self.size
        if not 1 <= size <= self.max_size or size & (size - 1):
            raise VirtqueueError("2.7", f"queue {self.index}: size {size} is not a power of 2 in 1..{self.max_size}")

    def _area_sizes(self) -> tuple[int, int, int]:
        n = self.size
        return 16 * n, 6 + 2 * n, 6 + 8 * n

    # ------------------------------------------------------------------ available side
    def pop(self) -> Chain | None:
        """The next available chain (2.7.13), or None if the available ring is empty."""
        if self._desc is None:
            self._activate()
        avail = self._driver
        assert avail is not None
        last = self.last_avail_idx
        avail_idx = self._avail_shadow
        if avail_idx == last:
            avail_idx = _U16.unpack_from(avail, 2)[0]
            if avail_idx == last:
                if not self.event_idx or self.suppressed or self._avail_event == last:
                    return None  # (avail_event already asks for entry `last`: nothing to write or re-read)
                # 2.7.10: ask for a notification when the driver fills entry `last`, then re-check so a
                # buffer made available in between is not missed.
                _U16.pack_into(self._device, 4 + 8 * self.size, last)  # type: ignore[arg-type]
                self._avail_event = last
                if self.mem.dirty_logging:
                    self._log_ring(self.device_addr + 4 + 8 * self.size, 2)
                avail_idx = _U16.unpack_from(avail, 2)[0]
                if avail_idx == last:
                    return None
            size = self.size
            pending = (avail_idx - last) & 0xFFFF
            if pending > size:
                raise VirtqueueError(
                    "2.7.13",
                    f"queue {self.index}: available idx moved from {last} to {avail_idx}, "
                    f"more than the queue size {size} (idx decremented or ring overrun, 2.7.6.1)",
                )
            self._avail_shadow = avail_idx
        size = self.size
        head = _U16.unpack_from(avail, 4 + 2 * (last & (size - 1)))[0]
        self.last_avail_idx = (last + 1) & 0xFFFF
        if head >= size:
            raise VirtqueueError(
                "2.7.13.2", f"queue {self.index}: available ring entry {last} names descriptor {head} >= size {size}"
            )
        chain = self._walk(head)
        self.in_flight += 1
        return chain

    def _walk(self, head: int) -> Chain:
        """Follow the descriptor chain at ``head`` (2.7.5), at most ``size`` table entries."""
        desc = self._desc
        assert desc is not None
        mem = self.mem
        size = self.size
        unpack = _DESC.unpack_from
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        ranges: list[tuple[int, int]] = []
        rlen = wlen = 0
        idx = head
        steps = 0
        while True:
            steps += 1
            if steps > size:
                raise VirtqueueError(
                    "2.7.5.2", f"queue {self.index}: chain at head {head} is longer than the queue size {size} (loop)"
                )
            addr, length, flags, nxt = unpack(desc, 16 * idx)
            if flags & DESC_F_INDIRECT:
                if flags & DESC_F_NEXT:
                    raise VirtqueueError(
                        "2.7.5.3.1", f"queue {self.index}: descriptor {idx} sets both INDIRECT and NEXT"
                    )
                rlen, wlen = self._indirect(addr, length, readable, writable, ranges, rlen, wlen, steps - 1)
                break
            if flags & DESC_F_WRITE:
                map_into(writable, mem, addr, length, "2.7.5", self.index, "descriptor", idx)
                ranges.append((addr, length))
                wlen += length
            else:
                if writable:
                    raise VirtqueueError(
                        "2.7.4.2", f"queue {self.index}: device-readable descriptor {idx} after a device-writable one"
                    )
                map_into(readable, mem, addr, length, "2.7.5", self.index, "descriptor", idx)
                rlen += length
            if not flags & DESC_F_NEXT:
                break
            if nxt >= size:
                raise VirtqueueError(
                    "2.7.5", f"queue {self.index}: descriptor {idx} has next={nxt} outside the table of {size}"
                )
            idx = nxt
        if rlen + wlen > _U32_LIMIT:
            raise VirtqueueError(
                "2.7.5.2", f"queue {self.index}: chain at head {head} is {rlen + wlen} bytes, more than 2^32"
            )
        return Chain(head, readable, writable, mem, rlen, wlen, 1, ranges)

    def _indirect(
        self,
        addr: int,
        length: int,
        readable: list[memoryview],
        writable: list[memoryview],
        ranges: list[tuple[int, int]],
        rlen: int,
        wlen: int,
        direct: int,
    ) -> tuple[int, int]:
        """Append the elements of the indirect table at ``addr`` (2.7.5.3); returns the new totals."""
        q = self.index
        if not self.indirect:
            raise VirtqueueError(
                "2.7.5.3.1", f"queue {q}: INDIRECT descriptor but VIRTIO_F_INDIRECT_DESC not negotiated"
            )
        if length == 0 or length % 16:
            raise VirtqueueError(
                "2.7.5.3", f"queue {q}: indirect table length {length} is not a nonzero multiple of 16"
            )
        n = length // 16
        limit = max(self.size, self.max_size)
        if direct + n > limit:
            raise VirtqueueError(
                "2.7.5.3.1",
                f"queue {q}: indirect table of {n} descriptors (+{direct} direct) exceeds the queue size {limit}",
            )
        mem = self.mem
        views: list[memoryview] = []
        map_into(views, mem, addr, length, "2.7.5.3", q, "indirect table", -1)
        table = bytes(views[0]) if len(views) == 1 else b"".join(views)  # a copy: the driver may rewrite it
        unpack = _DESC.unpack_from
        i = 0
        steps = 0
        while True:
            steps += 1
            if steps > n:
                raise VirtqueueError("2.7.5.2", f"queue {q}: loop in the indirect table at {addr:#x}")
            a, ln, flags, nxt = unpack(table, 16 * i)
            if flags & DESC_F_INDIRECT:
                raise VirtqueueError("2.7.5.3.1", f"queue {q}: INDIRECT set inside the indirect table at {addr:#x}")
            if flags & DESC_F_WRITE:
                map_into(writable, mem, a, ln, "2.7.5.3", q, "indirect descriptor", i)
                ranges.append((a, ln))
                wlen += ln
            else:
                if writable:
                    raise VirtqueueError(
                        "2.7.4.2", f"queue {q}: device-readable indirect descriptor {i} after a device-writable one"
                    )
                map_into(readable, mem, a, ln, "2.7.5.3", q, "indirect descriptor", i)
                rlen += ln
            if not flags & DESC_F_NEXT:
                return rlen, wlen
            if nxt >= n:
                raise VirtqueueError(
                    "2.7.5.3", f"queue {q}: indirect descriptor {i} has next={nxt} outside the table of {n}"
                )
            i = nxt

    def served_outside(self, served: int, avail_shadow: int, avail_event: int, decided: bool) -> None:
        """A compiled server (virtio-blk's ``blk_fast.c``, which reads this queue's cursors directly) popped,
        completed and published ``served`` requests on this ring, read avail idx as ``avail_shadow`` and left
        ``avail_event`` as given (-1: never written). They count as pushed for the next
        :meth:`needs_interrupt`, exactly as if pop/add_used/publish had run; ``decided``: the server also took
        that decision for the batch (the window starts again, as after needs_interrupt)."""
        if served:
            self.last_avail_idx = (self.last_avail_idx + served) & 0xFFFF
            self.used_idx = self._published = (self.used_idx + served) & 0xFFFF
            self._pushed += served
        self._avail_shadow = avail_shadow
        self._avail_event = avail_event
        if decided:
            self._signalled_used = self.used_idx
            self._pushed = 0

    # ------------------------------------------------------------------ used side
    def add_used(self, chain: Chain, written: int) -> None:
        """Write the used element (id, len); the idx store waits for :meth:`publish` (2.7.8.2: len before idx)."""
        self._check_push(chain, written)
        device = self._device
        assert device is not None
        used = self.used_idx
        slot = 4 + 8 * (used & (self.size - 1))
        _USED_ELEM.pack_into(device, slot, chain.head, written)
        self.used_idx = (used + 1) & 0xFFFF
        if self.mem.dirty_logging:
            self._log_used(chain, self.device_addr + slot, 8)
        self.in_flight -= 1
        self._pushed += 1

    def publish(self) -> None:
        """One store of used ``idx`` for every element added since the last one (2.7.8.2)."""
        used = self.used_idx
        if used != self._published and self._device is not None:
            _U16.pack_into(self._device, 2, used)
            self._published = used
            if self.mem.dirty_logging:
                self._log_ring(self.device_addr + 2, 2)

    def needs_interrupt(self) -> bool:
        """Decide the used buffer notification for the elements pushed since the last call (2.7.7.2)."""
        self.publish()
        pushed = self._pushed
        if not pushed or self._driver is None:
            return False
        old = self._signalled_used
        new = self.used_idx
        self._signalled_used = new
        self._pushed = 0
        avail = self._driver
        if self.event_idx:
            if pushed >= 0x10000:  # the 16-bit window cannot tell: be safe, notify
                return True
            used_event = _U16.unpack_from(avail, 4 + 2 * self.size)[0]
            return vring_need_event(used_event, new, old)
        return not _U16.unpack_from(avail, 0)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT

    def suppress_notifications(self, suppress: bool) -> None:
        """2.7.10.2: VIRTQ_USED_F_NO_NOTIFY without EVENT_IDX; with it, flags stay 0 and
        ``avail_event`` stops (or restarts) tracking the ring."""
        self.suppressed = suppress
        self._avail_event = -1
        if self._device is None:
            if not self.ready:
                return
            self._activate()
        device = self._device
        assert device is not None and self._driver is not None
        if self.event_idx:
            _U16.pack_into(device, 0, 0)
            if not suppress:
                _U16.pack_into(device, 4 + 8 * self.size, _U16.unpack_from(self._driver, 2)[0])
        else:
            _U16.pack_into(device, 0, VIRTQ_USED_F_NO_NOTIFY if suppress else 0)
        if self.mem.dirty_logging:
            self._log_ring(self.device_addr, 6 + 8 * self.size)

    # ------------------------------------------------------------------ migration
    def _save_ring(self, st: QueueState, held: tuple[Chain, ...]) -> None:
        st.last_avail_idx = (self.last_avail_idx - len(held)) & 0xFFFF
        st.used_idx = self.used_idx
        st.signalled_used = self._signalled_used
        st.pushed = self._pushed
        st.avail_event = NO_EVENT if self._avail_event < 0 else self._avail_event

    def _ring_problem(self, st: QueueState) -> tuple[str, str] | None:
        ahead = (st.last_avail_idx - st.used_idx) & 0xFFFF
        if ahead > st.size:  # QEMU's virtio_load check: more consumed than the ring holds
            return "last_avail_idx", (f"{st.last_avail_idx} is {ahead} ahead of used_idx {st.used_idx}, "
                                      f"queue size {st.size}")
        if st.signalled_used > 0xFFFF:
            return "signalled_used", f"{st.signalled_used} is not a 16-bit index"
        return None

    def _load_ring(self, st: QueueState) -> None:
        self.last_avail_idx = self._avail_shadow = st.last_avail_idx
        self.used_idx = self._published = st.used_idx
        self._signalled_used = st.signalled_used
        self._pushed = st.pushed
        self._avail_event = -1 if st.avail_event == NO_EVENT else st.avail_event

    # ------------------------------------------------------------------ introspection
    def avail_idx(self) -> int:
        """The driver's available idx as it is in guest memory now."""
        if self._driver is None:
            self._activate()
        assert self._driver is not None
        return _U16.unpack_from(self._driver, 2)[0]

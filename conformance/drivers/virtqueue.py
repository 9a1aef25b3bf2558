"""Driver-side virtqueues laid out byte by byte in guest memory over qtest: split (§2.7) and packed (§2.8).

Each queue owns its memory (from the transport's GuestAllocator) and its driver-side indices, and writes
exactly what §2.7/§2.8 say a driver writes, in the order they say (descriptors, then the ring entry, then
the index or the first descriptor's flags). Completion is detected by polling the used ring / used flags,
bounded by a timeout, so a device that never answers is a failure rather than a hang. Knobs that tests need
to probe the device (flags of the available ring, used_event, event suppression, indirect tables, chains
that mix direct and indirect descriptors) are explicit parameters rather than hidden policy.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conformance.drivers.qtest import QtestSession
    from conformance.drivers.virtio import GuestAllocator, VirtioPciDevice

# Descriptor flags (§2.7.5, §2.8.7).
DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 1, 2, 4
DESC_F_AVAIL, DESC_F_USED = 1 << 7, 1 << 15
# Split ring flags (§2.7.6, §2.7.8).
AVAIL_F_NO_INTERRUPT, USED_F_NO_NOTIFY = 1, 1
# Packed event suppression flags (§2.8.10).
RING_EVENT_FLAGS_ENABLE, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_DESC = 0, 1, 2

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Seg:
    """One buffer: guest address, length, and whether it is device-writable."""

    addr: int
    length: int
    write: bool = False


@dataclass(frozen=True)
class Used:
    """One used element as the device reported it."""

    id: int
    length: int


@dataclass
class Completion:
    used: Used
    data: list[bytes] = field(default_factory=list)  # contents of the device-writable segments


class QueueTimeout(AssertionError):
    """The device did not use a buffer within the timeout."""


class Virtqueue:
    """What both layouts share: memory, buffers, notification, and a blocking request helper."""

    desc_addr: int
    driver_addr: int
    device_addr: int

    def __init__(self, qt: QtestSession, alloc: GuestAllocator, index: int, size: int) -> None:
        self.qt, self.alloc, self.index, self.size = qt, alloc, index, size
        self.notify_addr: int | None = None
        self.transport: VirtioPciDevice | None = None
        self.segments: dict[int, list[Seg]] = {}  # token -> segments, to read back writable ones

    # ---- buffers ---------------------------------------------------------------------------------------

    def out_buf(self, data: bytes) -> Seg:
        addr = self.alloc.alloc(len(data), 16)
        self.qt.write(addr, data)
        return Seg(addr, len(data), False)

    def in_buf(self, length: int, fill: int = 0xA5) -> Seg:
        """A device-writable buffer pre-filled with a pattern, so untouched bytes are recognisable."""
        addr = self.alloc.alloc(length, 16)
        self.qt.memset(addr, length, fill)
        return Seg(addr, length, True)

    def kick(self) -> None:
        """Notify the device of available buffers through the transport's notify address."""
        assert self.notify_addr is not None, "queue is not set up on a transport"
        self.qt.writew(self.notify_addr, self.index)

    # ---- layout-specific -------------------------------------------------------------------------------

    def add(self, segs: Sequence[Seg], indirect_from: int | None = None, publish: bool = True) -> int:
        raise NotImplementedError

    def get_used(self) -> Used | None:
        raise NotImplementedError

    # ---- blocking helpers ------------------------------------------------------------------------------

    def wait_used(self, timeout: float = DEFAULT_TIMEOUT) -> Used:
        deadline = time.monotonic() + timeout
        while True:
            used = self.get_used()
            if used is not None:
                return used
            if time.monotonic() > deadline:
                raise QueueTimeout(f"queue {self.index}: no used buffer within {timeout}s")
            time.sleep(0.0005)

    def assert_idle(self, wait: float = 0.1) -> None:
        """Fail if the device uses a buffer within `wait` seconds (for 'MUST NOT consume' checks)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            used = self.get_used()
            if used is not None:
                raise AssertionError(f"queue {self.index}: device used buffer {used} when it must not")
            time.sleep(0.002)

    def read_back(self, token: int) -> list[bytes]:
        return [self.qt.b64read(s.addr, s.length) for s in self.segments.get(token, []) if s.write]

    def transact(
        self,
        out: Sequence[bytes],
        ins: Sequence[int],
        indirect_from: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Completion:
        """Post device-readable `out` chunks then device-writable buffers of `ins` lengths, kick, wait."""
        segs = [self.out_buf(d) for d in out] + [self.in_buf(n) for n in ins]
        token = self.add(segs, indirect_from=indirect_from)
        self.kick()
        used = self.wait_used(timeout)
        assert used.id == token, f"queue {self.index}: used id {used.id}, expected {token}"
        return Completion(used, self.read_back(token))


class SplitQueue(Virtqueue):
    """A split virtqueue: descriptor table (align 16), available ring (align 2), used ring (align 4)."""

    def __init__(self, qt: QtestSession, alloc: GuestAllocator, index: int, size: int) -> None:
        super().__init__(qt, alloc, index, size)
        self.desc_addr = alloc.alloc(16 * size, 16)
        self.driver_addr = alloc.alloc(6 + 2 * size, 2)
        self.device_addr = alloc.alloc(6 + 8 * size, 4)
        qt.memset(self.desc_addr, 16 * size, 0)
        qt.memset(self.driver_addr, 6 + 2 * size, 0)
        qt.memset(self.device_addr, 6 + 8 * size, 0)
        self.free = list(range(size))
        self.chains: dict[int, list[int]] = {}
        self.avail_idx = 0  # driver's free-running 16-bit counter
        self.last_used = 0

    def write_desc(self, table: int, i: int, seg: Seg, flags: int, nxt: int) -> None:
        self.qt.write(table + 16 * i, struct.pack("<QIHH", seg.addr, seg.length, flags, nxt))

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        return struct.unpack("<QIHH", self.qt.read(self.desc_addr + 16 * i, 16))

    def add(self, segs: Sequence[Seg], indirect_from: int | None = None, publish: bool = True) -> int:
        """Chain `segs`; with `indirect_from=k` segs[k:] go into one indirect table after k direct ones."""
        direct = list(segs if indirect_from is None else segs[:indirect_from])
        table_segs = [] if indirect_from is None else list(segs[indirect_from:])
        count = len(direct) + (1 if table_segs else 0)
        if count == 0 or count > len(self.free):
            raise ValueError(f"queue {self.index}: cannot chain {count} descriptors ({len(self.free)} free)")
        ids = [self.free.pop(0) for _ in range(count)]
        for pos, seg in enumerate(direct):
            last = pos == count - 1
            flags = (DESC_F_WRITE if seg.write else 0) | (0 if last else DESC_F_NEXT)
            self.write_desc(self.desc_addr, ids[pos], seg, flags, 0 if last else ids[pos + 1])
        if table_segs:
            table = self.alloc.alloc(16 * len(table_segs), 16)
            for j, seg in enumerate(table_segs):
                last = j == len(table_segs) - 1
                flags = (DESC_F_WRITE if seg.write else 0) | (0 if last else DESC_F_NEXT)
                self.write_desc(table, j, seg, flags, 0 if last else j + 1)
            ind = Seg(table, 16 * len(table_segs))
            self.write_desc(self.desc_addr, ids[-1], ind, DESC_F_INDIRECT, 0)
        self.segments[ids[0]] = list(segs)
        return self.post_head(ids, publish)

    def post_head(self, chain: Sequence[int], publish: bool = True) -> int:
        """Put the head of an already written chain into the available ring (tests use this directly to
        post hand-made, possibly malformed, descriptors)."""
        head = chain[0]
        self.chains[head] = list(chain)
        self.qt.writew(self.driver_addr + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if publish:
            self.publish()
        return head

    def publish(self) -> None:
        """Expose every staged entry: avail->idx is written after the ring entries (§2.7.13.2)."""
        self.qt.writew(self.driver_addr + 2, self.avail_idx)

    def used_idx(self) -> int:
        return self.qt.readw(self.device_addr + 2)

    def get_used(self) -> Used | None:
        if self.used_idx() == self.last_used:
            return None
        elem = self.device_addr + 4 + 8 * (self.last_used % self.size)
        uid, length = struct.unpack("<II", self.qt.read(elem, 8))
        self.last_used = (self.last_used + 1) & 0xFFFF
        chain = self.chains.pop(uid, None)
        if chain is None:
            raise AssertionError(f"queue {self.index}: device returned id {uid}, which is not an outstanding head")
        self.free.extend(chain)
        return Used(uid, length)

    # ---- notification suppression fields (§2.7.7, §2.7.10) ---------------------------------------------

    def set_avail_flags(self, flags: int) -> None:
        self.qt.writew(self.driver_addr, flags)

    def set_used_event(self, value: int) -> None:
        self.qt.writew(self.driver_addr + 4 + 2 * self.size, value)

    def used_flags(self) -> int:
        return self.qt.readw(self.device_addr)

    def avail_event(self) -> int:
        return self.qt.readw(self.device_addr + 4 + 8 * self.size)


class PackedQueue(Virtqueue):
    """A packed virtqueue: one descriptor ring plus driver and device event suppression areas (§2.8)."""

    def __init__(self, qt: QtestSession, alloc: GuestAllocator, index: int, size: int) -> None:
        super().__init__(qt, alloc, index, size)
        self.desc_addr = alloc.alloc(16 * size, 16)
        self.driver_addr = alloc.alloc(4, 4)  # driver event suppression (written by us)
        self.device_addr = alloc.alloc(4, 4)  # device event suppression (written by the device)
        qt.memset(self.desc_addr, 16 * size, 0)
        qt.memset(self.driver_addr, 4, 0)
        qt.memset(self.device_addr, 4, 0)
        self.next_avail, self.avail_wrap = 0, 1
        self.next_used, self.used_wrap = 0, 1
        self.free_ids = list(range(size))
        self.lengths: dict[int, int] = {}  # buffer id -> descriptors it occupies in the ring
        self.in_flight = 0

    def _flags(self, wrap: int) -> int:
        """AVAIL equal to the wrap counter and USED its inverse: 'available' in this lap (§2.8.1)."""
        return (DESC_F_AVAIL if wrap else 0) | (0 if wrap else DESC_F_USED)

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        """(addr, len, id, flags) of ring slot i."""
        return struct.unpack("<QIHH", self.qt.read(self.desc_addr + 16 * i, 16))

    def add(self, segs: Sequence[Seg], indirect_from: int | None = None, publish: bool = True) -> int:
        """Place a buffer; the first descriptor's flags are written last, making the whole list available."""
        if indirect_from not in (None, 0):
            raise ValueError("a packed ring cannot mix direct and indirect descriptors in one list (§2.8.7)")
        bid = self.free_ids.pop(0)
        if indirect_from == 0:
            table = self.alloc.alloc(16 * len(segs), 16)
            for j, seg in enumerate(segs):
                self.qt.write(table + 16 * j, struct.pack("<QIHH", seg.addr, seg.length, 0,
                                                          DESC_F_WRITE if seg.write else 0))
            ring_segs: list[tuple[Seg, int]] = [(Seg(table, 16 * len(segs)), DESC_F_INDIRECT)]
        else:
            ring_segs = [(s, (DESC_F_WRITE if s.write else 0)) for s in segs]
        n = len(ring_segs)
        if self.in_flight + n > self.size:
            raise ValueError(f"queue {self.index}: ring full")
        first_pos, first_flags = self.next_avail, 0
        first_word = b""
        for k, (seg, base_flags) in enumerate(ring_segs):
            flags = base_flags | (DESC_F_NEXT if k < n - 1 else 0) | self._flags(self.avail_wrap)
            word = struct.pack("<QIHH", seg.addr, seg.length, bid, flags)
            if k == 0:
                first_word, first_flags = word, flags
            else:
                self.qt.write(self.desc_addr + 16 * self.next_avail, word)
            self.next_avail += 1
            if self.next_avail == self.size:
                self.next_avail, self.avail_wrap = 0, self.avail_wrap ^ 1
        # addr/len/id of the first descriptor, then its flags: the device must not see flags before them.
        self.qt.write(self.desc_addr + 16 * first_pos, first_word[:14])
        self.qt.writew(self.desc_addr + 16 * first_pos + 14, first_flags)
        self.lengths[bid] = n
        self.segments[bid] = list(segs)
        self.in_flight += n
        return bid

    def get_used(self) -> Used | None:
        _, length, bid, flags = self.read_desc(self.next_used)
        avail, used = bool(flags & DESC_F_AVAIL), bool(flags & DESC_F_USED)
        if not (avail == used == bool(self.used_wrap)):
            return None
        n = self.lengths.pop(bid, None)
        if n is None:
            raise AssertionError(f"queue {self.index}: device returned buffer id {bid}, which is not outstanding")
        self.next_used += n
        if self.next_used >= self.size:
            self.next_used -= self.size
            self.used_wrap ^= 1
        self.in_flight -= n
        self.free_ids.append(bid)
        return Used(bid, length)

    def set_driver_event(self, flags: int, off_wrap: int = 0) -> None:
        """Driver event suppression: ENABLE / DISABLE / DESC (with desc_event_off_wrap) (§2.8.10)."""
        self.qt.write(self.driver_addr, struct.pack("<HH", off_wrap, flags))

    def device_event(self) -> tuple[int, int]:
        """(desc_event_off_wrap, desc_event_flags) as the device wrote them."""
        return struct.unpack("<HH", self.qt.read(self.device_addr, 4))

"""A closed-loop load generator over qtest and the clocks it measures with.

Each `Stream` keeps `depth` requests of one kind and size in flight on a split queue (depth >= 2, so a
throttled device always has something queued and the limit, not the test's round trips, sets the pace);
every completion is timestamped and its buffers are posted again at once. Buffers are allocated once per
slot and reused, so a long run never exhausts guest memory.

Two clocks, the same assertions: `WallClock` (QEMU under TCG has no virtual clock: poll the used ring and
timestamp arrivals with time.monotonic()) and `VirtualClock` (a target whose qtest has `clock_step`: time
moves only when the test steps it to the next timer deadline, so the run is exact and takes no wall time).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from conformance.drivers.qtest import QtestError, QtestSession
from conformance.drivers.virtio import GuestAllocator
from conformance.drivers.virtqueue import Seg, SplitQueue
from conformance.virtio.devices import S_OK, T_IN, T_OUT

#: A run that has not finished this much wall time after its clock length has hung.
WATCHDOG = 8.0
#: No limit in these suites holds a request back this long: a longer silence is a device that stopped.
STALL = 2.0


class WallClock:
    """Real time: the target's throttle timers run on their own; the test polls."""

    virtual = False

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def idle(self) -> None:
        time.sleep(0.0005)

    def progressed(self) -> None:
        pass


class VirtualClock:
    """qtest `clock_step` time: an idle test advances the clock to the target's next timer deadline.

    A completion may be posted by the target's I/O thread a moment after the step that released it, so an
    idle step first polls briefly in real time (`settle`) before moving time on.
    """

    virtual = True

    def __init__(self, qt: QtestSession, settle: float = 0.002) -> None:
        self.qt = qt
        self.settle = settle
        self.t0_ns = qt.clock_step(0)
        self.ns = self.t0_ns
        self._quiet = 0

    def now(self) -> float:
        return (self.ns - self.t0_ns) / 1e9

    def idle(self) -> None:
        self._quiet += 1
        if self._quiet < 3:
            time.sleep(self.settle)
            return
        self._quiet = 0
        before = self.ns
        self.ns = self.qt.clock_step()
        if self.ns == before:  # no timer armed: move on by a millisecond rather than spin
            self.ns = self.qt.clock_step(1_000_000)

    def progressed(self) -> None:
        self._quiet = 0


def has_virtual_clock(qt: QtestSession) -> bool:
    """Probe: QEMU under TCG answers `FAIL Unknown command 'clock_step'`; a virtual clock answers OK."""
    try:
        qt.clock_step(0)
    except QtestError:
        return False
    return True


@dataclass
class Stream:
    """`depth` requests of `kind` (T_IN/T_OUT) of `size` bytes kept in flight on `vq`, from `sector` on."""

    name: str
    vq: SplitQueue
    kind: int
    size: int
    depth: int = 2
    sector: int = 0
    slots: list[list[Seg]] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    t: float
    stream: str
    nbytes: int


class Load:
    """Runs streams against a clock and records every completion."""

    def __init__(self, qt: QtestSession, alloc: GuestAllocator, clock: WallClock | VirtualClock) -> None:
        self.qt, self.alloc, self.clock = qt, alloc, clock
        self.streams: list[Stream] = []
        self.events: list[Event] = []
        self._inflight: dict[tuple[int, int], tuple[Stream, int]] = {}  # (queue id, head) -> stream, slot

    def add(self, stream: Stream) -> Stream:
        for i in range(stream.depth):
            # Every other extent: adjacent requests may be merged into one before throttling (QEMU's
            # virtio-blk does), which would count several requests as one operation.
            sector = stream.sector + 2 * i * (stream.size // 512)
            header = self.alloc.alloc(16, 16)
            self.qt.write(header, struct.pack("<IIQ", stream.kind, 0, sector))
            data = self.alloc.alloc(stream.size, 4096)
            if stream.kind == T_OUT:
                self.qt.memset(data, stream.size, 0x5A)
            status = self.alloc.alloc(1, 1)
            stream.slots.append([Seg(header, 16), Seg(data, stream.size, stream.kind == T_IN), Seg(status, 1, True)])
        self.streams.append(stream)
        return stream

    def _post(self, stream: Stream, slot: int) -> None:
        self.qt.writeb(stream.slots[slot][2].addr, 0xFF)
        head = stream.vq.add(stream.slots[slot])
        self._inflight[(id(stream.vq), head)] = (stream, slot)

    def run(self, seconds: float) -> list[Event]:
        """Keep every stream's depth in flight for `seconds` of the clock; return this run's completions."""
        queues = {id(s.vq): s.vq for s in self.streams}
        if not self._inflight:
            for s in self.streams:
                for slot in range(s.depth):
                    self._post(s, slot)
            for vq in queues.values():
                vq.kick()
        start, n0 = self.clock.now(), len(self.events)
        deadline = time.monotonic() + seconds + WATCHDOG
        last = start
        while self.clock.now() - start < seconds:
            kicked = []
            for vq in queues.values():
                while (used := vq.get_used()) is not None:
                    stream, slot = self._inflight.pop((id(vq), used.id))
                    status = self.qt.readb(stream.slots[slot][2].addr)
                    assert status == S_OK, f"{stream.name}: request completed with status {status}"
                    self.events.append(Event(self.clock.now(), stream.name, stream.size))
                    self._post(stream, slot)
                    kicked.append(vq)
            for vq in {id(v): v for v in kicked}.values():
                vq.kick()
            if kicked:
                last = self.clock.now()
                self.clock.progressed()
            else:
                self.clock.idle()
            if self.clock.now() - last > STALL:
                raise AssertionError(f"no completion for {STALL} s of clock with {len(self._inflight)} requests "
                                     f"in flight ({len(self.events) - n0} completions so far)")
            if time.monotonic() > deadline:
                at = self.clock.now() - start
                raise AssertionError(f"load did not finish {seconds} s of clock in time (clock at {at:.3f} s, "
                                     f"{len(self.events) - n0} completions)")
        return self.events[n0:]


def rate(events: Sequence[Event], stream: str | None = None, by_bytes: bool = False) -> float:
    """Completions (or bytes) per second between the first and the last completion of `events`.

    The first completion only opens the window, so each later one stands for one inter-completion interval.
    """
    ev = [e for e in events if stream is None or e.stream == stream]
    assert len(ev) >= 3, f"only {len(ev)} completions of {stream or 'any stream'} in the window"
    span = ev[-1].t - ev[0].t
    assert span > 0
    units = sum(e.nbytes for e in ev[1:]) if by_bytes else len(ev) - 1
    return units / span


def window(events: Sequence[Event], start: float, end: float | None = None) -> list[Event]:
    return [e for e in events if e.t >= start and (end is None or e.t <= end)]


def assert_rate(measured: float, expected: float, what: str, tolerance: float = 0.10) -> None:
    """Within ±tolerance of the configured value (issue #5: ±10 % over a ≥ 2 s window)."""
    assert abs(measured - expected) <= tolerance * expected, (
        f"{what}: measured {measured:.2f}/s, configured {expected:.2f}/s (±{tolerance:.0%} allowed)"
    )


__all__ = ["Event", "Load", "Stream", "VirtualClock", "WallClock", "assert_rate", "has_virtual_clock", "rate",
           "window", "T_IN", "T_OUT"]  # fmt: skip

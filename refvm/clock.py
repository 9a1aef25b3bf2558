"""Guest clocks: a virtual clock the qtest client steps, and a real-time clock for KVM.

Under ``-accel qtest`` nothing runs on its own: the test owns time. Devices arm timers on a
:class:`VirtualClock` and those timers fire only when the client says ``clock_step`` or
``clock_set`` -- on the thread that moves the clock, in deadline order, with :meth:`now_ns`
reading exactly the timer's deadline while its callback runs (as QEMU's ``qtest_clock_warp``
advances timer by timer). That makes timer-driven device behaviour deterministic in tests.

Under ``-accel kvm`` time is wall time: :class:`RealtimeClock` has the same interface over
``time.monotonic_ns`` and fires its timers on a daemon thread of its own, since no caller
drives it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["Timer", "VirtualClock", "RealtimeClock"]

TimerCallback = Callable[[], None]


class Timer:
    """A one-shot timer handle returned by ``add_timer``; :meth:`cancel` disarms it."""

    __slots__ = ("deadline_ns", "callback", "_cancelled", "_fired")

    def __init__(self, deadline_ns: int, callback: TimerCallback) -> None:
        self.deadline_ns = deadline_ns
        self.callback = callback
        self._cancelled = False
        self._fired = False

    @property
    def pending(self) -> bool:
        """Armed and not yet fired."""
        return not (self._cancelled or self._fired)

    def cancel(self) -> bool:
        """Disarm; returns True if the timer had not fired yet."""
        was_pending = self.pending
        self._cancelled = True
        return was_pending

    def __repr__(self) -> str:
        state = "pending" if self.pending else ("cancelled" if self._cancelled else "fired")
        return f"<Timer deadline={self.deadline_ns} {state}>"


class _TimerQueue:
    """Timers ordered by (deadline, arming order): equal deadlines fire first-armed first."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()

    def push(self, timer: Timer) -> None:
        heapq.heappush(self._heap, (timer.deadline_ns, next(self._seq), timer))

    def _drop_dead(self) -> None:
        while self._heap and not self._heap[0][2].pending:
            heapq.heappop(self._heap)

    def next_deadline(self) -> int | None:
        self._drop_dead()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int) -> Timer | None:
        """The earliest pending timer with deadline <= now, removed from the queue."""
        self._drop_dead()
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None


def _check_ns(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an integer number of nanoseconds, not {value!r}")
    return value


class VirtualClock:
    """Nanosecond virtual time that moves only when :meth:`step` or :meth:`set` is called."""

    #: qtest accepts ``clock_step``/``clock_set`` only on a clock it owns.
    virtual = True

    def __init__(self, start_ns: int = 0) -> None:
        self._now = _check_ns(start_ns, "start_ns")
        self._timers = _TimerQueue()
        self._lock = threading.Lock()  # guards _now and _timers; never held across a callback
        self._advance = threading.RLock()  # one advance at a time (re-entrant for callbacks)

    def now_ns(self) -> int:
        return self._now

    def next_deadline(self) -> int | None:
        """Deadline of the earliest armed timer, or None."""
        with self._lock:
            return self._timers.next_deadline()

    def add_timer(self, deadline_ns: int, callback: TimerCallback) -> Timer:
        """Arm a one-shot timer for absolute virtual time ``deadline_ns``.

        A deadline already in the past fires at the next step or set (even ``step(0)``).
        """
        timer = Timer(_check_ns(deadline_ns, "deadline_ns"), callback)
        with self._lock:
            self._timers.push(timer)
        return timer

    def cancel_timer(self, timer: Timer) -> bool:
        return timer.cancel()

    def step(self, ns: int | None = None) -> int:
        """Advance by ``ns``, or (None) to the next timer deadline; returns the new time.

        Without timers ``step()`` leaves the time alone, as QEMU's ``clock_step`` does.
        """
        with self._advance:
            if ns is None:
                deadline = self.next_deadline()
                target = self._now if deadline is None else max(self._now, deadline)
            else:
                if _check_ns(ns, "ns") < 0:
                    raise ValueError(f"cannot step the clock backwards ({ns} ns)")
                target = self._now + ns
            return self._advance_to(target)

    def set(self, ns: int) -> int:
        """Advance to absolute time ``ns``; a time in the past changes nothing. Returns the new time."""
        with self._advance:
            return self._advance_to(max(self._now, _check_ns(ns, "ns")))

    def _advance_to(self, target: int) -> int:
        """Fire due timers one by one, moving time to each deadline, then settle at ``target``."""
        while True:
            with self._lock:
                timer = self._timers.pop_due(target)
                if timer is None:
                    self._now = max(self._now, target)
                    return self._now
                self._now = max(self._now, timer.deadline_ns)
                timer._fired = True
            timer.callback()

    def __repr__(self) -> str:
        return f"<VirtualClock now={self._now} ns next={self.next_deadline()}>"


class RealtimeClock:
    """Monotonic host time (from creation) with timers fired on a daemon thread.

    ``step``/``set`` sleep until the requested time: they exist so code written against the
    clock interface runs under either accelerator, not to control time.
    """

    virtual = False

    def __init__(self) -> None:
        self._origin = time.monotonic_ns()
        self._timers = _TimerQueue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._origin

    def next_deadline(self) -> int | None:
        with self._cond:
            return self._timers.next_deadline()

    def add_timer(self, deadline_ns: int, callback: TimerCallback) -> Timer:
        timer = Timer(_check_ns(deadline_ns, "deadline_ns"), callback)
        with self._cond:
            if self._closed:
                raise RuntimeError("clock is closed")
            self._timers.push(timer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="refvm-rtclock", daemon=True)
                self._thread.start()
            self._cond.notify()
        return timer

    def cancel_timer(self, timer: Timer) -> bool:
        return timer.cancel()

    def step(self, ns: int | None = None) -> int:
        """Sleep ``ns`` (or until the next deadline, if any); returns the time after."""
        if ns is None:
            deadline = self.next_deadline()
            ns = 0 if deadline is None else max(0, deadline - self.now_ns())
        elif _check_ns(ns, "ns") < 0:
            raise ValueError(f"cannot step the clock backwards ({ns} ns)")
        return self.set(self.now_ns() + ns)

    def set(self, ns: int) -> int:
        """Sleep until time ``ns`` (no-op if already past); returns the time after."""
        delay = _check_ns(ns, "ns") - self.now_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        return self.now_ns()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = self.now_ns()
                timer = self._timers.pop_due(now)
                if timer is None:
                    deadline = self._timers.next_deadline()
                    wait = None if deadline is None else (deadline - now) / 1e9
                    self._cond.wait(wait)
                    continue
                timer._fired = True
            timer.callback()

    def close(self) -> None:
        """Stop the timer thread (pending timers never fire) and join it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

"""VirtualClock/RealtimeClock: time moves only when told, timers fire in deadline order."""

from __future__ import annotations

import threading

import pytest

from refvm.clock import RealtimeClock, VirtualClock


def test_virtual_clock_starts_still_and_steps() -> None:
    clock = VirtualClock()
    assert clock.now_ns() == 0
    assert clock.step(100) == 100
    assert clock.now_ns() == 100
    assert clock.step(0) == 100


def test_step_without_argument_goes_to_next_deadline_or_stays() -> None:
    clock = VirtualClock(start_ns=50)
    assert clock.step() == 50  # no timers: QEMU's clock_step leaves time alone
    fired: list[int] = []
    clock.add_timer(1000, lambda: fired.append(clock.now_ns()))
    clock.add_timer(3000, lambda: fired.append(clock.now_ns()))
    assert clock.step() == 1000
    assert fired == [1000]
    assert clock.step() == 3000
    assert fired == [1000, 3000]
    assert clock.step() == 3000


def test_timers_fire_in_deadline_order_seeing_their_own_deadline() -> None:
    clock = VirtualClock()
    seen: list[tuple[str, int]] = []
    clock.add_timer(30, lambda: seen.append(("c", clock.now_ns())))
    clock.add_timer(10, lambda: seen.append(("a", clock.now_ns())))
    clock.add_timer(20, lambda: seen.append(("b1", clock.now_ns())))
    clock.add_timer(20, lambda: seen.append(("b2", clock.now_ns())))  # same deadline: arming order
    clock.add_timer(31, lambda: seen.append(("late", clock.now_ns())))
    assert clock.step(30) == 30
    assert seen == [("a", 10), ("b1", 20), ("b2", 20), ("c", 30)]


def test_cancel_and_rearm_from_callback() -> None:
    clock = VirtualClock()
    ticks: list[int] = []

    def periodic() -> None:
        ticks.append(clock.now_ns())
        if len(ticks) < 5:
            clock.add_timer(clock.now_ns() + 100, periodic)

    clock.add_timer(100, periodic)
    doomed = clock.add_timer(250, lambda: ticks.append(-1))
    assert doomed.cancel() is True
    assert doomed.cancel() is False
    assert clock.step(1000) == 1000
    assert ticks == [100, 200, 300, 400, 500]
    assert clock.next_deadline() is None


def test_set_never_goes_backwards_and_fires_due_timers() -> None:
    clock = VirtualClock()
    hit: list[int] = []
    clock.add_timer(500, lambda: hit.append(clock.now_ns()))
    assert clock.set(400) == 400
    assert hit == []
    assert clock.set(100) == 400  # in the past: nothing happens
    assert clock.set(600) == 600
    assert hit == [500]


def test_past_deadline_fires_on_next_step_zero() -> None:
    clock = VirtualClock(start_ns=1000)
    hit: list[int] = []
    clock.add_timer(10, lambda: hit.append(clock.now_ns()))
    assert clock.step(0) == 1000
    assert hit == [1000]


def test_bad_arguments_rejected() -> None:
    clock = VirtualClock()
    with pytest.raises(ValueError):
        clock.step(-1)
    with pytest.raises(TypeError):
        clock.step(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        clock.add_timer(True, lambda: None)  # type: ignore[arg-type]


def test_realtime_clock_moves_and_fires_timers_on_its_thread() -> None:
    clock = RealtimeClock()
    try:
        assert clock.virtual is False
        t0 = clock.now_ns()
        done = threading.Event()
        threads: list[str] = []

        def cb() -> None:
            threads.append(threading.current_thread().name)
            done.set()

        clock.add_timer(t0 + 5_000_000, cb)
        assert done.wait(5)
        assert threads == ["refvm-rtclock"]
        assert clock.now_ns() >= t0 + 5_000_000
        before = clock.now_ns()
        assert clock.step(1_000_000) >= before + 1_000_000
        assert clock.set(0) >= before  # never backwards
    finally:
        clock.close()

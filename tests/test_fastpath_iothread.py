"""IoThread: ordering, fd callbacks on real eventfds, error handling, close semantics."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest

from refvm.iothread import IoThread, read_eventfd


@pytest.fixture
def io() -> Iterator[IoThread]:
    t = IoThread("test-io")
    yield t
    t.close()


def wait_for(cond, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_call_soon_runs_in_fifo_order_on_the_thread(io: IoThread) -> None:
    seen: list[tuple[int, str]] = []
    futs = [io.call_soon(lambda i=i: seen.append((i, threading.current_thread().name))) for i in range(50)]
    futs[-1].result(2)
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"test-io"}


def test_call_soon_returns_result_and_exception(io: IoThread) -> None:
    assert io.call_soon(lambda: 41 + 1).result(2) == 42
    with pytest.raises(ZeroDivisionError):
        io.call_soon(lambda: 1 / 0).result(2)
    assert io.errors == 1


def test_eventfd_callback_runs_on_iothread(io: IoThread) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    got: list[tuple[int, bool]] = []
    try:
        io.add_fd(efd, lambda: got.append((read_eventfd(efd), io.in_thread())))
        os.eventfd_write(efd, 3)
        wait_for(lambda: got)
        assert got == [(3, True)]
        os.eventfd_write(efd, 1)
        wait_for(lambda: len(got) == 2)
        assert got[1] == (1, True)
        with pytest.raises(ValueError, match="already watched"):
            io.add_fd(efd, lambda: None)
        io.remove_fd(efd)
        io.remove_fd(efd)  # unknown fds are ignored
        os.eventfd_write(efd, 1)
        io.call_soon(lambda: None).result(2)
        time.sleep(0.02)
        assert len(got) == 2
    finally:
        os.close(efd)


def test_callback_exception_is_logged_and_loop_survives(io: IoThread, caplog: pytest.LogCaptureFixture) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    calls: list[int] = []

    def bad() -> None:
        calls.append(read_eventfd(efd))
        raise RuntimeError("device bug")

    try:
        with caplog.at_level(logging.ERROR, logger="refvm.iothread"):
            io.add_fd(efd, bad)
            os.eventfd_write(efd, 1)
            wait_for(lambda: io.errors == 1)
            assert "device bug" in caplog.text
        assert io.call_soon(lambda: "alive").result(2) == "alive"
        os.eventfd_write(efd, 1)
        wait_for(lambda: io.errors == 2)
        assert calls == [1, 1]
    finally:
        io.remove_fd(efd)
        os.close(efd)


def test_remove_fd_from_a_callback_stops_events_in_the_same_batch(io: IoThread) -> None:
    a, b = (os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2))
    ran: list[str] = []

    def on_a() -> None:
        read_eventfd(a)
        ran.append("a")
        io.remove_fd(b)

    def on_b() -> None:
        read_eventfd(b)
        ran.append("b")
        io.remove_fd(a)

    try:
        io.add_fd(a, on_a)
        io.add_fd(b, on_b)
        # Both readable before the thread looks: whichever runs first removes the other.
        io.call_soon(lambda: (os.eventfd_write(a, 1), os.eventfd_write(b, 1))).result(2)
        io.call_soon(lambda: None).result(2)
        wait_for(lambda: ran)
        time.sleep(0.02)
        assert len(ran) == 1
    finally:
        io.remove_fd(a)
        io.remove_fd(b)
        os.close(a)
        os.close(b)


def test_close_runs_queued_calls_then_joins() -> None:
    io = IoThread("closing")
    gate = threading.Event()
    order: list[int] = []
    io.call_soon(gate.wait)
    for i in range(5):
        io.call_soon(lambda i=i: order.append(i))
    threading.Timer(0.05, gate.set).start()
    io.close()
    assert order == [0, 1, 2, 3, 4]
    assert io.closed
    with pytest.raises(RuntimeError, match="closed"):
        io.call_soon(lambda: None)
    with pytest.raises(RuntimeError, match="closed"):
        io.add_fd(0, lambda: None)
    io.close()  # idempotent


def test_close_from_inside_a_callback() -> None:
    io = IoThread("self-close")
    io.call_soon(io.close).result(2)
    wait_for(lambda: io.closed)

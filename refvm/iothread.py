"""IoThread: one daemon thread that waits on file descriptors (eventfds) and runs their callbacks.

Why it exists: with ``-accel kvm`` a guest's queue notification is caught inside the kernel by an
ioeventfd, so the vCPU thread never leaves KVM_RUN for it; somebody else has to notice the eventfd and run
the device back-end. That is this thread (QEMU's main loop / iothread plays the same part). Keeping the
back-ends here means a slow disk read never stalls a vCPU.

Rules the callers rely on:

* callbacks run one at a time, on this thread, in the order their events were seen; ``call_soon``
  callbacks run in FIFO order, after the fd callbacks of the current wakeup;
* an exception in a callback is logged and counted (:attr:`IoThread.errors`), never fatal to the loop;
* ``add_fd``/``remove_fd``/``call_soon`` are safe from any thread, including from inside a callback;
  after ``remove_fd`` returns on the IoThread the callback is not called again, even for an event that
  was already fetched in the same batch;
* ``close`` runs what was queued with ``call_soon`` before it, then joins the thread (unless it is called
  from the thread itself).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["IoThread", "read_eventfd"]

log = logging.getLogger(__name__)

_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP


def read_eventfd(fd: int) -> int:
    """Consume an eventfd's counter without blocking: the count, or 0 if nothing was signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


class IoThread:
    """An epoll loop on its own daemon thread; see the module docstring for the guarantees."""

    def __init__(self, name: str = "iothread") -> None:
        self.name = name
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._pending: collections.deque[tuple[Callable[[], Any], Future[Any]]] = collections.deque()
        self._closing = False
        #: Callbacks that raised (logged); a test or a stats query can read it.
        self.errors = 0
        #: fd callbacks run so far.
        self.dispatched = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public API (any thread)
    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def in_thread(self) -> bool:
        """True when called from the IoThread itself."""
        return threading.get_ident() == self._thread.ident

    def add_fd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on this thread whenever ``fd`` is readable (level-triggered: the
        callback must consume what made it readable, e.g. :func:`read_eventfd`)."""
        with self._lock:
            if self._closing:
                raise RuntimeError(f"{self.name}: closed")
            if fd in self._callbacks:
                raise ValueError(f"{self.name}: fd {fd} is already watched")
            self._callbacks[fd] = callback
            self._epoll.register(fd, _EVENTS)

    def remove_fd(self, fd: int) -> None:
        """Stop watching ``fd`` (unknown fds are ignored). The caller still owns and closes the fd."""
        with self._lock:
            if self._callbacks.pop(fd, None) is None:
                return
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed by its owner: epoll dropped it by itself

    def call_soon(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn()`` on the IoThread; returns a Future with its result or exception."""
        fut: Future[Any] = Future()
        with self._lock:  # the write stays under the lock: the thread closes the wake fd under it too
            if self._closing:
                raise RuntimeError(f"{self.name}: closed")
            self._pending.append((fn, fut))
            os.eventfd_write(self._wake, 1)
        return fut

    def close(self, timeout: float = 5.0) -> None:
        """Run the already queued ``call_soon`` callbacks, stop the loop and join the thread."""
        with self._lock:
            if not self._closing:
                self._closing = True
                os.eventfd_write(self._wake, 1)
        if not self.in_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("%s: did not stop within %g s", self.name, timeout)

    @property
    def closed(self) -> bool:
        """True once the loop has ended and released its epoll and wakeup fds."""
        return not self._thread.is_alive() and self._closing

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        while True:
            try:
                events = self._epoll.poll()
            except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
                continue
            for fd, _mask in events:
                if fd == self._wake:
                    read_eventfd(self._wake)
                    continue
                with self._lock:
                    callback = self._callbacks.get(fd)
                if callback is not None:
                    self.dispatched += 1
                    self._guarded(callback)
            self._run_pending()
            with self._lock:
                if self._closing and not self._pending:
                    # Released here, under the lock, so no call_soon can write to a closed wake fd.
                    self._callbacks.clear()
                    self._epoll.close()
                    os.close(self._wake)
                    return

    def _run_pending(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                fn, fut = self._pending.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - reported through the future and the log
                self.errors += 1
                log.exception("%s: call_soon callback %r failed", self.name, fn)
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def _guarded(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:  # noqa: BLE001 - a device bug must not stop every other device's I/O
            self.errors += 1
            log.exception("%s: fd callback %r failed", self.name, callback)

    def __repr__(self) -> str:
        return f"<IoThread {self.name} fds={len(self._callbacks)} alive={self._thread.is_alive()}>"

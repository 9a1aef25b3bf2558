"""virtio-blk's requests held by a drive's throttle group (QEMU's throttling), as a mixin of :class:`VirtioBlk`.

Within the limits a request starts inside ``submit`` and completes synchronously. Over them the chain is kept
here and ``start`` runs later on the clock's timer thread, which does the I/O and completes the chain through
:meth:`VirtioDevice.complete`. Each held request runs exactly once: when the throttle starts it, when a device
reset drains it (performed, not completed into rings the reset discards), or when a migration save drains it
(performed and completed, see :meth:`ThrottledRequests.quiesce`) -- whichever claims it first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from refvm.virtio.queue import Chain, Virtqueue

__all__ = ["ThrottledRequests", "DEFERRED"]

log = logging.getLogger("refvm.virtio.devices.blk")

#: _request's answer for a request the throttle holds back (completed later, not pushed now); compared
#: with ``==``: an int is not a singleton.
DEFERRED = -1


class _Throttled:
    """A request held by the throttle: runs exactly once, either when its ``start`` fires or at reset."""

    __slots__ = ("queue", "chain", "io", "lock", "claimed", "submitter", "in_submit", "written")

    def __init__(self, queue: Virtqueue, chain: Chain, io: Callable[[], int]) -> None:
        self.queue = queue
        self.chain = chain
        self.io = io  # does the I/O, writes the status byte, returns the used length
        self.lock = threading.Lock()
        self.claimed = False
        self.submitter = threading.get_ident()
        self.in_submit = True
        self.written: int | None = None

    def claim(self) -> bool:
        with self.lock:
            if self.claimed:
                return False
            self.claimed = True
            return True


class ThrottledRequests:
    """The throttle side of virtio-blk; the device provides ``complete``, ``fail`` and ``_used_len``."""

    throttle: Any
    lock: threading.RLock
    complete: Callable[[Virtqueue, Chain, int], None]
    fail: Callable[[str], None]
    _used_len: Callable[[int], int]

    def _init_throttle(self, backend: object) -> None:
        #: The drive's throttle group member (None: never throttled).
        self.throttle = getattr(backend, "throttle", None)
        self._throttled: list[_Throttled] = []
        self._throttled_lock = threading.Lock()

    def _throttle_rw(self, queue: Virtqueue, chain: Chain, is_write: bool, nbytes: int,
                     io: Callable[[], int]) -> int | None:
        """Run ``io`` through the throttle: its used length now, or DEFERRED if it completes later."""
        req = _Throttled(queue, chain, io)
        with self._throttled_lock:
            self._throttled.append(req)
        try:
            self.throttle.submit(is_write, nbytes, lambda: self._throttle_start(req))
        finally:
            req.in_submit = False
        if req.written is not None:  # started inside submit: complete synchronously
            return req.written
        return DEFERRED

    def _throttle_start(self, req: _Throttled) -> None:
        """The throttle let ``req`` go: on the submitting thread inside submit, or on the timer thread.

        Claim, I/O and completion happen under the device lock, so a migration save (which holds it) finds
        every request either completed or still waiting to be drained, never half done. (The throttle calls
        ``start`` without its own lock held, and timer callbacks hold no lock a device path takes.)"""
        with self.lock:
            if not req.claim():
                return  # already performed by a reset's or a save's drain
            with self._throttled_lock:
                if req in self._throttled:
                    self._throttled.remove(req)
            try:
                written = req.io()
            except Exception:  # guest memory vanished etc.: the device fails, the timer thread lives on
                log.exception("virtio-blk: throttled request failed")
                self.fail("virtio-blk: throttled request could not be completed")
                return
            if req.in_submit and req.submitter == threading.get_ident():
                req.written = written
                return
            self.complete(req.queue, req.chain, self._used_len(written))

    def _drain_throttled(self) -> None:
        """Perform every request still waiting for the limits (called at reset, lock held)."""
        with self._throttled_lock:
            pending, self._throttled = self._throttled, []
        for req in pending:
            if req.claim():
                try:
                    req.io()
                except Exception:  # noqa: BLE001 - the rings are being reset anyway
                    log.warning("virtio-blk: throttled request failed during reset drain")

    def quiesce(self) -> None:
        """Before a save: perform every request waiting for the throttle and complete it into its ring
        (see the module docstring: drained, not carried). A start the throttle fires later finds it claimed."""
        with self._throttled_lock:
            pending, self._throttled = self._throttled, []
        for req in pending:
            if not req.claim():
                continue
            try:
                written = req.io()
            except Exception:  # noqa: BLE001 - guest memory vanished: the device fails, the save goes on
                log.exception("virtio-blk: throttled request failed while draining for migration")
                self.fail("virtio-blk: throttled request could not be completed")
                continue
            self.complete(req.queue, req.chain, self._used_len(written))

    @property
    def throttled_pending(self) -> int:
        """Requests waiting for the throttle (for tests and debugging)."""
        with self._throttled_lock:
            return len(self._throttled)

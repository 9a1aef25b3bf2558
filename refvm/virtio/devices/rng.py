"""virtio-rng: the entropy device (VIRTIO 1.2 section 5.4), behaving as QEMU 7.2's ``virtio-rng-pci``.

Properties (plus the transport's ``addr id bus disable-legacy disable-modern vectors`` and the core's
``indirect_desc event_idx packed``):

=============  ==================  ===========================================================
property       default             meaning
=============  ==================  ===========================================================
``rng``        (built-in)          id of an ``-object rng-random,id=..,filename=PATH``; without it
                                   the device reads /dev/urandom (QEMU's rng-builtin)
``max-bytes``  2^63-1              bytes the guest may take per ``period``
``period``     65536               milliseconds of the rate-limit window
=============  ==================  ===========================================================

QEMU 7.2 facts (measured): no device features, no configuration space, one queue of size 8.

5.4.6: the driver posts device-writable buffers; the device fills each completely with random
bytes and returns it with the length written (5.4.6.2: the device MUST NOT write past the buffer).
One buffer gets at most :data:`MAX_REQUEST` bytes, so a guest cannot make the host read gigabytes at
once; ``len`` tells the driver how many arrived. When the rate limit is used up, buffers stay posted
until the next window opens (QEMU's quota timer).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping

from refvm.memory import GuestMemory
from refvm.virtio.device import VirtioDevice
from refvm.virtio.devices.props import Props
from refvm.virtio.queue import Virtqueue

__all__ = ["VirtioRng"]

#: Largest fill of a single buffer.
MAX_REQUEST = 64 << 10
QUEUE_SIZE = 8
DEFAULT_MAX_BYTES = (1 << 63) - 1
DEFAULT_PERIOD_MS = 1 << 16


class VirtioRng(VirtioDevice):
    """Entropy from a host file (a character device such as /dev/urandom or /dev/random)."""

    device_id = 4
    VMSD_NAME = "virtio-rng"
    features = 0
    queue_max_sizes = (QUEUE_SIZE,)

    def __init__(
        self,
        mem: GuestMemory,
        source: str = "/dev/urandom",
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        period_ms: int = DEFAULT_PERIOD_MS,
        **virtio: bool,
    ) -> None:
        self.source = source
        self.fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        self.max_bytes = max_bytes
        self.period_ms = period_ms
        self._monotonic = time.monotonic
        self._window_start = self._monotonic()
        self._quota = max_bytes
        self._timer: threading.Timer | None = None
        self.bytes_served = 0
        super().__init__(mem, config_size=0, **virtio)

    PROPERTIES = ("rng", "max-bytes", "period")

    @classmethod
    def create(
        cls,
        mem: GuestMemory,
        props: Mapping[str, str],
        *,
        chardevs: Mapping[str, object] | None = None,
        drives: Mapping[str, object] | None = None,
        netdevs: Mapping[str, object] | None = None,
        objects: Mapping[str, object] | None = None,
        type_name: str = "virtio-rng-pci",
    ) -> VirtioRng:
        p = Props(type_name, props, cls.PROPERTIES)
        source = "/dev/urandom"
        rng_id = p.text("rng")
        if rng_id is not None:
            obj = (objects or {}).get(rng_id)
            if obj is None:
                raise ValueError(f"Property '{type_name}.rng' can't find value '{rng_id}'")
            filename = obj.get("filename") if isinstance(obj, Mapping) else getattr(obj, "filename", None)
            source = str(filename or "/dev/urandom")
        max_bytes = p.number("max-bytes", DEFAULT_MAX_BYTES, 0, DEFAULT_MAX_BYTES)
        period = p.number("period", DEFAULT_PERIOD_MS, 0, 0xFFFFFFFF)
        if period == 0:
            raise ValueError("'period' parameter expects a positive integer")
        if max_bytes == 0:
            raise ValueError("'max-bytes' parameter must be non-zero")
        try:
            return cls(mem, source, max_bytes=max_bytes, period_ms=period, **p.virtio_flags())
        except OSError as exc:
            raise ValueError(f"Could not open '{source}': {exc.strerror}") from None

    # ------------------------------------------------------------------ rate limit
    def _refill(self) -> None:
        now = self._monotonic()
        if now - self._window_start >= self.period_ms / 1000:
            self._window_start = now
            self._quota = self.max_bytes

    def _arm_timer(self) -> None:
        if self._timer is not None:
            return
        delay = max(0.0, self._window_start + self.period_ms / 1000 - self._monotonic())
        self._timer = threading.Timer(delay, self._window_opened)
        self._timer.daemon = True
        self._timer.start()

    def _window_opened(self) -> None:
        with self.lock:
            self._timer = None
            if self.live and self.queues and self.queues[0].ready:
                self.queue_notify(0)

    def reset_device(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ requests (5.4.6)
    def post_load(self) -> None:
        """Requests the source left in the ring while its rate limit was spent: served now, with the
        destination's own (fresh) quota; the driver notified once already and will not again."""
        if self.live and self.queues and self.queues[0].ready:
            self._run(self.queues[0])

    def handle_queue(self, queue: Virtqueue) -> None:
        for _ in range(queue.size):
            self._refill()
            if self._quota <= 0:
                self._arm_timer()
                return
            chain = queue.pop()
            if chain is None:
                return
            want = min(chain.writable_len, MAX_REQUEST, self._quota)
            data = self._entropy(want)
            written = chain.write_into(data)
            self._quota -= written
            self.bytes_served += written
            queue.push(chain, written)

    def _entropy(self, n: int) -> bytes:
        out = bytearray()
        for _ in range(64):  # a short read (e.g. /dev/random) is retried a bounded number of times
            if len(out) >= n:
                break
            try:
                chunk = os.read(self.fd, n - len(out))
            except BlockingIOError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def close(self) -> None:
        self.reset_device()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

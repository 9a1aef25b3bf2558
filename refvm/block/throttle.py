"""QEMU's leaky-bucket I/O throttling maths (``util/throttle.c`` semantics, QEMU 7.2).

A throttled device has six buckets (:class:`BucketType`): bytes and operations, each for
total / read / write traffic. Every request that runs pours into the buckets it belongs to
(:meth:`ThrottleState.account`), every bucket drains continuously at its ``avg`` rate
(:func:`leak_bucket`), and a request may start only while no relevant bucket is "full"
(:func:`compute_wait`). What "full" means is QEMU's documented burst model:

* ``max == 0`` (no burst configured): the bucket holds ``avg / 10`` units -- 100 ms worth
  of I/O at the average rate. QEMU does this so that a guest's I/O scheduler can send
  short bursts without every other request being delayed (the old ``throttle_fix_bucket``
  set ``max = avg / 10``; since QEMU 2.11 ``throttle_compute_wait`` applies it directly).
* ``max > 0``: the bucket holds ``max * burst_length`` units, i.e. the guest may run at
  ``max`` units/s for ``burst_length`` seconds before falling back to ``avg``.
* ``burst_length > 1``: a second level, ``burst_level``, drains at ``max`` and holds
  ``max / 10`` units, so that *during* the burst the rate is capped at ``max`` (otherwise
  the whole ``max * burst_length`` could be spent in one instant).

The wait for a request is the longest wait over the buckets that apply to its direction
(total + read, or total + write): the most restrictive limit wins. Waits are whole
nanoseconds, truncated as QEMU's ``double`` -> ``int64_t`` conversion does.

Numbers are kept as QEMU keeps them: limits (``avg``, ``max``, ``burst_length``) are
unsigned integers in QEMU 7.2, levels are doubles. This module has no clock of its own;
callers pass "now" in nanoseconds (see :mod:`refvm.block.throttle_group`, which uses
:mod:`refvm.clock`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from refvm.block.throttle_config import ThrottleConfig

__all__ = [
    "NANOSECONDS_PER_SECOND",
    "THROTTLE_VALUE_MAX",
    "BucketType",
    "LeakyBucket",
    "ThrottleState",
    "leak_bucket",
    "compute_wait",
    "buckets_for",
]

NANOSECONDS_PER_SECOND = 1_000_000_000
#: Upper bound of every limit (``include/qemu/throttle.h``): 10**15 units/s.
THROTTLE_VALUE_MAX = 1_000_000_000_000_000


class BucketType(IntEnum):
    """The six buckets, in QEMU's order (which is also the order validation walks them)."""

    BPS_TOTAL = 0
    BPS_READ = 1
    BPS_WRITE = 2
    OPS_TOTAL = 3
    OPS_READ = 4
    OPS_WRITE = 5


BUCKETS_COUNT = len(BucketType)


@dataclass
class LeakyBucket:
    """One bucket: ``avg`` units/s sustained, bursts up to ``max`` units/s for ``burst_length`` s.

    ``level`` is what has been poured in and not yet leaked; ``burst_level`` the same for the
    burst-rate bucket (only tracked when ``burst_length > 1``).
    """

    avg: float = 0
    max: float = 0
    level: float = 0.0
    burst_length: int = 1
    burst_level: float = 0.0

    def leak(self, delta_ns: int) -> None:
        """Drain for ``delta_ns`` nanoseconds; see :func:`leak_bucket`."""
        leak_bucket(self, delta_ns)

    def compute_wait(self) -> int:
        """Nanoseconds before another request may start; see :func:`compute_wait`."""
        return compute_wait(self)


def leak_bucket(bkt: LeakyBucket, delta_ns: int) -> None:
    """Drain ``bkt`` by ``avg * delta`` (and ``burst_level`` by ``max * delta``), never below 0.

    The burst level only drains when bursts longer than one second are configured, because
    only then is it filled (see :meth:`ThrottleState.account`).
    """
    leak = (float(bkt.avg) * float(delta_ns)) / NANOSECONDS_PER_SECOND
    bkt.level = max(bkt.level - leak, 0.0)
    if bkt.burst_length > 1:
        leak = (float(bkt.max) * float(delta_ns)) / NANOSECONDS_PER_SECOND
        bkt.burst_level = max(bkt.burst_level - leak, 0.0)


def _wait_ns(limit: float, extra: float) -> int:
    """Time to drain ``extra`` units at ``limit`` units/s, truncated to whole ns as C does."""
    wait = extra * NANOSECONDS_PER_SECOND
    wait /= float(limit)
    return int(wait)


def compute_wait(bkt: LeakyBucket) -> int:
    """Nanoseconds a new request must wait because of ``bkt`` (0: it may start now).

    A bucket without an average limit never delays. Otherwise the main bucket may hold
    ``avg / 10`` units (no burst configured) or ``max * burst_length`` units; anything above
    that drains at ``avg``. If the main bucket is not full but bursts last more than one
    second, the burst bucket (capacity ``max / 10``, draining at ``max``) caps the burst rate.
    """
    if not bkt.avg:
        return 0
    if not bkt.max:
        bucket_size = float(bkt.avg) / 10
        burst_bucket_size = 0.0
    else:
        bucket_size = bkt.max * bkt.burst_length
        burst_bucket_size = float(bkt.max) / 10

    extra = bkt.level - bucket_size
    if extra > 0:
        return _wait_ns(bkt.avg, extra)

    if bkt.burst_length > 1:
        # throttle_is_valid() guarantees max > 0 here (burst length needs a burst rate).
        extra = bkt.burst_level - burst_bucket_size
        if extra > 0:
            return _wait_ns(bkt.max, extra)
    return 0


def buckets_for(is_write: bool) -> tuple[BucketType, BucketType, BucketType, BucketType]:
    """The buckets a read (or write) is checked against: total and per-direction, bytes and ops."""
    if is_write:
        return (BucketType.BPS_TOTAL, BucketType.OPS_TOTAL, BucketType.BPS_WRITE, BucketType.OPS_WRITE)
    return (BucketType.BPS_TOTAL, BucketType.OPS_TOTAL, BucketType.BPS_READ, BucketType.OPS_READ)


class ThrottleState:
    """The buckets of one throttled device or throttle group plus the time of the last leak.

    Mirrors QEMU's ``ThrottleState``: :meth:`configure` installs a config (levels zeroed, the
    leak clock restarted at ``now_ns``), :meth:`compute_timer` leaks up to ``now`` and says
    whether (and until when) a request must wait, :meth:`account` pours a request in.
    Not thread-safe by itself: :class:`~refvm.block.throttle_group.ThrottleGroup` locks around it.
    """

    def __init__(self, config: ThrottleConfig | None = None, now_ns: int = 0) -> None:
        from refvm.block.throttle_config import ThrottleConfig

        #: The live config; its buckets carry the levels.
        self.cfg: ThrottleConfig = ThrottleConfig()
        #: Time of the last leak (0 until configured, as after QEMU's ``throttle_init``).
        self.previous_leak: int = 0
        if config is not None:
            self.configure(config, now_ns)

    def configure(self, config: ThrottleConfig, now_ns: int) -> None:
        """Take a copy of ``config`` with empty buckets; leaking restarts from ``now_ns``.

        As in QEMU, reconfiguring forgets the I/O already accounted (levels go to 0).
        """
        cfg = copy.deepcopy(config)
        for bkt in cfg.buckets:
            bkt.level = 0.0
            bkt.burst_level = 0.0
        self.cfg = cfg
        self.previous_leak = now_ns

    def get_config(self) -> ThrottleConfig:
        """A copy of the config in force (with the current levels, as QEMU's getter returns)."""
        return copy.deepcopy(self.cfg)

    def leak(self, now_ns: int) -> None:
        """Drain every bucket by the time elapsed since the last leak (nothing if time went back)."""
        delta_ns = now_ns - self.previous_leak
        self.previous_leak = now_ns
        if delta_ns <= 0:
            return
        for bkt in self.cfg.buckets:
            leak_bucket(bkt, delta_ns)

    def compute_wait(self, is_write: bool) -> int:
        """Longest wait (ns) over the four buckets that apply to this direction; no leaking here."""
        max_wait = 0
        for index in buckets_for(is_write):
            wait = compute_wait(self.cfg.buckets[index])
            if wait > max_wait:
                max_wait = wait
        return max_wait

    def compute_timer(self, is_write: bool, now_ns: int) -> tuple[bool, int]:
        """Leak up to ``now_ns``, then ``(must_wait, when)``: when the request may start."""
        self.leak(now_ns)
        wait = self.compute_wait(is_write)
        if wait:
            return True, now_ns + wait
        return False, now_ns

    def account(self, is_write: bool, size: int) -> None:
        """Pour a request of ``size`` bytes into its buckets.

        Byte buckets get ``size``. Operation buckets get one unit, or ``size / iops_size``
        units when ``iops-size`` is set and the request is bigger (a 64 KiB request counts as
        16 operations with ``iops-size=4096``). Burst levels are only filled when
        ``burst_length > 1``, the only case in which they are checked.
        """
        units = 1.0
        op_size = self.cfg.op_size
        if op_size and size > op_size:
            units = float(size) / float(op_size)
        direction_bps = BucketType.BPS_WRITE if is_write else BucketType.BPS_READ
        direction_ops = BucketType.OPS_WRITE if is_write else BucketType.OPS_READ
        for index, amount in (
            (BucketType.BPS_TOTAL, float(size)),
            (direction_bps, float(size)),
            (BucketType.OPS_TOTAL, units),
            (direction_ops, units),
        ):
            bkt = self.cfg.buckets[index]
            bkt.level += amount
            if bkt.burst_length > 1:
                bkt.burst_level += amount

    def __repr__(self) -> str:
        levels = ", ".join(f"{t.name}={b.level:g}" for t, b in zip(BucketType, self.cfg.buckets, strict=True))
        return f"<ThrottleState previous_leak={self.previous_leak} {levels}>"

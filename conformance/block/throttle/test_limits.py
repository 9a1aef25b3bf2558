"""Configured `-drive throttling.*` limits against measured completion rates (docs/throttle.txt, QEMU 7.2).

Each test keeps requests in flight (depth >= 2) for WARMUP + WINDOW seconds of the rig's clock and compares
the completion rate inside the window with the configured limit: within ±10 %.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conformance.block.conftest import clause
from conformance.block.throttle.conftest import WARMUP, WINDOW, ThrottleRig, throttle_opts
from conformance.block.throttle.load import T_IN, T_OUT, assert_rate, rate, window

KiB = 1024


@clause("throttle/iops-total")
def test_iops_total(rig: Callable[..., ThrottleRig]) -> None:
    r = rig(throttle_opts(iops_total=50))
    r.stream("read", T_IN, 4 * KiB, depth=3)
    events = r.load.run(WARMUP + WINDOW)
    assert_rate(rate(window(events, WARMUP)), 50, "iops-total=50, 4 KiB reads")


@clause("throttle/bps-total")
def test_bps_total(rig: Callable[..., ThrottleRig]) -> None:
    limit = 1024 * KiB
    r = rig(throttle_opts(bps_total=limit))
    r.stream("write", T_OUT, 64 * KiB, depth=2)
    events = r.load.run(WARMUP + WINDOW)
    assert_rate(rate(window(events, WARMUP), by_bytes=True), limit, "bps-total=1 MiB/s, 64 KiB writes")


@clause("throttle/read-write")
def test_read_and_write_limits_are_separate(rig: Callable[..., ThrottleRig]) -> None:
    """iops-read and iops-write throttle each direction on its own, on the same drive at the same time."""
    r = rig(throttle_opts(iops_read=40, iops_write=20))
    r.stream("read", T_IN, 4 * KiB, depth=2)
    r.stream("write", T_OUT, 4 * KiB, depth=2, sector=4096)
    events = window(r.load.run(WARMUP + WINDOW), WARMUP)
    assert_rate(rate(events, "read"), 40, "iops-read=40")
    assert_rate(rate(events, "write"), 20, "iops-write=20")


@clause("throttle/iops-size")
def test_iops_size_counts_large_requests_as_several(rig: Callable[..., ThrottleRig]) -> None:
    """With iops-size=4096 a 64 KiB request counts as 16 operations: 320 iops allow 20 such requests/s."""
    r = rig(throttle_opts(iops_total=320, iops_size=4096))
    r.stream("read", T_IN, 64 * KiB, depth=2)
    events = r.load.run(WARMUP + WINDOW)
    assert_rate(rate(window(events, WARMUP)), 320 / 16, "iops-total=320, iops-size=4096, 64 KiB reads")


@clause("throttle/burst")
def test_burst_then_average(rig: Callable[..., ThrottleRig]) -> None:
    """iops-total=10, iops-total-max=50, iops-total-max-length=2: I/O runs at the burst rate (50/s) until
    the bucket holds max × length = 100 operations, then at the average rate (10/s). The bucket leaks at
    avg while it fills, so the burst lasts 100 / (50 - 10) = 2.5 s and, after it, the count of completions
    by time t is max × length + avg × t."""
    avg, peak, length = 10, 50, 2
    r = rig(throttle_opts(iops_total=avg, iops_total_max=peak, iops_total_max_length=length))
    r.stream("read", T_IN, 4 * KiB, depth=3)
    events = r.load.run(4.2)
    knee = peak * length / (peak - avg)
    assert_rate(rate(window(events, 0.2, knee - 0.2)), peak, "burst phase (iops-total-max=50)")
    after = window(events, knee + 0.3)
    assert_rate(rate(after), avg, "after the burst (iops-total=10)")
    # Completions by the end of the run beyond what avg allows: the bucket's capacity, max × length.
    t_end = events[-1].t
    extra = sum(1 for e in events if e.t <= t_end) - avg * t_end
    assert abs(extra - peak * length) <= 0.10 * peak * length + 3, (
        f"burst allowance: {extra:.1f} operations beyond avg × t, expected max × length = {peak * length}"
    )


@clause("throttle/group")
def test_group_shares_one_limit(rig: Callable[..., ThrottleRig]) -> None:
    """Two drives in throttling.group=g share one iops-total=40 between them, taking turns."""
    opts = throttle_opts(group="g", iops_total=40)
    r = rig(opts, opts)
    r.stream("d0", T_IN, 4 * KiB, depth=2, drive=0)
    r.stream("d1", T_IN, 4 * KiB, depth=2, drive=1)
    events = window(r.load.run(WARMUP + WINDOW), WARMUP)
    assert_rate(rate(events), 40, "group g: both drives together")
    shares = {name: sum(1 for e in events if e.stream == name) / len(events) for name in ("d0", "d1")}
    assert all(0.35 <= s <= 0.65 for s in shares.values()), f"one drive starves the other: {shares}"


@pytest.mark.virtual_clock
@clause("throttle/iops-total")
def test_iops_total_exact_on_virtual_clock(rig: Callable[..., ThrottleRig]) -> None:
    """On a virtual clock the leaky bucket is deterministic: after the initial allowance every completion
    is 1/avg after the previous one."""
    r = rig(throttle_opts(iops_total=50))
    r.stream("read", T_IN, 4 * KiB, depth=3)
    events = window(r.load.run(WARMUP + WINDOW), WARMUP)
    gaps = [b.t - a.t for a, b in zip(events, events[1:], strict=False)]
    assert gaps and all(abs(g - 1 / 50) < 1e-3 for g in gaps), f"gaps (s): {sorted(set(round(g, 6) for g in gaps))}"

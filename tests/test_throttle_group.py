"""Throttled request scheduling on a clock: measured completion rates equal the configured limits.

On :class:`~refvm.clock.VirtualClock` completion times are exact, so the expected numbers are
derived from QEMU's algorithm by hand (see each test): e.g. ``iops=100`` lets the first 11
requests through at t=0 (the implicit burst of avg/10 = 10 ops, plus the one that fills it)
and then one every 10 ms.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from refvm.block.throttle_config import ThrottleConfig
from refvm.block.throttle_group import ThrottleGroupMember, ThrottleGroups
from refvm.clock import RealtimeClock, VirtualClock

S = 1_000_000_000
MS = 1_000_000


def per_second(times: list[int]) -> dict[int, int]:
    return dict(sorted(Counter(t // S for t in times).items()))


def drive(opts: dict[str, str], name: str = "d0") -> tuple[VirtualClock, ThrottleGroups, ThrottleGroupMember]:
    clock = VirtualClock()
    groups = ThrottleGroups(clock)
    member = ThrottleGroupMember(name)
    groups.attach_drive(member, ThrottleConfig.from_drive_options(opts), name)
    return clock, groups, member


def submit_many(clock: VirtualClock, member: ThrottleGroupMember, n: int, size: int, write: bool = False) -> list[int]:
    times: list[int] = []
    for _ in range(n):
        member.submit(write, size, lambda: times.append(clock.now_ns()))
    return times


def test_unthrottled_member_starts_synchronously() -> None:
    member = ThrottleGroupMember("d0")
    ran: list[int] = []
    member.submit(True, 4096, lambda: ran.append(1))
    assert ran == [1]
    assert member.query_info() == {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}


def test_iops_100_gives_one_request_every_10ms() -> None:
    clock, _, member = drive({"throttling.iops-total": "100"})
    times = submit_many(clock, member, 300, 4096)
    assert times == [0] * 11  # avg/10 = 10 ops of burst, plus the one that fills the bucket
    clock.step(2 * S)
    assert times[11:] == [k * 10 * MS for k in range(1, 201)]
    assert per_second(times) == {0: 110, 1: 100, 2: 1}


def test_bps_1mib_with_64k_requests_is_16_per_second() -> None:
    clock, _, member = drive({"throttling.bps-total": str(1 << 20)})
    times = submit_many(clock, member, 200, 64 << 10)
    clock.step(5 * S)
    # Two requests fit the 102.4 KiB implicit burst, the third waits 25 ms, then every 62.5 ms.
    assert times[:3] == [0, 0, 25 * MS - 1]
    counts = per_second(times)
    assert [counts[s] for s in (1, 2, 3, 4)] == [16, 16, 16, 16]


def test_bps_read_limit_does_not_touch_writes() -> None:
    clock, _, member = drive({"throttling.bps-read": str(1 << 20)})
    writes = submit_many(clock, member, 100, 64 << 10, write=True)
    reads = submit_many(clock, member, 100, 64 << 10)
    assert writes == [0] * 100
    clock.step(3 * S)
    assert per_second(reads)[1] == 16 and per_second(reads)[2] == 16


def test_burst_runs_at_max_then_settles_at_avg() -> None:
    """bps 1 MiB/s, bps-max 4 MiB/s for 2 s: 64 req/s (64 KiB) while the 8 MiB burst lasts, then 16/s.

    The burst bucket (max/10 = 409.6 KiB) lets 7 requests through at t=0; the main bucket
    fills at 4 - 1 = 3 MiB/s net, so the burst ends after about 8/3 s.
    """
    clock, _, member = drive(
        {
            "throttling.bps-total": str(1 << 20),
            "throttling.bps-total-max": str(4 << 20),
            "throttling.bps-total-max-length": "2",
        }
    )
    times = submit_many(clock, member, 600, 64 << 10)
    clock.step(6 * S)
    assert times[:7] == [0] * 7 and times[7] > 0
    counts = per_second(times)
    assert counts[0] == 71 and counts[1] == 64
    assert 16 < counts[2] < 64  # the switch to the average rate happens in this second
    assert counts[3] == counts[4] == counts[5] == 16
    # Over the whole run no more than avg * t + the 8 MiB burst allowance went through.
    done_by_5s = sum(1 for t in times if t < 5 * S)
    assert done_by_5s * (64 << 10) <= 5 * (1 << 20) + 8 * (1 << 20) + (64 << 10) * 8


def test_iops_size_counts_a_64k_request_as_16_ops() -> None:
    clock, _, member = drive({"throttling.iops-total": "100", "throttling.iops-size": "4096"})
    times = submit_many(clock, member, 40, 64 << 10)
    clock.step(4 * S)
    # 16 units each: the first fills the 10-op bucket to 16 (6 over: 60 ms), then 160 ms apart.
    assert times[:4] == [0, 60 * MS, 220 * MS, 380 * MS]
    assert times == [0] + [60 * MS + k * 160 * MS for k in range(25)]  # 6.25 requests/s


def test_small_requests_count_one_op_with_iops_size() -> None:
    clock, _, member = drive({"throttling.iops-total": "100", "throttling.iops-size": "4096"})
    times = submit_many(clock, member, 300, 512)
    clock.step(2 * S)
    assert per_second(times)[1] == 100


def test_separate_read_and_write_limits_run_side_by_side() -> None:
    clock, _, member = drive({"throttling.iops-read": "10", "throttling.iops-write": "100"})
    reads = submit_many(clock, member, 50, 4096)
    writes = submit_many(clock, member, 400, 4096, write=True)
    clock.step(3 * S)
    assert per_second(reads)[1] == 10 and per_second(reads)[2] == 10
    assert per_second(writes)[1] == 100 and per_second(writes)[2] == 100


def test_total_limit_is_shared_by_reads_and_writes() -> None:
    clock, _, member = drive({"throttling.iops-total": "100"})
    reads = submit_many(clock, member, 400, 4096)
    writes = submit_many(clock, member, 400, 4096, write=True)
    clock.step(4 * S)
    both = per_second(reads + writes)
    for s in (1, 2, 3):
        assert abs(both[s] - 100) <= 1


def test_fifo_per_member_and_direction() -> None:
    clock, _, member = drive({"throttling.iops-total": "100"})
    order: list[int] = []
    for i in range(40):
        member.submit(False, 4096, lambda i=i: order.append(i))
    clock.step(S)
    assert order == list(range(40))


def test_group_members_share_one_limit_round_robin() -> None:
    clock = VirtualClock()
    groups = ThrottleGroups(clock)
    a, b = ThrottleGroupMember("a"), ThrottleGroupMember("b")
    cfg = ThrottleConfig.from_drive_options({"throttling.iops-total": "100", "throttling.group": "g"})
    groups.attach_drive(a, cfg, "a")
    groups.attach_drive(b, cfg, "b")
    assert a.group is b.group and a.group is not None and a.group.name == "g"
    ta = submit_many(clock, a, 300, 4096)
    tb = submit_many(clock, b, 300, 4096)
    clock.step(3 * S)
    both = per_second(ta + tb)
    assert both[1] == 100 and both[2] == 100
    # QEMU's round robin: while both wait, they alternate.
    assert per_second(ta)[1] == 50 and per_second(tb)[1] == 50
    assert b.query_info()["group"] == "g" and b.query_info()["iops"] == 100


def test_later_drive_in_group_overrides_config_for_all() -> None:
    clock = VirtualClock()
    groups = ThrottleGroups(clock)
    a, b = ThrottleGroupMember("a"), ThrottleGroupMember("b")
    groups.attach_drive(a, ThrottleConfig.from_drive_options({"iops": "100", "group": "g"}), "a")
    groups.attach_drive(b, ThrottleConfig.from_drive_options({"iops": "50", "group": "g"}), "b")
    assert a.query_info()["iops"] == 50


def test_qmp_set_io_throttle_group_semantics() -> None:
    clock = VirtualClock()
    groups = ThrottleGroups(clock)
    a, b = ThrottleGroupMember("a"), ThrottleGroupMember("b")
    base = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}
    groups.set_io_throttle(a, ThrottleConfig.from_qmp(base | {"iops": 10}), "a")
    assert a.query_info()["group"] == "a"  # default group: the device name
    groups.set_io_throttle(b, ThrottleConfig.from_qmp(base | {"iops": 20, "group": "a"}), "b")
    assert a.query_info()["iops"] == 20  # applied to the whole group
    groups.set_io_throttle(a, ThrottleConfig.from_qmp(base | {"iops": 30}), "a")  # no group: stays
    assert b.query_info()["iops"] == 30
    groups.set_io_throttle(a, ThrottleConfig.from_qmp(base | {"iops": 40, "group": "new"}), "a")
    assert a.query_info()["group"] == "new" and b.query_info() == base | {"iops": 30, "group": "a"}
    groups.set_io_throttle(b, ThrottleConfig.from_qmp(base), "b")  # all zero: throttling off
    assert b.group is None and b.query_info() == base
    assert groups.names() == ["new"]


def test_disabling_limits_releases_queued_requests() -> None:
    clock, groups, member = drive({"throttling.iops-total": "10"})
    times = submit_many(clock, member, 20, 4096)
    assert len(times) == 2
    base = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}
    groups.set_io_throttle(member, ThrottleConfig.from_qmp(base), "d0")
    assert len(times) == 20 and member.pending(False) == 0
    clock.step(S)  # the cancelled timer must not fire anything
    assert len(times) == 20


def test_reconfigure_applies_new_rate() -> None:
    clock, groups, member = drive({"throttling.iops-total": "10"})
    times = submit_many(clock, member, 400, 4096)
    clock.step(S)
    base = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}
    groups.set_io_throttle(member, ThrottleConfig.from_qmp(base | {"iops": 100}), "d0")
    clock.step(3 * S)
    counts = per_second(times)
    assert counts[2] == 100 and counts[3] == 100


def test_start_callback_may_submit_more() -> None:
    """A device that submits its next request from the completion of the previous one."""
    clock, _, member = drive({"throttling.iops-total": "1000"})
    times: list[int] = []

    def start() -> None:
        times.append(clock.now_ns())
        if len(times) < 3000:
            member.submit(False, 512, start)

    member.submit(False, 512, start)
    clock.step(3 * S)
    assert len(times) == 3000
    assert abs(per_second(times)[1] - 1000) <= 1


@pytest.mark.parametrize("iops", [50, 200])
def test_realtime_clock_rate(iops: int) -> None:
    clock = RealtimeClock()
    try:
        groups = ThrottleGroups(clock)
        member = ThrottleGroupMember("d0")
        groups.attach_drive(member, ThrottleConfig.from_drive_options({"throttling.iops-total": str(iops)}), "d0")
        n = iops // 10 + 1 + iops // 5  # the burst, then 200 ms worth
        done = threading.Event()
        times: list[int] = []

        def start() -> None:
            times.append(clock.now_ns())
            if len(times) == n:
                done.set()

        t0 = time.monotonic()
        for _ in range(n):
            member.submit(True, 4096, start)
        assert done.wait(5)
        elapsed = time.monotonic() - t0
        assert 0.19 <= elapsed < 0.6
    finally:
        clock.close()


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None


if given is not None:

    @settings(max_examples=60, deadline=None)
    @given(
        avg=st.integers(min_value=1 << 16, max_value=1 << 22),
        requests=st.lists(
            st.tuples(st.booleans(), st.integers(min_value=512, max_value=256 << 10), st.integers(0, 300)),
            min_size=1,
            max_size=60,
        ),
    )
    def test_bytes_never_exceed_limit_and_all_complete(avg: int, requests: list[tuple[bool, int, int]]) -> None:
        """Whatever the mix, bytes started by time t stay within avg * t + the bucket + two requests
        (one per direction can be released by a timer without a second check), and everything
        submitted completes once enough time has passed."""
        clock, _, member = drive({"throttling.bps-total": str(avg)})
        started: list[tuple[int, int]] = []
        for is_write, size, gap_ms in requests:
            clock.step(gap_ms * MS)
            member.submit(is_write, size, lambda size=size: started.append((clock.now_ns(), size)))
        total = sum(size for _, size, _ in requests)
        clock.step((total // avg + 2) * S)
        assert len(started) == len(requests)
        biggest = max(size for _, size, _ in requests)
        poured = 0
        for t, size in sorted(started):
            poured += size
            assert poured <= avg * t / S + avg / 10 + 2 * biggest + 1

"""Golden numbers of QEMU's ``tests/unit/test-throttle.c``, checked against refvm's throttle maths.

Facts only (inputs and expected outputs), rewritten as Python tests; each test names the
QEMU test function (and its GTest path) the numbers come from:

* ``test_leak_bucket`` (/throttle/leak_bucket): avg 150, max 15, level 1.5 leaks 1 unit per
  1e9/150 ns -> 0.5, 0, 0; burst_level 6 with max 250, burst_length 2 leaks 2.5 per 1e9/100 ns
  -> 3.5, 1, 0, 0.
* ``test_compute_wait`` (/throttle/compute_wait): no avg -> 0; level == max -> 0; level 9 -> 0;
  level 15.5 (half an op over max 15 at avg 150) -> 1e9/150/2 ns; I/O at max=200 (avg 10,
  burst_length 2) in 22 steps of 0.1 s: burst_level stays 0, level grows by 19 per step, no
  wait for 21 steps, then 1.8 s.
* ``test_init`` (/throttle/init): a fresh state has previous_leak 0, op_size 0, all limits 0.
* ``test_config_functions`` (/throttle/config_functions): limits 153/56/1/150/69/23 (avg),
  0/56/120/150/400/500 (max), op_size 1 come back unchanged, levels zeroed, previous_leak set.
  Older QEMU's version of that test (before throttle_fix_bucket() was folded into
  throttle_compute_wait()) expected BPS_TOTAL's max 0 to be "fixed" to avg/10 = 15.3:
  ported as the implicit burst allowance of a bucket without max (``test_fix_bucket_*``).
* ``test_enabled`` (/throttle/config/enabled): each bucket with avg 150 valid and enabled,
  avg -150 invalid; an empty config not enabled.
* ``test_conflicting_config`` (/throttle/config/conflicting): total with read and/or write
  invalid (avg and max, bps and iops); total alone or read + write valid.
* ``test_is_valid`` (/throttle/config/is_valid): -1 invalid, 0 and 1 valid, as avg or as max
  (with avg raised to at least 1), for every bucket.
* ``test_ranges`` (/throttle/config/ranges): THROTTLE_VALUE_MAX (1e15) allowed, +1 not, for
  avg and max; burst_length 0 and MAX+1 invalid, 1 and MAX valid; max * burst_length <= MAX
  (2 * MAX/2 valid, 3 * MAX/2 not; MAX * 1 valid, MAX * 2 not).
* ``test_max_is_missing_limit`` (/throttle/config/max): (max, avg) = (100, 0) invalid,
  (0, 0) valid, (0, 100) valid, (30, 100) invalid, (100, 100) valid.
* ``test_iops_size_is_missing_limit`` (/throttle/config/iops_size): op_size 4096 alone invalid.
* ``test_accounting`` (/throttle/accounting): a read and a write of 512 B / 1024 B at avg 150
  give bps levels 1024/512/512 and 2048/1024/1024 (op_size 0 or 17 alike), ops levels 2/1/1;
  64*512 B with op_size 13*512 gives 128/13, 64/13, 64/13 ops (avg 150 or 300 alike).
* ``test_groups`` (/throttle/groups): members registered as "bar", "foo", "bar": the two
  "bar" members share one state; a config of 500000/285000/20000/12000 (bps_rd, bps_wr,
  iops_rd, iops_wr) set through one is what the other reads; unregistering clears them.

Comparisons of doubles use QEMU's tolerance (``double_cmp``: |x - y| < 1e-6). The error texts
asserted next to validity are QEMU 7.2's (observed from ``qemu-system-x86_64`` 7.2 with
``-drive throttling.*`` and QMP ``block_set_io_throttle``).
"""

from __future__ import annotations

import pytest

from refvm.block.throttle import (
    NANOSECONDS_PER_SECOND,
    THROTTLE_VALUE_MAX,
    BucketType,
    LeakyBucket,
    ThrottleState,
    compute_wait,
    leak_bucket,
)
from refvm.block.throttle_config import ThrottleConfig, ThrottleConfigError
from refvm.block.throttle_group import ThrottleGroupMember, ThrottleGroups
from refvm.clock import VirtualClock

NS = NANOSECONDS_PER_SECOND
MAX = THROTTLE_VALUE_MAX
ALL = list(BucketType)


def close(x: float, y: float) -> bool:
    """QEMU's double_cmp()."""
    return abs(x - y) < 1e-6


def message(cfg: ThrottleConfig) -> str | None:
    try:
        cfg.validate()
    except ThrottleConfigError as e:
        return str(e)
    return None


# --- /throttle/leak_bucket ------------------------------------------------------------------


def test_leak_bucket() -> None:
    bkt = LeakyBucket(avg=150, max=15, level=1.5)
    for expected in (0.5, 0.0, 0.0):
        leak_bucket(bkt, NS // 150)
        assert (bkt.avg, bkt.max) == (150, 15)
        assert close(bkt.level, expected)

    bkt.burst_level = 6
    bkt.max = 250
    bkt.burst_length = 2  # otherwise burst_level is not leaked
    for expected in (3.5, 1.0, 0.0, 0.0):
        leak_bucket(bkt, NS // 100)
        assert close(bkt.burst_level, expected)


# --- /throttle/compute_wait -----------------------------------------------------------------


def test_compute_wait_simple_cases() -> None:
    assert compute_wait(LeakyBucket(avg=0, max=15, level=1.5)) == 0  # no limit set
    assert compute_wait(LeakyBucket(avg=150, max=15, level=15)) == 0  # zero delta
    assert compute_wait(LeakyBucket(avg=150, max=15, level=9)) == 0  # below zero delta
    # half an operation above max: the time of half an operation
    assert compute_wait(LeakyBucket(avg=150, max=15, level=15.5)) == NS // 150 // 2


def test_compute_wait_burst_for_two_seconds() -> None:
    bkt = LeakyBucket(avg=10, max=200, level=0, burst_length=2)
    for i in range(22):
        units = bkt.max / 10
        bkt.level += units
        bkt.burst_level += units
        leak_bucket(bkt, NS // 10)
        wait = compute_wait(bkt)
        assert close(bkt.burst_level, 0)
        assert close(bkt.level, (i + 1) * (bkt.max - bkt.avg) / 10)
        # 2 s of burst plus 100 ms gained while the level leaked; then 1.8 s to wait
        assert wait == (0 if i < 21 else int(1.8 * NS))


# --- /throttle/init and /throttle/config_functions ------------------------------------------


def test_init() -> None:
    ts = ThrottleState()
    assert ts.previous_leak == 0
    assert ts.cfg.op_size == 0
    for bkt in ts.cfg.buckets:
        assert (bkt.avg, bkt.max, bkt.level) == (0, 0, 0)
        assert bkt.burst_length == 1


def test_config_functions() -> None:
    T = BucketType
    orig = ThrottleConfig()
    avg = {T.BPS_TOTAL: 153, T.BPS_READ: 56, T.BPS_WRITE: 1, T.OPS_TOTAL: 150, T.OPS_READ: 69, T.OPS_WRITE: 23}
    mx = {T.BPS_TOTAL: 0, T.BPS_READ: 56, T.BPS_WRITE: 120, T.OPS_TOTAL: 150, T.OPS_READ: 400, T.OPS_WRITE: 500}
    level = {T.BPS_TOTAL: 45, T.BPS_READ: 65, T.BPS_WRITE: 23, T.OPS_TOTAL: 1, T.OPS_READ: 90, T.OPS_WRITE: 75}
    for t in T:
        orig.buckets[t].avg, orig.buckets[t].max, orig.buckets[t].level = avg[t], mx[t], level[t]
    orig.op_size = 1

    ts = ThrottleState()
    assert ts.previous_leak == 0
    ts.configure(orig, now_ns=123_456_789)  # QEMU reads its virtual clock here
    assert ts.previous_leak == 123_456_789
    final = ts.get_config()
    for t in T:
        assert final.buckets[t].avg == avg[t]
        assert final.buckets[t].max == mx[t]
        assert final.buckets[t].level == 0
    assert final.op_size == 1


def test_fix_bucket_implicit_burst_is_a_tenth_of_avg() -> None:
    """Old test_config_functions: max 0 with avg 153 was fixed to 15.3 (throttle_fix_bucket)."""
    assert compute_wait(LeakyBucket(avg=153, max=0, level=15.3)) == 0
    # One unit over the 15.3 allowance drains at avg: 1/153 s.
    assert compute_wait(LeakyBucket(avg=153, max=0, level=16.3)) == int(1.0 * NS / 153)
    # ... while an explicit max is used as is (the old test's "not fixed" bucket).
    assert compute_wait(LeakyBucket(avg=56, max=56, level=56)) == 0
    assert compute_wait(LeakyBucket(avg=56, max=56, level=57)) == int(1.0 * NS / 56)


def test_fix_bucket_levels_zeroed_on_configure() -> None:
    """throttle_fix_bucket() / throttle_config(): configuring zeroes level and burst_level."""
    cfg = ThrottleConfig()
    cfg.buckets[BucketType.OPS_TOTAL] = LeakyBucket(avg=10, max=20, level=7, burst_length=2, burst_level=3)
    ts = ThrottleState(cfg, now_ns=5)
    bkt = ts.cfg.buckets[BucketType.OPS_TOTAL]
    assert (bkt.level, bkt.burst_level, bkt.avg, bkt.max, bkt.burst_length) == (0, 0, 10, 20, 2)


# --- /throttle/config/* ---------------------------------------------------------------------


def set_cfg_value(cfg: ThrottleConfig, is_max: bool, index: int, value: int) -> None:
    """test-throttle.c's helper: setting max also raises avg to at least 1."""
    if is_max:
        cfg.buckets[index].max = value
        cfg.buckets[index].avg = max(cfg.buckets[index].avg, 1)
    else:
        cfg.buckets[index].avg = value


def test_enabled() -> None:
    assert not ThrottleConfig().enabled()
    for i in ALL:
        cfg = ThrottleConfig()
        set_cfg_value(cfg, False, i, 150)
        assert cfg.is_valid() and cfg.enabled()
    for i in ALL:
        cfg = ThrottleConfig()
        set_cfg_value(cfg, False, i, -150)
        assert not cfg.is_valid()
        assert message(cfg) == "bps/iops/max values must be within [0, 1000000000000000]"


CONFLICT = "bps/iops/max total values and read/write values cannot be used at the same time"


@pytest.mark.parametrize("is_max", [False, True], ids=["avg", "max"])
@pytest.mark.parametrize(
    "total,read,write",
    [
        (BucketType.BPS_TOTAL, BucketType.BPS_READ, BucketType.BPS_WRITE),
        (BucketType.OPS_TOTAL, BucketType.OPS_READ, BucketType.OPS_WRITE),
    ],
    ids=["bps", "ops"],
)
def test_conflicting_config(is_max: bool, total: int, read: int, write: int) -> None:
    assert ThrottleConfig().is_valid()
    for combo, valid in (
        ((total, read), False),
        ((total, write), False),
        ((total, read, write), False),
        ((total,), True),
        ((read, write), True),
    ):
        cfg = ThrottleConfig()
        for index in combo:
            set_cfg_value(cfg, is_max, index, 1)
        assert cfg.is_valid() == valid, combo
        if not valid:
            assert message(cfg) == CONFLICT


@pytest.mark.parametrize("value,valid", [(-1, False), (0, True), (1, True)])
def test_is_valid(value: int, valid: bool) -> None:
    for is_max in (False, True):
        for index in ALL:
            cfg = ThrottleConfig()
            set_cfg_value(cfg, is_max, index, value)
            assert cfg.is_valid() == valid


@pytest.mark.parametrize("i", ALL, ids=[t.name for t in ALL])
def test_ranges(i: BucketType) -> None:
    cfg = ThrottleConfig()
    b = cfg.buckets[i]

    b.avg = 0  # disabled, but valid
    assert cfg.is_valid() and not cfg.enabled()

    b.avg = 1
    assert cfg.is_valid()
    b.avg = MAX
    assert cfg.is_valid()
    b.avg, b.max = MAX, MAX
    assert cfg.is_valid()

    b.avg = MAX + 1
    assert message(cfg) == "bps/iops/max values must be within [0, 1000000000000000]"
    b.avg, b.max = MAX, MAX + 1
    assert message(cfg) == "bps/iops/max values must be within [0, 1000000000000000]"

    def ranged(avg: int, mx: int, length: int) -> str | None:
        b.avg, b.max, b.burst_length = avg, mx, length
        return message(cfg)

    assert ranged(1, 1, 0) == "the burst length cannot be 0"
    assert ranged(1, 1, 1) is None
    assert ranged(1, 1, MAX) is None
    assert ranged(1, 1, MAX + 1) == "burst length too high for this burst rate"

    assert ranged(1, 2, MAX // 2) is None
    assert ranged(1, 3, MAX // 2) == "burst length too high for this burst rate"
    assert ranged(1, MAX, 1) is None
    assert ranged(1, MAX, 2) == "burst length too high for this burst rate"


@pytest.mark.parametrize("i", ALL, ids=[t.name for t in ALL])
def test_max_is_missing_limit(i: BucketType) -> None:
    cfg = ThrottleConfig()
    for mx, avg, expected in (
        (100, 0, "bps_max/iops_max require corresponding bps/iops values"),
        (0, 0, None),
        (0, 100, None),
        (30, 100, "bps_max/iops_max cannot be lower than bps/iops"),
        (100, 100, None),
    ):
        cfg.buckets[i].max, cfg.buckets[i].avg = mx, avg
        assert message(cfg) == expected


def test_iops_size_is_missing_limit() -> None:
    cfg = ThrottleConfig(op_size=4096)
    assert message(cfg) == "iops size requires an iops value to be set"


# --- /throttle/accounting -------------------------------------------------------------------

BPS = (BucketType.BPS_TOTAL, BucketType.BPS_READ, BucketType.BPS_WRITE)
OPS = (BucketType.OPS_TOTAL, BucketType.OPS_READ, BucketType.OPS_WRITE)


@pytest.mark.parametrize(
    "is_ops,size,avg,op_size,total,read,write",
    [
        (False, 1 * 512, 150, 0, 1024, 512, 512),  # op of size 1
        (False, 2 * 512, 150, 0, 2048, 1024, 1024),  # op of size 2
        (False, 2 * 512, 150, 17, 2048, 1024, 1024),  # op of size 2, orthogonal op_size
        (True, 1 * 512, 150, 0, 2, 1, 1),
        (True, 2 * 512, 150, 0, 2, 1, 1),
        (True, 64 * 512, 150, 13 * 512, 64.0 * 2 / 13, 64.0 / 13, 64.0 / 13),  # jumbo op fragmentation
        (True, 64 * 512, 300, 13 * 512, 64.0 * 2 / 13, 64.0 / 13, 64.0 / 13),  # same, orthogonal avg
    ],
)
def test_accounting(is_ops: bool, size: int, avg: float, op_size: int, total: float, read: float, write: float) -> None:
    kinds = OPS if is_ops else BPS
    cfg = ThrottleConfig(op_size=op_size)
    for index in kinds:
        cfg.buckets[index].avg = avg
    ts = ThrottleState(cfg)
    ts.account(False, size)  # a read
    ts.account(True, size)  # a write
    levels = [ts.cfg.buckets[index].level for index in kinds]
    assert close(levels[0], total) and close(levels[1], read) and close(levels[2], write)


# --- /throttle/groups -----------------------------------------------------------------------


def test_groups() -> None:
    groups = ThrottleGroups(VirtualClock())
    tgm1, tgm2, tgm3 = ThrottleGroupMember("blk1"), ThrottleGroupMember("blk2"), ThrottleGroupMember("blk3")
    assert tgm1.group is None and tgm2.group is None and tgm3.group is None

    groups.enable(tgm1, "bar")
    groups.enable(tgm2, "foo")
    groups.enable(tgm3, "bar")
    assert tgm1.group is not None and tgm2.group is not None and tgm3.group is not None
    assert tgm1.group.name == "bar" and tgm2.group.name == "foo"
    assert tgm1.group is tgm3.group and tgm1.group.state is tgm3.group.state

    # Setting the config of a group member affects the whole group.
    cfg1 = ThrottleConfig()
    cfg1.buckets[BucketType.BPS_READ].avg = 500000
    cfg1.buckets[BucketType.BPS_WRITE].avg = 285000
    cfg1.buckets[BucketType.OPS_READ].avg = 20000
    cfg1.buckets[BucketType.OPS_WRITE].avg = 12000
    tgm1.group.configure(cfg1, via=tgm1)
    got1, got3 = tgm1.group.config, tgm3.group.config
    assert got1.limits_equal(got3) and got1.limits_equal(cfg1)

    # QEMU then sets cfg1 (not the edited cfg2) through the third member: still one config.
    cfg2 = got3.copy()
    cfg2.buckets[BucketType.BPS_READ].avg = 4547
    cfg2.buckets[BucketType.BPS_WRITE].avg = 1349
    cfg2.buckets[BucketType.OPS_READ].avg = 123
    cfg2.buckets[BucketType.OPS_WRITE].avg = 86
    tgm3.group.configure(got1, via=tgm3)
    assert tgm1.group.config.limits_equal(tgm3.group.config)
    assert tgm1.group.config.limits_equal(cfg1)

    for m in (tgm1, tgm2, tgm3):
        groups.disable(m)
    assert tgm1.group is None and tgm2.group is None and tgm3.group is None
    assert groups.names() == []

"""Throttle limits over QMP: `query-block` reports them, `block_set_io_throttle` changes them at run time.

Names and shapes as QEMU 7.2's QAPI (BlockDeviceInfo's bps/bps_rd/.../iops_wr/group; BlockIOThrottle with
`id` = the device's qdev path as query-block reports it, DESIGN.md §3), through the qemu.qmp library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from qemu.qmp import ExecuteError

from conformance.block.conftest import clause
from conformance.block.throttle.conftest import WARMUP, WINDOW, ThrottleRig, throttle_opts
from conformance.block.throttle.load import T_IN, assert_rate, rate, window

LIMIT_KEYS = ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")


def _inserted(r: ThrottleRig, device: str = "d0") -> dict[str, Any]:
    assert r.vm.qmp is not None
    for entry in r.vm.qmp.execute("query-block"):
        if entry.get("device") == device:
            assert "inserted" in entry, f"query-block: {device} has no medium: {entry}"
            return {**entry["inserted"], "qdev": entry.get("qdev")}
    raise AssertionError(f"query-block has no device {device}")


def _set_throttle(r: ThrottleRig, qdev: str, **limits: int) -> None:
    assert r.vm.qmp is not None
    args = {k: limits.get(k, 0) for k in LIMIT_KEYS} | {k: v for k, v in limits.items() if k not in LIMIT_KEYS}
    try:
        r.vm.qmp.execute("block_set_io_throttle", id=qdev, **args)
    except ExecuteError as err:
        if err.error_class == "CommandNotFound":
            pytest.skip(f"target's QMP lacks block_set_io_throttle: {err}")
        raise


@clause("throttle/query-block")
def test_query_block_reports_configured_limits(rig: Callable[..., ThrottleRig]) -> None:
    r = rig(throttle_opts(bps_read=1 << 20, bps_write=512 << 10, iops_total=300, iops_total_max=600,
                          iops_size=8192), qmp=True)  # fmt: skip
    info = _inserted(r)
    expected = {"bps": 0, "bps_rd": 1 << 20, "bps_wr": 512 << 10, "iops": 300, "iops_rd": 0, "iops_wr": 0,
                "iops_max": 600, "iops_size": 8192}  # fmt: skip
    got = {k: info.get(k) for k in expected}
    assert got == expected, f"query-block limits: {got}"
    assert info.get("group") == "d0", "a drive without throttling.group is in a group named after the drive"


@clause("throttle/qmp-set")
def test_block_set_io_throttle_changes_rate_at_run_time(rig: Callable[..., ThrottleRig]) -> None:
    """While requests are in flight at iops-total=150, block_set_io_throttle sets iops=25: query-block
    shows the new limits and the measured rate follows them."""
    r = rig(throttle_opts(iops_total=150), qmp=True)
    qdev = _inserted(r)["qdev"]
    assert qdev, "query-block reports no qdev path for the drive's device"
    r.stream("read", T_IN, 4096, depth=2)
    r.load.run(0.4)
    _set_throttle(r, qdev, iops=25)
    info = _inserted(r)
    assert {k: info.get(k) for k in LIMIT_KEYS} == {k: 25 if k == "iops" else 0 for k in LIMIT_KEYS}
    events = r.load.run(WARMUP + WINDOW)
    t0 = events[0].t if events else 0.0
    assert_rate(rate(window(events, t0 + WARMUP)), 25, "iops=25 set with block_set_io_throttle")


@clause("throttle/validation")
def test_block_set_io_throttle_validates(rig: Callable[..., ThrottleRig]) -> None:
    """The same rule and message as -drive: total and read/write limits cannot be combined."""
    r = rig(throttle_opts(iops_total=100), qmp=True)
    qdev = _inserted(r)["qdev"]
    with pytest.raises(ExecuteError) as err:
        _set_throttle(r, qdev, bps=1000, bps_rd=100)
    assert "bps/iops/max total values and read/write values cannot be used at the same time" in str(err.value)
    assert _inserted(r)["iops"] == 100, "a refused block_set_io_throttle changed the limits"

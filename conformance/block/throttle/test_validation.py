"""Bad `-drive throttling.*` combinations: the target refuses to start and says why in QEMU's words.

The messages are QEMU 7.2's (util/throttle.c's throttle_is_valid and the -drive parser), matched as the
tail of the target's error line, so a management tool scraping either target's stderr sees the same text.
A target that refuses a *valid* throttled drive lacks throttling altogether: the test skips (capability
probe), since a refusal would then prove nothing about validation.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conformance.block.conftest import clause, drive_args
from conformance.block.throttle.conftest import throttle_opts
from conformance.drivers.qtest import QtestSession, QtestStartError
from conformance.targets import Target

TOTAL_AND_RW = "bps/iops/max total values and read/write values cannot be used at the same time"
BAD = [
    pytest.param(throttle_opts(bps_total=1000, bps_read=100), TOTAL_AND_RW, id="bps-total+bps-read"),
    pytest.param(throttle_opts(iops_total=100, iops_write=5), TOTAL_AND_RW, id="iops-total+iops-write"),
    pytest.param(throttle_opts(iops_total=100, iops_total_max=50), "bps_max/iops_max cannot be lower than bps/iops",
                 id="max-below-avg"),
    pytest.param(throttle_opts(iops_total=-5), "bps/iops/max values must be within [0, 1000000000000000]",
                 id="negative"),
    pytest.param(throttle_opts(bps_total_max=100), "bps_max/iops_max require corresponding bps/iops values",
                 id="max-without-avg"),
    pytest.param(throttle_opts(iops_total=10, iops_total_max=20, iops_total_max_length=0),
                 "the burst length cannot be 0", id="zero-burst-length"),
    pytest.param(throttle_opts(iops_size=4096), "iops size requires an iops value to be set", id="iops-size-alone"),
]  # fmt: skip

_probe: dict[str, str] = {}


def _start(target: Target, args: list[str]) -> QtestSession:
    return QtestSession(name=target.name).start(target, args)


@pytest.fixture
def throttled_drive_supported(target: Target, raw_image: Callable[..., str]) -> None:
    """Skip unless the target starts with a valid throttled drive (checked once per target)."""
    if target.name not in _probe:
        args = drive_args(raw_image(1 << 20, "probe"), drive_opts=throttle_opts(iops_total=100))
        try:
            _start(target, args).close()
            _probe[target.name] = ""
        except QtestStartError as err:
            if not err.exited:
                raise
            _probe[target.name] = f"target refuses a valid throttled drive: {err.stderr_line}"
    if _probe[target.name]:
        pytest.skip(_probe[target.name])


@clause("throttle/validation")
@pytest.mark.parametrize(("opts", "message"), BAD)
def test_bad_limits_refused(
    target: Target, raw_image: Callable[..., str], throttled_drive_supported: None, opts: list[str], message: str
) -> None:
    args = drive_args(raw_image(1 << 20, "bad"), drive_opts=opts)
    try:
        session = _start(target, args)
    except QtestStartError as err:
        assert err.exited, f"target neither started nor exited: {err}"
        lines = [ln.strip() for ln in str(err).splitlines() if message in ln]
        assert lines, f"target refused {','.join(opts)} without QEMU's message '{message}':\n{err}"
        assert lines[0].endswith(message), f"QEMU's message should end the line: {lines[0]!r}"
        return
    session.close()
    pytest.fail(f"target started with invalid throttling options {','.join(opts)}")

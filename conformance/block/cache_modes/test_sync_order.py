"""Host system calls behind guest writes and flushes, in order, with strace attached to the target.

Every traced write and data sync is held DELAY seconds after it returns (host.py), so "the request
completed after the sync" is a plain comparison of timestamps: completion seen at `t_done` means it waited
for a sync that entered at `ts` exactly when `ts + DELAY <= t_done`.

Expectations (qemu-options `-drive cache=`; VIRTIO 1.2 §5.2.6 'Device Operation' for when a write must be
stable):
- write-syncs: every guest write is followed by a data sync of the image before it completes (cache
  .writeback=off, or a guest that negotiated neither FLUSH nor CONFIG_WCE, or set `writeback` to 0). A
  target that opened the image O_DSYNC makes the write itself the sync: also accepted.
- flush-syncs: writes complete with no sync; a guest FLUSH completes only after a data sync.
- never-syncs: cache.no-flush (unsafe): neither writes nor flushes lead to a sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from conformance.block.cache_modes.conftest import FLUSH, WCE, CacheVm
from conformance.block.cache_modes.host import ASYNC, SYNCS, WRITES, StraceError, Syscall, SyscallTrace, image_fds
from conformance.block.conftest import clause
from conformance.drivers.virtqueue import Virtqueue
from conformance.targets import Target
from conformance.verdicts import expect as clause_expect
from conformance.verdicts import known
from conformance.virtio.devices import BLK_WRITEBACK, S_OK, T_FLUSH, T_OUT, blk_header
from conformance.virtio.known import WRITETHROUGH_FLUSH_WITHOUT_CONFIG_WCE

#: (mode, negotiated features, value the driver writes to `writeback` or None, expectation, clause)
CASES = [
    ("writeback", WCE | FLUSH, None, "flush-syncs", "cache/writeback-flush"),
    ("none", WCE | FLUSH, None, "flush-syncs", "cache/writeback-flush"),
    ("writethrough", WCE | FLUSH, None, "write-syncs", "cache/write-through"),
    ("directsync", WCE | FLUSH, None, "write-syncs", "cache/write-through"),
    ("unsafe", WCE | FLUSH, None, "never-syncs", "cache/no-flush"),
    ("writeback", 0, None, "write-syncs", "cache/stable-without-flush"),
    ("none", 0, None, "write-syncs", "cache/stable-without-flush"),
    ("unsafe", 0, None, "never-syncs", "cache/no-flush"),
    ("writeback", WCE | FLUSH, 0, "write-syncs", "cache/wce-toggle"),
    ("writethrough", WCE | FLUSH, 1, "flush-syncs", "cache/wce-toggle"),
    ("writethrough", FLUSH, None, "write-syncs", "cache/write-through"),
]
_NEG = {WCE | FLUSH: "wce+flush", FLUSH: "flush-only", 0: "neither"}


def _case_id(case: tuple) -> str:
    mode, feats, toggle, expect, _ = case
    return f"{mode}-{_NEG[feats]}" + ("" if toggle is None else f"-set-wce{toggle}") + f"-{expect}"


def _request(vq: Virtqueue, out: list[bytes]) -> float:
    """Post one request, wait for it in the used ring, return the wall time at which it was seen."""
    c = vq.transact(out, [1], timeout=10)
    done = time.time()
    assert c.data[-1][0] == S_OK, f"request status {c.data[-1][0]}"
    return done


def _describe(calls: list[Syscall]) -> str:
    return "\n".join(f"  tid {c.tid} {c.ts:.6f} {c.name}(fd={c.fd})" for c in calls) or "  (none)"


@pytest.mark.parametrize("case", [pytest.param(c, marks=clause(c[4]), id=_case_id(c)) for c in CASES])
def test_sync_order(
    cache_vm: Callable[[str], CacheVm], case: tuple, target: Target, request: pytest.FixtureRequest
) -> None:
    mode, feats, toggle, expect, _ = case
    if (mode, feats) == ("writethrough", FLUSH):
        known(request, target, WRITETHROUGH_FLUSH_WITHOUT_CONFIG_WCE)
    cvm = cache_vm(mode)
    dev, vq = cvm.vm.ready(want=feats, drop=(WCE | FLUSH) & ~feats)
    assert dev.features & (WCE | FLUSH) == feats, f"negotiation gave {dev.features:#x}"
    if toggle is not None:
        dev.config_write(BLK_WRITEBACK, 1, toggle)
        assert dev.config_read(BLK_WRITEBACK, 1) == toggle
    # Warm up the data path (a target may open or reopen the image lazily), then find its descriptors.
    _request(vq, [blk_header(T_OUT, 64), b"0" * 4096])
    fds = image_fds(cvm.vm.pid, cvm.image)
    assert fds, f"no descriptor of pid {cvm.vm.pid} refers to {cvm.image}"
    fdset = {f.fd for f in fds}
    dsync = all(f.dsync for f in fds)

    try:
        trace = SyscallTrace(cvm.vm.pid).__enter__()
    except StraceError as err:
        pytest.fail(f"cannot observe host syscalls: {err}")
    try:
        t_start = time.time()
        t_write = _request(vq, [blk_header(T_OUT, 8), b"d" * 4096])
        t_flush = _request(vq, [blk_header(T_FLUSH)]) if feats & FLUSH else None
        time.sleep(0.05)  # let strace write out the last lines
        calls = [c for c in trace.calls() if c.ts >= t_start - 0.001]
    finally:
        trace.__exit__()
    mine = [c for c in calls if c.fd in fdset]
    writes = [c for c in mine if c.name in WRITES]
    syncs = [c for c in mine if c.name in SYNCS]
    log = f"image fds {sorted(fdset)}; traced calls:\n{_describe(calls)}"
    if not writes and any(c.name in ASYNC for c in calls):
        pytest.fail(f"the write went through AIO/io_uring submissions, which this test cannot attribute\n{log}")
    assert writes, f"cache={mode}: no write on the image's descriptors\n{log}"
    first_write = writes[0]
    assert first_write.ts + trace.delay <= t_write + 0.01, (
        f"cache={mode}: the guest write completed before the host write returned\n{log}"
    )
    syncs_for_write = [s for s in syncs if first_write.ts <= s.ts and s.ts + trace.delay <= t_write + 0.01]
    syncs_after_write = [s for s in syncs if s.ts + trace.delay > t_write + 0.01]

    if expect == "write-syncs":
        clause_expect(dsync or syncs_for_write,
                      f"cache={mode}: write-through, but the guest write completed without a data sync of the "
                      f"image after the host write (and the image is not O_DSYNC)\n{log}")  # fmt: skip
    elif expect == "flush-syncs":
        assert not syncs_for_write, f"cache={mode}: writeback cache, but the write waited for a sync\n{log}"
        assert t_flush is not None
        ok = [s for s in syncs_after_write if s.ts >= t_write - 0.01 and s.ts + trace.delay <= t_flush + 0.01]
        assert ok, f"cache={mode}: the guest FLUSH completed without a data sync of the image\n{log}"
    else:
        assert not syncs, f"cache={mode}: cache.no-flush, but the host synced the image\n{log}"

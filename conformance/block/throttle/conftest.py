"""Fixtures of the throttle suite: a machine with throttled virtio-blk drives, a clock, and a load.

The clock is chosen by probing the target's qtest: `clock_step` works → the virtual clock (exact, no
sleeping); QEMU under TCG answers `FAIL Unknown command` → wall time. Every test here works with either, so
the same assertions judge both targets; a test that needs the virtual clock carries the `virtual_clock`
marker and skips without one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from conformance.block.conftest import BlockMachine, drive_args
from conformance.block.throttle.load import Load, Stream, VirtualClock, WallClock, has_virtual_clock
from conformance.drivers.virtqueue import SplitQueue

#: Completions in the first part of a run come from the bucket's initial allowance (QEMU lets avg/10 units
#: through at once when no burst is configured): the measured window starts after it.
WARMUP = 0.3
#: issue #5: the achieved rate over a window of at least 2 s.
WINDOW = 2.0


@dataclass
class ThrottleRig:
    vm: BlockMachine
    clock: WallClock | VirtualClock
    load: Load
    queues: list[SplitQueue]

    def stream(self, name: str, kind: int, size: int, depth: int = 2, drive: int = 0, sector: int = 0) -> Stream:
        return self.load.add(Stream(name, self.queues[drive], kind, size, depth, sector))


def throttle_opts(**limits: int | str) -> list[str]:
    """`throttling.NAME=VALUE` options from keyword arguments (underscores become dashes)."""
    return [f"throttling.{k.replace('_', '-')}={v}" for k, v in limits.items()]


@pytest.fixture
def rig(
    block_vm: Callable[..., BlockMachine], raw_image: Callable[..., str], request: pytest.FixtureRequest
) -> Callable[..., ThrottleRig]:
    """Start a machine with one drive per entry of `drives` (each a list of -drive options), bring every
    device up with one split queue of 16, and pick the clock."""

    def start(*drives: Sequence[str], qmp: bool = False) -> ThrottleRig:
        args: list[str] = []
        for i, opts in enumerate(drives):
            args += drive_args(raw_image(16 << 20, f"thr{i}"), f"d{i}", opts, [f"id=vblk{i}"])
        vm = block_vm(*args, qmp=qmp)
        queues = [vm.ready(i)[1] for i in range(len(drives))]
        virtual = has_virtual_clock(vm.qt)
        if request.node.get_closest_marker("virtual_clock") and not virtual:
            pytest.skip("needs a virtual clock (qtest clock_step); this target has none (QEMU under TCG)")
        clock: WallClock | VirtualClock = VirtualClock(vm.qt) if virtual else WallClock()
        request.node.user_properties.append(("clock", "virtual" if virtual else "wall"))
        return ThrottleRig(vm, clock, Load(vm.qt, vm.machine.alloc, clock), queues)

    return start

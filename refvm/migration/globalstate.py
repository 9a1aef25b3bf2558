"""The source's run state, carried in the stream as QEMU's `globalstate` section does.

It decides what the destination does when the load completes: a guest that was running resumes (or pauses,
with -S); one that was not (prelaunch, paused) stays in the source's state, so migrating a stopped guest
does not start it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from refvm.migration.state import DeviceState, buffer, sfield

#: Run states a source can have had when it stopped for switchover (what a destination may be put in).
SOURCE_RUN_STATES = frozenset({"running", "prelaunch", "paused", "suspended", "shutdown", "debug"})
IDSTR = "globalstate"


@dataclass
class GlobalState(DeviceState):
    """The run state name, as ASCII (at most 100 bytes, as QEMU's buffer)."""

    VMSD_NAME: ClassVar[str] = IDSTR
    VERSION: ClassVar[int] = 1
    runstate: bytes = sfield(buffer(100), b"running", lambda v: v.decode("ascii", "replace") in SOURCE_RUN_STATES,
                             "a run state a source can stop in")

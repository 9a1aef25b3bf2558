"""Flush every drive of a machine when it stops (QEMU's vm_stop: bdrv_drain_all, then bdrv_flush_all).

Why: once `stop` (or a migration's switchover) returns, what the guest wrote -- data and a qcow2 image's cached
L1/L2 entries -- is in the image file, so a tool reading the file of a paused guest (``qemu-img check -U``, a
backup, a destination on shared storage) sees a consistent image. The flush is the cache mode's own: a sync
under writeback/writethrough, metadata written back without a sync under cache=unsafe.

A virtio device may be serving a request on another thread (the ioeventfd I/O thread) while the vCPUs are
already paused, so each drive is flushed under the lock of the device that uses it: the flush never runs beside
one of its requests. A flush that fails is reported in one line and does not stop the others (QEMU's `stop`
also succeeds when a flush fails).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from typing import Any

from refvm.block.driver import BlockError


def _device_locks(fronts: Iterable[Any]) -> dict[int, Any]:
    """id(backend) -> the lock of the device model that issues its requests."""
    locks: dict[int, Any] = {}
    for front in fronts:
        backend, lock = getattr(front, "backend", None), getattr(front, "lock", None)
        if backend is not None and lock is not None:
            locks[id(backend)] = lock
    return locks


def flush_drives(drives: dict[str, Any], fronts: Iterable[Any]) -> None:
    """Flush each open drive (by ``-drive`` id) under its device's lock."""
    locks = _device_locks(fronts)
    for ident, drive in drives.items():
        if drive.closed:
            continue
        lock = locks.get(id(drive))
        try:
            with lock if lock is not None else contextlib.nullcontext():
                drive.flush()
        except (OSError, BlockError) as err:
            print(f"refvm: drive {ident}: flush at stop failed: {err}", file=sys.stderr)

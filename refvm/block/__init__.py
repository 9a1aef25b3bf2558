"""Block backends: what a disk device reads and writes on the host.

A backend offers byte-addressed I/O with QEMU's semantics (see :class:`BlockBackend`); device models
(virtio-blk) speak sectors and translate. :class:`~refvm.block.raw.RawFile` is the minimal raw-file
backend; qcow2, cache modes and throttling come later and keep this interface.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from refvm.block.raw import RawFile

__all__ = ["BlockBackend", "RawFile"]


@runtime_checkable
class BlockBackend(Protocol):
    """Byte-granular block I/O. Errors are :class:`OSError`; devices turn them into status codes."""

    readonly: bool

    def length(self) -> int:
        """Size in bytes."""
        ...

    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, offset: int, data: bytes | memoryview) -> None: ...

    def flush(self) -> None:
        """Make completed writes stable (fdatasync)."""
        ...

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a range; later reads return zeroes or the old data (a hint)."""
        ...

    def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        """Reads of the range return zeroes afterwards."""
        ...

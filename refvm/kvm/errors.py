"""KvmError: every failed /dev/kvm operation, naming the ioctl and the errno text."""

from __future__ import annotations

import errno as _errno
import os


class KvmError(OSError):
    """A KVM ioctl (or opening /dev/kvm) failed.

    Subclasses OSError so ``errno`` is available and generic handlers still work; the message always
    names the operation, because "Invalid argument" alone does not say which of a dozen ioctls failed.
    """

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        text = os.strerror(err) if err else "failed"
        name = _errno.errorcode.get(err, str(err))
        msg = f"{op} failed: {text} ({name})"
        if detail:
            msg += f": {detail}"
        super().__init__(err, msg)
        self.op = op

    def __str__(self) -> str:
        return self.strerror or ""

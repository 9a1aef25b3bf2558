"""The one place that issues ioctls: errors become KvmError naming the ioctl and the errno text."""

from __future__ import annotations

from ._ffi import ffi, libc
from .errors import KvmError
from .ioctls import NAMES

_ioctl = libc.ioctl
_ulong = ffi.cast


def ioctl_ptr(fd: int, request: int, arg: object, what: str = "") -> int:
    """ioctl with a cdata pointer argument (libc through cffi; the GIL is released during the call)."""
    ret = _ioctl(fd, request, arg)
    if ret < 0:
        raise KvmError(NAMES.get(request, hex(request)), ffi.errno, what)
    return ret


def ioctl_int(fd: int, request: int, arg: int = 0, what: str = "") -> int:
    """ioctl whose argument is a plain integer (or unused)."""
    ret = _ioctl(fd, request, _ulong("unsigned long", arg))
    if ret < 0:
        raise KvmError(NAMES.get(request, hex(request)), ffi.errno, what)
    return ret

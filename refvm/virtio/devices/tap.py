"""A Linux tap device (``/dev/net/tun``) as a network backend: ``-netdev tap,id=..,ifname=..|fd=..``.

Opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: every frame read or written is preceded by a
virtio-net header of :data:`VNET_HDR_LEN` bytes (``struct virtio_net_hdr_v1``, what a VERSION_1
driver uses), set with TUNSETVNETHDRSZ. No offloads are enabled (TUNSETOFFLOAD 0), so the kernel
never hands us GSO frames or frames needing a checksum.

``queues=N`` (N > 1) opens the interface N times with IFF_MULTI_QUEUE, as QEMU's ``-netdev
tap,queues=N``: one file descriptor per queue (:attr:`fds`), each attached or detached with
TUNSETQUEUE (:meth:`enable_queue`). The kernel spreads the frames it sends over the attached queues
and drops what a queue held when it is detached.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

__all__ = ["Tap", "VNET_HDR_LEN", "TapError"]

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETIFF = 0x800454D2
TUNSETQUEUE = 0x400454D9
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFNAMSIZ = 16
VNET_HDR_LEN = 12
MAX_FRAME = 65536 + VNET_HDR_LEN


class TapError(OSError):
    """The tap could not be opened or configured."""


class Tap:
    """One tap queue. ``ifname`` may be a pattern such as ``tap%d``; the kernel's choice is in :attr:`ifname`."""

    def __init__(self, ifname: str = "", *, fd: int | list[int] | None = None, multi_queue: bool = False,
                 vnet_hdr: bool = True, queues: int = 1) -> None:
        self.vnet_hdr = vnet_hdr
        if not 1 <= queues <= 1024:
            raise TapError(errno.EINVAL, f"queues must be 1..1024, not {queues}")
        if fd is not None:  # inherited descriptors (-netdev tap,fd=N or fds=N:M:...): one per queue
            fds = list(fd) if isinstance(fd, list) else [fd]
            if queues not in (1, len(fds)):
                raise TapError(errno.EINVAL, f"queues={queues} does not match the {len(fds)} fds given")
            self.fd = fds[0]
            self.fds = fds
            self.enabled = [True] * len(fds)
            self.ifname = ifname
            for f in fds:
                self._configure(f)
            return
        if len(ifname.encode()) >= IFNAMSIZ:
            raise TapError(f"interface name '{ifname}' is too long")
        self.fds: list[int] = []
        try:
            for _ in range(queues):
                self.fds.append(self._open(ifname, multi_queue or queues > 1))
                ifname = self.ifname  # later queues join the interface the first one got
        except BaseException:
            for f in self.fds:
                os.close(f)
            raise
        self.fd = self.fds[0]
        self.enabled = [True] * queues

    def _open(self, ifname: str, multi_queue: bool) -> int:
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise TapError(exc.errno, f"could not open /dev/net/tun: {exc.strerror}") from None
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if self.vnet_hdr else 0) | (IFF_MULTI_QUEUE if multi_queue else 0)
        ifr = struct.pack(f"{IFNAMSIZ}sH", ifname.encode(), flags).ljust(40, b"\0")
        try:
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
            self.ifname = res[:IFNAMSIZ].split(b"\0", 1)[0].decode()
            self._configure(fd)
        except OSError as exc:
            os.close(fd)
            raise TapError(exc.errno, f"could not configure /dev/net/tun ({ifname}): {exc.strerror}") from None
        return fd

    @property
    def queues(self) -> int:
        return len(self.fds)

    def enable_queue(self, queue: int, on: bool) -> None:
        """Attach (``on``) or detach a queue of a multi-queue tap (QEMU's ``tap_fd_enable``/``disable``)."""
        if self.enabled[queue] == on or self.fds[queue] < 0:
            return
        ifr = struct.pack(f"{IFNAMSIZ}sH", b"", IFF_ATTACH_QUEUE if on else IFF_DETACH_QUEUE).ljust(40, b"\0")
        try:
            fcntl.ioctl(self.fds[queue], TUNSETQUEUE, ifr)
        except OSError as exc:
            raise TapError(exc.errno, f"could not {'attach' if on else 'detach'} tap queue {queue}: "
                                      f"{exc.strerror}") from None
        self.enabled[queue] = on

    def _configure(self, fd: int) -> None:
        if self.vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
        os.set_blocking(fd, False)

    def read(self, queue: int = 0) -> bytes | None:
        """One frame (with its vnet header) from ``queue``, or None if nothing is waiting (or the
        queue is detached)."""
        try:
            return os.read(self.fds[queue], MAX_FRAME)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EBADFD:
                return None
            raise

    def write(self, frame: bytes, queue: int = 0) -> None:
        """Send one frame (with its vnet header) on ``queue``; a full tap drops it, as a NIC would."""
        try:
            os.write(self.fds[queue], frame)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for i, fd in enumerate(self.fds):
            if fd >= 0:
                os.close(fd)
                self.fds[i] = -1
        self.fd = -1

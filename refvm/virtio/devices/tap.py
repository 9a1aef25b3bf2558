"""A Linux tap device (``/dev/net/tun``) as a network backend: ``-netdev tap,id=..,ifname=..|fd=..``.

Opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: every frame read or written is preceded by a
virtio-net header of :data:`VNET_HDR_LEN` bytes (``struct virtio_net_hdr_v1``, what a VERSION_1
driver uses), set with TUNSETVNETHDRSZ. No offloads are enabled (TUNSETOFFLOAD 0), so the kernel
never hands us GSO frames or frames needing a checksum.
"""

from __future__ import annotations

import fcntl
import os
import struct

__all__ = ["Tap", "VNET_HDR_LEN", "TapError"]

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
IFNAMSIZ = 16
VNET_HDR_LEN = 12
MAX_FRAME = 65536 + VNET_HDR_LEN


class TapError(OSError):
    """The tap could not be opened or configured."""


class Tap:
    """One tap queue. ``ifname`` may be a pattern such as ``tap%d``; the kernel's choice is in :attr:`ifname`."""

    def __init__(self, ifname: str = "", *, fd: int | None = None, multi_queue: bool = False,
                 vnet_hdr: bool = True) -> None:
        self.vnet_hdr = vnet_hdr
        if fd is not None:
            self.fd = fd
            self.ifname = ifname
            self._configure()
            return
        if len(ifname.encode()) >= IFNAMSIZ:
            raise TapError(f"interface name '{ifname}' is too long")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise TapError(exc.errno, f"could not open /dev/net/tun: {exc.strerror}") from None
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | (IFF_MULTI_QUEUE if multi_queue else 0)
        ifr = struct.pack(f"{IFNAMSIZ}sH", ifname.encode(), flags).ljust(40, b"\0")
        try:
            res = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(self.fd)
            raise TapError(exc.errno, f"could not configure /dev/net/tun ({ifname}): {exc.strerror}") from None
        self.ifname = res[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        self._configure()

    def _configure(self) -> None:
        if self.vnet_hdr:
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        os.set_blocking(self.fd, False)

    def read(self) -> bytes | None:
        """One frame (with its vnet header), or None if nothing is waiting."""
        try:
            return os.read(self.fd, MAX_FRAME)
        except BlockingIOError:
            return None

    def write(self, frame: bytes) -> None:
        """Send one frame (with its vnet header); a full tap drops it, as a NIC would."""
        try:
            os.write(self.fd, frame)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

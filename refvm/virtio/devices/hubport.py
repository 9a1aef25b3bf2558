"""`-netdev hubport`: a network backend on a hub with nothing else on it.

QEMU's hubport with no peer swallows every frame and never delivers one; tests use it to check a NIC's
configuration without creating a host interface. It offers the Tap interface (fd, read, write, close) so
virtio-net drives it unchanged: its fd is the read end of a pipe nobody writes to.
"""

from __future__ import annotations

import os

from refvm.virtio.devices.tap import Tap


class HubPort(Tap):
    """A tap-shaped backend that drops transmitted frames and receives none."""

    def __init__(self, hubid: int = 0) -> None:  # noqa: D107 - no tap is opened: see the module docstring
        self.vnet_hdr = True
        self.hubid = hubid
        self.ifname = f"hub{hubid}port"
        self.fd, self._write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.fds = [self.fd]  # one queue, as Tap's multiqueue interface expects
        self.enabled = [True]
        self.dropped = 0

    def read(self, queue: int = 0) -> bytes | None:
        return None

    def write(self, frame: bytes, queue: int = 0) -> None:
        self.dropped += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            os.close(self._write_end)
            self.fd = -1
            self.fds = [-1]

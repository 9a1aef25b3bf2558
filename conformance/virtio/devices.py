"""Device-type helpers of the virtio suite: request formats of §5 built as bytes, plus two small host tools.

Kept apart from the transport driver so that the wire formats read like the spec's structs: a test builds a
virtio-blk header with `blk_header(T_IN, sector)` and posts it on whatever queue layout it is checking.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path

# ---- virtio-blk (§5.2) -----------------------------------------------------------------------------------

BLK_F_SIZE_MAX, BLK_F_SEG_MAX, BLK_F_GEOMETRY, BLK_F_RO, BLK_F_BLK_SIZE = 1, 2, 4, 5, 6
BLK_F_FLUSH, BLK_F_TOPOLOGY, BLK_F_CONFIG_WCE, BLK_F_MQ = 9, 10, 11, 12
BLK_F_DISCARD, BLK_F_WRITE_ZEROES, BLK_F_LIFETIME, BLK_F_SECURE_ERASE = 13, 14, 15, 16

T_IN, T_OUT, T_FLUSH, T_GET_ID, T_GET_LIFETIME = 0, 1, 4, 8, 10
T_DISCARD, T_WRITE_ZEROES, T_SECURE_ERASE = 11, 13, 14
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
WRITE_ZEROES_F_UNMAP = 1
SECTOR = 512
ID_BYTES = 20

# struct virtio_blk_config offsets.
BLK_CAPACITY, BLK_SIZE_MAX, BLK_SEG_MAX, BLK_BLK_SIZE = 0, 8, 12, 20
BLK_WRITEBACK, BLK_UNUSED0, BLK_NUM_QUEUES = 32, 33, 34
BLK_MAX_DISCARD_SECTORS, BLK_MAX_DISCARD_SEG, BLK_DISCARD_ALIGN = 36, 40, 44
BLK_MAX_WZ_SECTORS, BLK_MAX_WZ_SEG, BLK_WZ_MAY_UNMAP, BLK_UNUSED1 = 48, 52, 56, 57


def blk_header(req_type: int, sector: int = 0) -> bytes:
    """struct virtio_blk_req's device-readable header: type, reserved, sector."""
    return struct.pack("<IIQ", req_type, 0, sector)


def blk_segment(sector: int, num_sectors: int, flags: int = 0) -> bytes:
    """One virtio_blk_discard_write_zeroes range."""
    return struct.pack("<QII", sector, num_sectors, flags)


# ---- virtio-net (§5.1) -----------------------------------------------------------------------------------

NET_F = {
    "CSUM": 0, "GUEST_CSUM": 1, "CTRL_GUEST_OFFLOADS": 2, "MTU": 3, "MAC": 5, "GUEST_TSO4": 7,
    "GUEST_TSO6": 8, "GUEST_ECN": 9, "GUEST_UFO": 10, "HOST_TSO4": 11, "HOST_TSO6": 12, "HOST_ECN": 13,
    "HOST_UFO": 14, "MRG_RXBUF": 15, "STATUS": 16, "CTRL_VQ": 17, "CTRL_RX": 18, "CTRL_VLAN": 19,
    "CTRL_RX_EXTRA": 20, "GUEST_ANNOUNCE": 21, "MQ": 22, "CTRL_MAC_ADDR": 23, "HOST_USO": 56,
    "HASH_REPORT": 57, "GUEST_HDRLEN": 59, "RSS": 60, "RSC_EXT": 61, "STANDBY": 62, "SPEED_DUPLEX": 63,
}  # fmt: skip
#: §5.1.3.1: feature -> features of which at least one must also be offered.
NET_REQUIRES = {
    "GUEST_TSO4": ("GUEST_CSUM",), "GUEST_TSO6": ("GUEST_CSUM",), "GUEST_ECN": ("GUEST_TSO4", "GUEST_TSO6"),
    "GUEST_UFO": ("GUEST_CSUM",), "HOST_TSO4": ("CSUM",), "HOST_TSO6": ("CSUM",),
    "HOST_ECN": ("HOST_TSO4", "HOST_TSO6"), "HOST_UFO": ("CSUM",), "HOST_USO": ("CSUM",),
    "CTRL_RX": ("CTRL_VQ",), "CTRL_VLAN": ("CTRL_VQ",), "GUEST_ANNOUNCE": ("CTRL_VQ",), "MQ": ("CTRL_VQ",),
    "CTRL_MAC_ADDR": ("CTRL_VQ",), "RSC_EXT": ("HOST_TSO4", "HOST_TSO6"), "RSS": ("CTRL_VQ",),
    "CTRL_RX_EXTRA": ("CTRL_RX",), "CTRL_GUEST_OFFLOADS": ("CTRL_VQ",),
}  # fmt: skip
NET_S_LINK_UP, NET_S_ANNOUNCE = 1, 2
NET_HDR_LEN = 12  # struct virtio_net_hdr with num_buffers, as every VERSION_1 device uses
NET_HDR_GSO_NONE = 0


def net_hdr(flags: int = 0, gso_type: int = NET_HDR_GSO_NONE) -> bytes:
    """flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers."""
    return struct.pack("<BBHHHHH", flags, gso_type, 0, 0, 0, 0, 0)


def parse_net_hdr(data: bytes) -> dict[str, int]:
    names = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset", "num_buffers")
    return dict(zip(names, struct.unpack("<BBHHHHH", data[:NET_HDR_LEN]), strict=True))


def net_requires(offered: int) -> list[str]:
    """Offered net features whose prerequisites are not offered (§5.1.3.1)."""
    bad = []
    for feat, needs in NET_REQUIRES.items():
        if offered >> NET_F[feat] & 1 and not any(offered >> NET_F[n] & 1 for n in needs):
            bad.append(f"{feat} without {' or '.join(needs)}")
    return bad


# ---- virtio-console (§5.3) -------------------------------------------------------------------------------

CONSOLE_F_SIZE, CONSOLE_F_MULTIPORT, CONSOLE_F_EMERG_WRITE = 0, 1, 2
CONSOLE_COLS, CONSOLE_ROWS, CONSOLE_MAX_NR_PORTS, CONSOLE_EMERG_WR = 0, 2, 4, 8
CONSOLE_DEVICE_READY, CONSOLE_DEVICE_ADD, CONSOLE_DEVICE_REMOVE, CONSOLE_PORT_READY = 0, 1, 2, 3
CONSOLE_CONSOLE_PORT, CONSOLE_RESIZE, CONSOLE_PORT_OPEN, CONSOLE_PORT_NAME = 4, 5, 6, 7


def console_control(port: int, event: int, value: int) -> bytes:
    return struct.pack("<IHH", port, event, value)


def parse_console_control(data: bytes) -> tuple[int, int, int]:
    return struct.unpack("<IHH", data[:8])


# ---- virtio-balloon (§5.5) -------------------------------------------------------------------------------

BALLOON_F_MUST_TELL_HOST, BALLOON_F_STATS_VQ, BALLOON_F_DEFLATE_ON_OOM = 0, 1, 2
BALLOON_F_FREE_PAGE_HINT, BALLOON_F_PAGE_POISON, BALLOON_F_PAGE_REPORTING = 3, 4, 5
BALLOON_NUM_PAGES, BALLOON_ACTUAL, BALLOON_POISON_VAL = 0, 4, 12
BALLOON_PFN_SHIFT = 12


# ---- host-side tools -------------------------------------------------------------------------------------


class QmpCommandNotFound(AssertionError):
    """The target's QMP does not implement a command (a missing capability, not a wrong answer)."""


class MiniQmp:
    """Just enough QMP (JSON lines over a unix socket) to resume a stopped machine or change a device.

    The suite is qtest-first; QMP is needed only where the target's own state changes (link up/down, disk
    resize) or where a device only works while the machine runs (virtio-net's datapath).
    """

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise ConnectionError("QMP connection closed")
        return json.loads(line)

    def execute(self, command: str, **arguments: object) -> object:
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                if reply["error"].get("class") == "CommandNotFound":
                    raise QmpCommandNotFound(f"QMP {command}: {reply['error']}")
                raise AssertionError(f"QMP {command}: {reply['error']}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def halting_bios(directory: str) -> str:
    """A 64 KiB firmware image of HLT instructions: with interrupts off at reset the CPU halts for good.

    Running a machine with it lets devices that only work while the VM runs (virtio-net) be driven over
    qtest without any firmware touching the PCI bus.
    """
    path = Path(directory) / "halt.bin"
    path.write_bytes(b"\xf4" * 65536)
    return str(path)

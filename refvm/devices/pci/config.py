"""PCI configuration space: the bytes plus per-byte write masks.

A guest changes configuration space only through :meth:`ConfigSpace.write`, which applies two masks
per byte, as the PCI Local Bus Specification 3.0 (§6.1-6.2) describes registers and as QEMU models them:

* ``wmask`` -- bits software may set and clear (everything else is read-only: IDs, class code,
  header type, BAR low bits, capability pointers);
* ``w1cmask`` -- bits software clears by writing 1 (STATUS error bits); writing 0 leaves them alone
  and writing 1 never sets them.

Device builders use the ``set_*`` helpers, which bypass the masks. Guest accesses are untrusted: any
offset, size or value is accepted without raising -- bytes outside the space read as all-ones when the
access starts outside it and as zero past the end when it starts inside (QEMU's truncating behaviour),
and writes to bytes outside the space are dropped.
"""

from __future__ import annotations

__all__ = [
    "ConfigSpace",
    "VENDOR_ID", "DEVICE_ID", "COMMAND", "STATUS", "REVISION_ID", "CLASS_PROG", "CACHE_LINE_SIZE",
    "LATENCY_TIMER", "HEADER_TYPE", "BIST", "BAR0", "CARDBUS_CIS", "SUBSYSTEM_VENDOR_ID", "SUBSYSTEM_ID",
    "ROM_ADDRESS", "CAPABILITY_LIST", "INTERRUPT_LINE", "INTERRUPT_PIN", "HEADER_SIZE",
    "CMD_IO", "CMD_MEMORY", "CMD_MASTER", "CMD_SERR", "CMD_INTX_DISABLE",
    "STATUS_INTERRUPT", "STATUS_CAP_LIST", "STATUS_W1C_BITS", "ranges_overlap",
]  # fmt: skip

# Type-0 header offsets (PCI 3.0 §6.1, Figure 6-1).
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BIST = 0x0F
BAR0 = 0x10
CARDBUS_CIS = 0x28
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
HEADER_SIZE = 0x40

# COMMAND (§6.2.2) and STATUS (§6.2.3) bits.
CMD_IO = 1 << 0
CMD_MEMORY = 1 << 1
CMD_MASTER = 1 << 2
CMD_SERR = 1 << 8
CMD_INTX_DISABLE = 1 << 10
STATUS_INTERRUPT = 1 << 3
STATUS_CAP_LIST = 1 << 4
#: Master/target abort, parity and system-error bits: write-1-to-clear.
STATUS_W1C_BITS = (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15)

_MAX_ACCESS = 8


def ranges_overlap(a: int, alen: int, b: int, blen: int) -> bool:
    """True if [a, a+alen) and [b, b+blen) share a byte."""
    return a < b + blen and b < a + alen


class ConfigSpace:
    """``size`` bytes of configuration space with read/write and write-1-to-clear masks per byte."""

    __slots__ = ("size", "data", "wmask", "w1cmask")

    def __init__(self, size: int = 256) -> None:
        if size <= 0:
            raise ValueError(f"config space size must be positive, not {size}")
        self.size = size
        self.data = bytearray(size)
        self.wmask = bytearray(size)
        self.w1cmask = bytearray(size)

    # ---------------------------------------------------------------- guest accesses
    def read(self, offset: int, size: int) -> int:
        """Little-endian read of ``size`` bytes; never raises.

        An access starting outside the space reads all-ones; one that runs past the end returns the
        bytes inside and zero above them (what QEMU's config accessors do after truncating the length).
        """
        if size <= 0 or size > _MAX_ACCESS:
            return 0
        if offset < 0 or offset >= self.size:
            return (1 << (8 * size)) - 1
        end = min(offset + size, self.size)
        return int.from_bytes(self.data[offset:end], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """Masked little-endian write; bytes outside the space are dropped; never raises."""
        if size <= 0 or size > _MAX_ACCESS or offset >= self.size or offset + size <= 0:
            return
        value &= (1 << (8 * size)) - 1
        data, wmask, w1c = self.data, self.wmask, self.w1cmask
        for i in range(size):
            addr = offset + i
            if addr < 0 or addr >= self.size:
                continue
            byte = (value >> (8 * i)) & 0xFF
            wm = wmask[addr]
            new = (data[addr] & ~wm) | (byte & wm)
            data[addr] = new & ~(byte & w1c[addr]) & 0xFF

    # ---------------------------------------------------------------- builder helpers (no masks)
    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or offset + size > self.size:
            raise ValueError(f"config bytes {offset:#x}+{size} outside a {self.size}-byte space")

    def set(self, offset: int, size: int, value: int) -> None:
        """Store ``value`` ignoring the masks (device-side update); ValueError if out of range."""
        self._check(offset, size)
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        """Read as the device sees it; ValueError if out of range (unlike the guest-facing :meth:`read`)."""
        self._check(offset, size)
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set_u8(self, offset: int, value: int) -> None:
        self.set(offset, 1, value)

    def set_u16(self, offset: int, value: int) -> None:
        self.set(offset, 2, value)

    def set_u32(self, offset: int, value: int) -> None:
        self.set(offset, 4, value)

    def get_u8(self, offset: int) -> int:
        return self.get(offset, 1)

    def get_u16(self, offset: int) -> int:
        return self.get(offset, 2)

    def get_u32(self, offset: int) -> int:
        return self.get(offset, 4)

    def set_bits(self, offset: int, size: int, bits: int) -> None:
        """OR ``bits`` into a field (device-side)."""
        self.set(offset, size, self.get(offset, size) | bits)

    def clear_bits(self, offset: int, size: int, bits: int) -> None:
        """Clear ``bits`` of a field (device-side)."""
        self.set(offset, size, self.get(offset, size) & ~bits)

    def set_rw_mask(self, offset: int, size: int, mask: int) -> None:
        """Make the bits of ``mask`` guest-writable (and the other bits of the field read-only)."""
        self._check(offset, size)
        self.wmask[offset : offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._no_conflict(offset, size)

    def set_w1c_mask(self, offset: int, size: int, mask: int) -> None:
        """Make the bits of ``mask`` write-1-to-clear."""
        self._check(offset, size)
        self.w1cmask[offset : offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._no_conflict(offset, size)

    def set_rw_bytes(self, offset: int, masks: bytes) -> None:
        """Per-byte write masks for a run of bytes (capability bodies)."""
        self._check(offset, len(masks))
        self.wmask[offset : offset + len(masks)] = masks
        self._no_conflict(offset, len(masks))

    def _no_conflict(self, offset: int, size: int) -> None:
        for addr in range(offset, offset + size):
            if self.wmask[addr] & self.w1cmask[addr]:
                raise ValueError(f"config byte {addr:#x}: a bit cannot be both read/write and write-1-to-clear")

    def snapshot(self) -> bytes:
        """The current bytes (for migration and debugging)."""
        return bytes(self.data)

    def __repr__(self) -> str:
        return f"<ConfigSpace {self.size} bytes id={self.get_u32(0) if self.size >= 4 else 0:#010x}>"

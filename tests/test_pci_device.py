"""Config space masks, header fields, BAR sizing and decoding, capabilities, INTx (refvm.devices.pci).

Real PioBus/MmioBus; a test function shaped like QEMU 7.2's transitional virtio-blk-pci (BAR0 io 0x80,
BAR1 mem32 0x1000 with MSI-X, BAR4 mem64 prefetchable 0x4000), plugged into a PciBus whose sinks record.
"""

from __future__ import annotations

import pytest

from refvm.bus import MmioBus, PioBus
from refvm.devices.pci import BarRegion, BarSpec, ConfigSpace, PciBus, PciDevice
from refvm.devices.pci.config import STATUS_W1C_BITS


class Registers:
    """A little register file: what is written reads back (the witness a test looks for on the bus)."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.mem[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.mem[offset : offset + size] = value.to_bytes(size, "little")


class BlkLike(PciDevice):
    type_name = "virtio-blk-pci"

    def __init__(self, qdev_id: str = "") -> None:
        super().__init__(vendor_id=0x1AF4, device_id=0x1001, class_code=0x010000, subsystem_vendor_id=0x1AF4,
                         subsystem_id=0x0002, interrupt_pin=1, qdev_id=qdev_id)  # fmt: skip
        self.io = Registers(0x80)
        self.common = Registers(0x1000)
        self.add_bar(BarSpec(0, "io", 0x80, region=self.io))
        self.add_bar(BarSpec(1, "mem32", 0x1000))
        modern = BarRegion(0x4000)
        modern.add(0, 0x1000, self.common, "common")
        self.add_bar(BarSpec(4, "mem64", 0x4000, prefetchable=True, region=modern))
        self.hooked: list[tuple[int, int, int]] = []
        self.add_capability(0x09, bytes(14))
        self.add_msix(2, 1, 0, 1, 0x800)

    def config_write_hook(self, offset: int, size: int, value: int) -> None:
        self.hooked.append((offset, size, value))


class Rig:
    def __init__(self) -> None:
        self.pio, self.mmio = PioBus(), MmioBus()
        self.msis: list[tuple[int, int]] = []
        self.irqs: list[tuple[int, int]] = []
        self.bus = PciBus(self.pio, self.mmio, lambda a, d: self.msis.append((a, d)),
                          lambda irq, level: self.irqs.append((irq, level)))  # fmt: skip
        self.dev = BlkLike("blk0")
        self.slot, _ = self.bus.add(self.dev, slot=2)

    def rd(self, off: int, size: int = 4) -> int:
        return self.bus.config_read(0, self.slot, 0, off, size)

    def wr(self, off: int, size: int, value: int) -> None:
        self.bus.config_write(0, self.slot, 0, off, size, value)


@pytest.fixture
def rig() -> Rig:
    return Rig()


# ---------------------------------------------------------------- ConfigSpace
def test_config_masks_ro_rw_w1c() -> None:
    c = ConfigSpace()
    c.set_u32(0x40, 0xAABBCCDD)
    c.set_rw_mask(0x40, 2, 0x0FF0)
    c.set_u16(0x44, 0xFF00)
    c.set_w1c_mask(0x44, 2, 0xF000)
    c.write(0x40, 4, 0x12345678)
    assert c.read(0x40, 4) == 0xAABB_C67D  # only bits 4..11 took the new value
    c.write(0x44, 2, 0x3000)  # clears bits 12,13; writing 0 elsewhere keeps them
    assert c.read(0x44, 2) == 0xCF00
    c.write(0x44, 2, 0x0000)
    assert c.read(0x44, 2) == 0xCF00


def test_config_guest_accesses_never_raise() -> None:
    c = ConfigSpace()
    c.set_u8(0xFF, 0x5A)
    assert c.read(0x100, 4) == 0xFFFFFFFF
    assert c.read(-1, 2) == 0xFFFF
    assert c.read(0xFF, 4) == 0x5A  # truncated at the end, zero above (QEMU)
    for off, size in ((0xFE, 4), (-2, 4), (0x1000, 1), (0, 0), (0, 9)):
        c.write(off, size, 0xFFFFFFFF)
    with pytest.raises(ValueError):
        c.set_u32(0xFE, 0)  # builder misuse is an error, not a guest input


# ---------------------------------------------------------------- header
def test_header_fields(rig: Rig) -> None:
    assert rig.rd(0x00) == 0x10011AF4
    assert rig.rd(0x08) == 0x01000000
    assert rig.rd(0x0E, 1) == 0x00
    assert rig.rd(0x2C) == 0x00021AF4
    assert rig.rd(0x3D, 1) == 1
    assert rig.rd(0x3C, 1) == 10  # 00:02.0 INTA -> PIRQB -> IRQ 10, as SeaBIOS leaves it
    for off in (0x00, 0x08, 0x2C):
        before = rig.rd(off)
        rig.wr(off, 4, ~before & 0xFFFFFFFF)
        assert rig.rd(off) == before


def test_command_status_masks(rig: Rig) -> None:
    rig.wr(0x04, 2, 0xFFFF)
    assert rig.rd(0x04, 2) == 0x0507  # QEMU's COMMAND wmask
    rig.wr(0x04, 2, 0)
    rig.dev.config.set_bits(0x06, 2, STATUS_W1C_BITS)
    rig.wr(0x04, 4, 0x0000_0000)
    assert rig.rd(0x06, 2) & STATUS_W1C_BITS == STATUS_W1C_BITS  # 0s leave error bits
    rig.wr(0x04, 4, 0x8100_0000)
    assert rig.rd(0x06, 2) & STATUS_W1C_BITS == STATUS_W1C_BITS & ~0x8100
    rig.wr(0x06, 2, 0xFFFF)
    assert rig.rd(0x06, 2) == 0x0010  # only CAP_LIST remains; it is read-only
    rig.wr(0x0C, 1, 0x10)
    rig.wr(0x0D, 1, 0x40)
    assert rig.rd(0x0C, 2) == 0x0010  # cache line size r/w, latency timer read-only


def test_config_write_hook_sees_write(rig: Rig) -> None:
    rig.wr(0x3C, 1, 0x0B)
    assert rig.dev.hooked[-1] == (0x3C, 1, 0x0B)


# ---------------------------------------------------------------- BARs
@pytest.mark.parametrize(
    "off,flags,mask",
    [(0x10, 0x1, 0xFFFFFF81), (0x14, 0x0, 0xFFFFF000), (0x20, 0xC, 0xFFFFC00C), (0x24, None, 0xFFFFFFFF)],
    ids=["io", "mem32", "mem64-low", "mem64-high"],
)
def test_bar_sizing(rig: Rig, off: int, flags: int | None, mask: int) -> None:
    if flags is not None:
        assert rig.rd(off) == flags
    rig.wr(off, 4, 0xFFFFFFFF)
    assert rig.rd(off) == mask
    rig.wr(off, 4, 0)
    assert rig.rd(off) == (flags or 0)


def test_unimplemented_bars_read_zero(rig: Rig) -> None:
    for off in (0x18, 0x1C, 0x30):
        rig.wr(off, 4, 0xFFFFFFFF)
        assert rig.rd(off) == 0


def test_bar_builder_rules() -> None:
    dev = PciDevice(vendor_id=1, device_id=2, class_code=0)
    for bad in (BarSpec(0, "io", 2), BarSpec(0, "io", 512), BarSpec(0, "mem32", 8), BarSpec(0, "mem32", 0x1800),
                BarSpec(5, "mem64", 0x1000), BarSpec(6, "mem32", 0x1000)):  # fmt: skip
        with pytest.raises(ValueError):
            dev.add_bar(bad)
    dev.add_bar(BarSpec(2, "mem64", 0x1000))
    with pytest.raises(ValueError):
        dev.add_bar(BarSpec(3, "io", 4))  # the upper half of BAR2


def _program(rig: Rig) -> None:
    rig.wr(0x10, 4, 0xC000)
    rig.wr(0x14, 4, 0xFEBF0000)
    rig.wr(0x20, 4, 0x0)
    rig.wr(0x24, 4, 0x8)  # BAR4 at 32 GiB


def test_command_gates_mapping(rig: Rig) -> None:
    _program(rig)
    assert rig.pio.lookup(0xC000) is None and rig.mmio.lookup(0xFEBF0000) is None
    rig.wr(0x04, 2, 0x1)
    assert rig.pio.lookup(0xC000) is not None and rig.mmio.lookup(0xFEBF0000) is None
    rig.pio.write(0xC00E, 2, 0x1234)
    assert rig.dev.io.read(0xE, 2) == 0x1234 and rig.pio.read(0xC00E, 2) == 0x1234
    rig.wr(0x04, 2, 0x2)
    assert rig.pio.lookup(0xC000) is None
    assert rig.pio.read(0xC00E, 2) == 0xFFFF  # no longer decoded: master abort
    rig.mmio.write(0x8_0000_0000, 4, 0xCAFE)
    assert rig.dev.common.read(0, 4) == 0xCAFE
    assert rig.mmio.read(0x8_0000_1000, 4) == 0xFFFFFFFF  # gap inside the BAR region
    rig.mmio.write(0xFEBF0008, 4, 0x4321)  # MSI-X entry 0 data
    assert rig.mmio.read(0xFEBF0008, 4) == 0x4321
    rig.wr(0x04, 2, 0)
    assert rig.mmio.ranges() == [] and rig.pio.ranges() == []


def test_remap_on_bar_move_and_sizing(rig: Rig) -> None:
    _program(rig)
    rig.wr(0x04, 2, 0x3)
    rig.wr(0x10, 4, 0xD000)
    assert rig.pio.lookup(0xC000) is None and rig.pio.lookup(0xD07F) is not None
    rig.wr(0x24, 4, 0x0)
    assert rig.mmio.lookup(0x8_0000_0000) is None
    rig.wr(0x20, 4, 0xE0000000)
    assert rig.mmio.lookup(0xE0003FFF) is not None
    rig.wr(0x14, 4, 0xFFFFFFFF)  # sizing with decode on: all-ones is not an address
    assert rig.mmio.lookup(0xFFFFF000) is None
    rig.wr(0x14, 4, 0)
    assert rig.dev.bar_address(1) is None  # 0 is never decoded
    assert rig.bus.mapped_address(2, 0, 4) == 0xE0000000


def test_overlapping_bar_stays_unmapped_until_free(rig: Rig) -> None:
    other = BlkLike()
    rig.bus.add(other, slot=3)
    for slot in (2, 3):
        rig.bus.config_write(0, slot, 0, 0x14, 4, 0xFEBF0000)
        rig.bus.config_write(0, slot, 0, 0x04, 2, 0x2)
    assert rig.bus.mapped_address(2, 0, 1) == 0xFEBF0000
    assert (3, 0, 1) in rig.bus.conflicts
    rig.wr(0x04, 2, 0)  # first one stops decoding: the second takes the range
    assert rig.bus.mapped_address(3, 0, 1) == 0xFEBF0000 and not rig.bus.conflicts


def test_io_bar_beyond_64k_is_unreachable_not_fatal(rig: Rig) -> None:
    rig.wr(0x10, 4, 0x12340000)
    rig.wr(0x04, 2, 0x1)
    assert rig.bus.mapped_address(2, 0, 0) is None and (2, 0, 0) in rig.bus.conflicts


def test_reset_unmaps_and_clears(rig: Rig) -> None:
    _program(rig)
    rig.wr(0x04, 2, 0x7)
    rig.wr(0x0C, 1, 0x10)
    rig.bus.reset()
    assert rig.rd(0x04, 2) == 0 and rig.rd(0x10) == 0x1 and rig.rd(0x24) == 0 and rig.rd(0x0C, 1) == 0
    assert rig.rd(0x3C, 1) == 10  # re-assigned like firmware after reboot
    assert rig.pio.ranges() == [] and rig.mmio.ranges() == []


# ---------------------------------------------------------------- capabilities
def test_capability_list(rig: Rig) -> None:
    assert rig.rd(0x06, 2) & 0x10
    head = rig.rd(0x34, 1)
    walk = []
    ptr = head
    while ptr:
        walk.append((ptr, rig.rd(ptr, 1)))
        ptr = rig.rd(ptr + 1, 1)
    assert walk == [(0x50, 0x11), (0x40, 0x09)]  # newest first, like QEMU
    rig.wr(0x34, 1, 0)
    rig.wr(0x41, 1, 0x80)
    assert rig.rd(0x34, 1) == head and rig.rd(0x41, 1) == 0
    rig.wr(0x80, 4, 0x12345678)  # outside any capability: read/write as in QEMU
    assert rig.rd(0x80) == 0x12345678


def test_capability_placement_rules() -> None:
    dev = PciDevice(vendor_id=1, device_id=2, class_code=0)
    assert not dev.config.get_u16(0x06) & 0x10
    assert dev.add_capability(0x09, bytes(2), rw_masks=b"\xff\x00") == 0x40
    assert dev.add_capability(0x09, bytes(5)) == 0x44
    assert dev.add_capability(0x05, bytes(2), offset=0x80) == 0x80
    dev.config_write(0x42, 2, 0xFFFF)
    assert dev.config_read(0x42, 2) == 0x00FF
    for kwargs in ({"offset": 0x42}, {"offset": 0x3C}, {"offset": 0x44}):
        with pytest.raises(ValueError):
            dev.add_capability(0x09, bytes(2), **kwargs)


# ---------------------------------------------------------------- INTx
def test_intx_and_disable(rig: Rig) -> None:
    rig.dev.set_irq(True)
    assert rig.irqs == [(10, 1)] and rig.rd(0x06, 2) & 0x08
    rig.wr(0x04, 2, 0x400)  # Interrupt Disable: the pin drops, STATUS still shows the level
    assert rig.irqs[-1] == (10, 0) and rig.rd(0x06, 2) & 0x08
    rig.dev.set_irq(False)
    rig.dev.set_irq(True)
    assert rig.irqs == [(10, 1), (10, 0)]
    rig.wr(0x04, 2, 0)
    assert rig.irqs[-1] == (10, 1)
    rig.dev.set_irq(False)
    assert rig.irqs[-1] == (10, 0) and not rig.rd(0x06, 2) & 0x08


def test_intx_lines_are_wire_ored(rig: Rig) -> None:
    other = BlkLike()
    rig.bus.add(other, slot=6)  # (6-1+0)&3 = PIRQB as well -> IRQ 10
    assert other.config.get_u8(0x3C) == 10
    rig.dev.set_irq(True)
    other.set_irq(True)
    rig.dev.set_irq(False)
    assert rig.irqs == [(10, 1)] and rig.bus.irq_level(10)
    other.set_irq(False)
    assert rig.irqs == [(10, 1), (10, 0)]


def test_notify_vector_falls_back_to_intx(rig: Rig) -> None:
    rig.dev.notify_vector(0)
    assert rig.irqs == [(10, 1)] and rig.msis == []

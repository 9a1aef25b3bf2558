"""MSI-X masking/pending/enable, configuration mechanism #1, slots, host bridge and query-pci shape."""

from __future__ import annotations

import pytest

from refvm.bus import MmioBus, PioBus
from refvm.devices.pci import ConfigMechanism1, HostBridge, PciBus, PciError, build_pc_pci, query_pci
from refvm.devices.reset import ResetControl
from tests.test_pci_device import BlkLike

TABLE = 0xFEBF0000
PBA = TABLE + 0x800
MSIX_CTL = 0x52  # BlkLike's MSI-X capability is at 50h


class Machine:
    """The pc PCI side on real buses, with recording sinks and a virtio-blk-like function at 00:02.0."""

    def __init__(self) -> None:
        self.pio, self.mmio = PioBus(), MmioBus()
        self.msis: list[tuple[int, int]] = []
        self.irqs: list[tuple[int, int]] = []
        self.resets = 0
        self.pio.register(0xCF9, 1, ResetControl(self._reset), "reset-control")
        self.bus, self.conf1 = build_pc_pci(self.pio, self.mmio, lambda a, d: self.msis.append((a, d)),
                                            lambda i, lv: self.irqs.append((i, lv)))  # fmt: skip
        self.dev = BlkLike("blk0")
        assert self.bus.add(self.dev) == (2, 0)

    def _reset(self) -> None:
        self.resets += 1

    def cfg(self, dev: int, off: int, size: int = 4, fn: int = 0) -> int:
        self.pio.write(0xCF8, 4, 0x80000000 | dev << 11 | fn << 8 | (off & 0xFC))
        return self.pio.read(0xCFC + (off & 3), size)

    def cfg_w(self, dev: int, off: int, size: int, value: int) -> None:
        self.pio.write(0xCF8, 4, 0x80000000 | dev << 11 | (off & 0xFC))
        self.pio.write(0xCFC + (off & 3), size, value)

    def map_msix(self, master: bool = True) -> None:
        self.cfg_w(2, 0x14, 4, TABLE)
        self.cfg_w(2, 0x04, 2, 0x6 if master else 0x2)

    def entry(self, vector: int, address: int, data: int, masked: bool) -> None:
        base = TABLE + 16 * vector
        self.mmio.write(base, 8, address)
        self.mmio.write(base + 8, 4, data)
        self.mmio.write(base + 12, 4, int(masked))


@pytest.fixture
def m() -> Machine:
    return Machine()


# ---------------------------------------------------------------- MSI-X
def test_msix_reset_state_and_readback(m: Machine) -> None:
    m.map_msix()
    assert m.cfg(2, 0x50) & 0xFFFF_00FF == 0x0001_0011  # id 11h, table size N-1 = 1, enable/mask clear
    assert m.cfg(2, 0x54) == 0x1 and m.cfg(2, 0x58) == 0x801  # BIR 1 at 0 / 0x800
    assert [m.mmio.read(TABLE + 16 * v + 12, 4) for v in range(2)] == [1, 1]
    m.entry(1, 0xFEE0100C, 0x4041, masked=True)
    assert m.mmio.read(TABLE + 16, 8) == 0xFEE0100C and m.mmio.read(TABLE + 24, 4) == 0x4041
    m.cfg_w(2, MSIX_CTL, 2, 0xFFFF)
    assert m.cfg(2, MSIX_CTL, 2) == 0xC001  # only enable + function mask are writable


def test_msix_delivery_masking_and_pending(m: Machine) -> None:
    m.map_msix()
    m.entry(0, 0xFEE00000, 0x30, masked=False)
    m.entry(1, 0xFEE00000, 0x31, masked=True)
    m.dev.notify_vector(0)  # MSI-X disabled: INTx
    assert m.irqs == [(10, 1)] and m.msis == []
    m.cfg_w(2, MSIX_CTL, 2, 0x8000)  # enable: INTx deasserted
    assert m.irqs[-1] == (10, 0) and not m.cfg(2, 0x06, 2) & 0x8
    m.dev.notify_vector(0)
    assert m.msis == [(0xFEE00000, 0x30)]
    m.dev.notify_vector(1)  # masked: pending
    assert m.mmio.read(PBA, 8) == 0b10 and len(m.msis) == 1
    m.mmio.write(PBA, 8, 0)  # pending bits are read-only
    assert m.mmio.read(PBA, 8) == 0b10
    m.mmio.write(TABLE + 16 + 12, 4, 0)  # unmask: the pending message goes out
    assert m.msis[-1] == (0xFEE00000, 0x31) and m.mmio.read(PBA, 8) == 0
    m.dev.notify_vector(7)  # no such vector: ignored
    assert len(m.msis) == 2


def test_msix_function_mask(m: Machine) -> None:
    m.map_msix()
    m.entry(0, 0xFEE00000, 0x30, masked=False)
    m.cfg_w(2, MSIX_CTL, 2, 0xC000)
    m.dev.notify_vector(0)
    m.dev.notify_vector(0)
    assert m.msis == [] and m.mmio.read(PBA, 1) == 1
    m.cfg_w(2, MSIX_CTL, 2, 0x8000)  # clear the function mask: one message for the pending bit
    assert m.msis == [(0xFEE00000, 0x30)] and m.mmio.read(PBA, 1) == 0


def test_msix_needs_bus_master(m: Machine) -> None:
    m.map_msix(master=False)
    m.entry(0, 0xFEE00000, 0x30, masked=False)
    m.cfg_w(2, MSIX_CTL, 2, 0x8000)
    m.dev.notify_vector(0)
    assert m.msis == [] and m.dev.msi_dropped == 1


def test_msix_reset(m: Machine) -> None:
    m.map_msix()
    m.entry(0, 0xFEE00000, 0x30, masked=False)
    m.cfg_w(2, MSIX_CTL, 2, 0xC000)
    m.dev.notify_vector(0)
    m.bus.reset()
    assert m.dev.msix is not None
    assert m.dev.msix.table_read(0, 16) == 1 << 96 and m.dev.msix.pba_read(0, 8) == 0
    assert m.cfg(2, MSIX_CTL, 2) == 0x0001


# ---------------------------------------------------------------- conf1
def test_config_address_readback_and_widths(m: Machine) -> None:
    m.pio.write(0xCF8, 4, 0x80001234)
    assert m.pio.read(0xCF8, 4) == 0x80001234
    assert m.pio.read(0xCF8, 1) == 0x34 and m.pio.read(0xCFA, 2) == 0x1234  # QEMU: low bytes at any port
    m.pio.write(0xCF8, 1, 0x55)
    m.pio.write(0xCFA, 2, 0x55AA)
    assert m.pio.read(0xCF8, 4) == 0x80001234  # only dword writes latch


def test_reset_control_chained_at_cf9(m: Machine) -> None:
    m.pio.write(0xCF8, 4, 0x80000000)
    assert m.resets == 0
    m.pio.write(0xCF9, 1, 0x06)
    assert m.resets == 1 and m.pio.read(0xCF8, 4) == 0x80000000


def test_data_port_byte_word_and_disabled(m: Machine) -> None:
    ident = m.cfg(0, 0)
    assert ident == 0x12378086
    m.pio.write(0xCF8, 4, 0x80000000)
    assert [m.pio.read(0xCFC + i, 1) for i in range(4)] == [0x86, 0x80, 0x37, 0x12]
    assert m.pio.read(0xCFD, 2) == 0x3780 and m.pio.read(0xCFE, 2) == 0x1237
    assert m.pio.read(0xCFF, 2) == 0xFF12  # runs off the data port: the outside byte floats
    m.pio.write(0xCF8, 4, 0x80000003)  # low bits of CONFIG_ADDRESS are ORed in (QEMU)
    assert m.pio.read(0xCFC, 4) == 0x12
    m.pio.write(0xCF8, 4, 0x00000000)
    assert m.pio.read(0xCFC, 4) == 0xFFFFFFFF and m.pio.read(0xCFD, 1) == 0xFF
    m.pio.write(0xCFC, 4, 0)  # dropped
    m.cfg_w(2, 0x3C, 1, 0xA5)
    assert m.cfg(2, 0x3C) & 0xFFFF == 0x01A5


def test_absent_functions_read_all_ones(m: Machine) -> None:
    for dev, fn in ((31, 0), (2, 1), (0x1F, 7)):
        assert m.cfg(dev, 0, fn=fn) == 0xFFFFFFFF
    m.pio.write(0xCF8, 4, 0x80010000)  # bus 1
    assert m.pio.read(0xCFC, 2) == 0xFFFF
    assert m.bus.config_read(0, 9, 0, 0, 1) == 0xFF


# ---------------------------------------------------------------- slots
def test_slot_assignment_and_clash(m: Machine) -> None:
    assert m.bus.add(BlkLike()) == (3, 0)
    with pytest.raises(PciError, match=r"^PCI: slot 3 function 0 not available for virtio-blk-pci, in use by "
                                       r"virtio-blk-pci,id=\(null\)$"):  # fmt: skip
        m.bus.add(BlkLike(), slot=3)
    with pytest.raises(PciError, match=r"in use by PIIX3,id=\(null\)"):
        m.bus.add(BlkLike(), slot=1)
    with pytest.raises(PciError, match=r"single function device can't be populated in function 3.1"):
        m.bus.add(BlkLike(), slot=3, function=1)
    m.bus.add(BlkLike(), slot=5, function=1)
    with pytest.raises(PciError, match=r"5.0 indicates single function, but 5.1 is already populated."):
        m.bus.add(BlkLike(), slot=5)
    assert m.bus.add(BlkLike()) == (4, 0)


def test_multifunction_header_bit(m: Machine) -> None:
    assert m.cfg(1, 0x0E, 1) == 0x80 and m.cfg(1, 0x00, fn=1) == 0x70108086
    assert m.cfg(1, 0x00, fn=3) == 0x71138086 and m.cfg(2, 0x0E, 1) == 0


# ---------------------------------------------------------------- host bridge and query-pci
def test_host_bridge_ids() -> None:
    bus = PciBus(PioBus(), MmioBus(), lambda a, d: None, lambda i, lv: None)
    bus.add(HostBridge(ram_size=128 << 20), slot=0)
    conf1 = ConfigMechanism1(bus)
    conf1.address = 0x80000000
    assert conf1.data_read(0, 4) == 0x12378086
    assert bus.config_read(0, 0, 0, 0x08, 4) == 0x06000002
    assert bus.config_read(0, 0, 0, 0x2C, 4) == 0x11001AF4
    assert bus.config_read(0, 0, 0, 0x57, 1) == 0x10 and bus.config_read(0, 0, 0, 0x06, 2) == 0


def test_query_pci_shape(m: Machine) -> None:
    m.cfg_w(2, 0x10, 4, 0xC000)
    m.cfg_w(2, 0x04, 2, 0x1)
    (root,) = query_pci(m.bus)
    assert root["bus"] == 0
    devs = root["devices"]
    assert [(d["slot"], d["function"]) for d in devs] == [(0, 0), (1, 0), (1, 1), (1, 3), (2, 0)]
    host, _, ide, acpi, blk = devs
    assert host == {"bus": 0, "slot": 0, "function": 0, "class_info": {"class": 0x0600, "desc": "Host bridge"},
                    "id": {"device": 0x1237, "vendor": 0x8086, "subsystem": 0x1100, "subsystem-vendor": 0x1AF4},
                    "irq_pin": 0, "qdev_id": "", "regions": []}  # fmt: skip
    assert ide["regions"] == [{"bar": 4, "type": "io", "address": -1, "size": 16}]
    assert acpi["irq"] == 9 and acpi["class_info"] == {"class": 0x0680, "desc": "Bridge"}
    assert blk["qdev_id"] == "blk0" and blk["irq"] == 10 and blk["irq_pin"] == 1
    assert blk["class_info"] == {"class": 0x0100, "desc": "SCSI controller"}
    assert blk["regions"] == [
        {"bar": 0, "type": "io", "address": 0xC000, "size": 128},
        {"bar": 1, "type": "memory", "address": -1, "size": 4096, "prefetch": False, "mem_type_64": False},
        {"bar": 4, "type": "memory", "address": -1, "size": 16384, "prefetch": True, "mem_type_64": True},
    ]

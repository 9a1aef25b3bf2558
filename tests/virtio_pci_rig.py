"""Test rig for the virtio-pci transport (no tests here): a real PciBus on real PIO/MMIO buses and GuestMemory,
a recording MSI sink and INTx sink, and a driver that talks only through config space and the BARs.
"""

from __future__ import annotations

from test_virtio_helpers import EchoDevice, SplitDriver, make_mem

from refvm.bus import MmioBus, PioBus
from refvm.config import DeviceSpec
from refvm.devices.pci import PciBus
from refvm.devices.tree import DeviceTree
from refvm.virtio import status as S
from refvm.virtio.device import VirtioDevice
from refvm.virtio.pci import VirtioPciFunction

__all__ = ["Rig", "EchoRng", "EchoDevice", "SplitDriver", "make_mem", "C"]

IO_BASE = 0xC000
MSIX_BASE = 0xFE000000
MODERN_BASE = 0xFE100000
MSI_ADDR = 0xFEE00000
SLOT = 2


class C:
    """Common configuration offsets (§4.1.4.3)."""

    DFSELECT, DF, GFSELECT, GF, MSIX, NUMQ, STATUS, GEN = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x14, 0x15
    QSEL, QSIZE, QMSIX, QENABLE, QNOFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
    QDESC, QDRIVER, QDEVICE = 0x20, 0x28, 0x30


class EchoRng(EchoDevice):
    """The echo test device wearing device ID 4 (entropy), so it has a transitional PCI ID."""

    device_id = 4


class Rig:
    """One VirtioPciFunction in slot 2, BARs assigned and decoding, bus master on."""

    def __init__(self, vdev: VirtioDevice | None = None, *, enable: bool = True, **kw: object) -> None:
        self.mem = vdev.mem if vdev is not None else make_mem()
        self.vdev = vdev if vdev is not None else EchoRng(self.mem, sizes=(8, 8))
        self.pio, self.mmio = PioBus(), MmioBus()
        self.msis: list[tuple[int, int]] = []
        self.irqs: list[tuple[int, int]] = []
        self.bus = PciBus(self.pio, self.mmio, lambda a, d: self.msis.append((a, d)),
                          lambda irq, level: self.irqs.append((irq, level)))  # fmt: skip
        self.fn = VirtioPciFunction(self.vdev, qdev_id="vdev0", **kw)  # type: ignore[arg-type]
        self.bus.add(self.fn, slot=SLOT)
        if enable:
            self.program_bars()

    # ---------------------------------------------------------------- config space
    def cfg_read(self, off: int, size: int = 4) -> int:
        return self.bus.config_read(0, SLOT, 0, off, size)

    def cfg_write(self, off: int, size: int, value: int) -> None:
        self.bus.config_write(0, SLOT, 0, off, size, value)

    def program_bars(self) -> None:
        bars = self.fn.bars
        if 0 in bars:
            self.cfg_write(0x10, 4, IO_BASE)
        if 1 in bars:
            self.cfg_write(0x14, 4, MSIX_BASE)
        if 4 in bars:
            self.cfg_write(0x20, 4, MODERN_BASE)
            self.cfg_write(0x24, 4, 0)
        self.cfg_write(0x04, 2, 0x7)

    def capabilities(self) -> list[tuple[int, int]]:
        caps, ptr = [], self.cfg_read(0x34, 1)
        while ptr and len(caps) < 48:
            caps.append((ptr, self.cfg_read(ptr, 1)))
            ptr = self.cfg_read(ptr + 1, 1)
        return caps

    # ---------------------------------------------------------------- modern BAR
    def rd(self, off: int, size: int) -> int:
        return self.mmio.read(MODERN_BASE + off, size)

    def wr(self, off: int, size: int, value: int) -> None:
        self.mmio.write(MODERN_BASE + off, size, value)

    def isr(self) -> int:
        return self.rd(0x1000, 1)

    def notify(self, queue: int) -> None:
        self.wr(0x3000 + 4 * queue, 2, queue)

    # ---------------------------------------------------------------- legacy BAR
    def inp(self, off: int, size: int) -> int:
        return self.pio.read(IO_BASE + off, size)

    def out(self, off: int, size: int, value: int) -> None:
        self.pio.write(IO_BASE + off, size, value)

    # ---------------------------------------------------------------- MSI-X
    def enable_msix(self, vectors: int = 2) -> None:
        for v in range(vectors):
            base = MSIX_BASE + 16 * v
            self.mmio.write(base, 4, MSI_ADDR)
            self.mmio.write(base + 4, 4, 0)
            self.mmio.write(base + 8, 4, 0x40 + v)
            self.mmio.write(base + 12, 4, 0)
        self.cfg_write(0x98 + 2, 2, 0x8000)

    @property
    def irq(self) -> int:
        return self.cfg_read(0x3C, 1)

    @property
    def intx(self) -> bool:
        return self.bus.irq_level(self.irq)

    # ---------------------------------------------------------------- §3.1.1 through the common config
    def init_driver(self, features: int, queues: dict[int, SplitDriver], vectors: dict[int, int] | None = None,
                    config_vector: int | None = None) -> None:  # fmt: skip
        self.wr(C.STATUS, 1, 0)
        assert self.rd(C.STATUS, 1) == 0
        self.wr(C.STATUS, 1, S.ACKNOWLEDGE)
        self.wr(C.STATUS, 1, S.ACKNOWLEDGE | S.DRIVER)
        offered = 0
        for sel in (0, 1):
            self.wr(C.DFSELECT, 4, sel)
            offered |= self.rd(C.DF, 4) << (32 * sel)
        assert features & ~offered == 0, f"{features:#x} not all offered in {offered:#x}"
        for sel in (0, 1):
            self.wr(C.GFSELECT, 4, sel)
            self.wr(C.GF, 4, (features >> (32 * sel)) & 0xFFFFFFFF)
        self.wr(C.STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        assert self.rd(C.STATUS, 1) & S.FEATURES_OK
        if config_vector is not None:
            self.wr(C.MSIX, 2, config_vector)
        for index, drv in queues.items():
            self.wr(C.QSEL, 2, index)
            assert self.rd(C.QSIZE, 2) >= drv.size
            self.wr(C.QSIZE, 2, drv.size)
            if vectors and index in vectors:
                self.wr(C.QMSIX, 2, vectors[index])
            self.wr(C.QDESC, 8, drv.desc)
            self.wr(C.QDRIVER, 8, drv.avail)
            self.wr(C.QDEVICE, 8, drv.used)
            self.wr(C.QENABLE, 2, 1)
        self.wr(C.STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
        assert self.rd(C.STATUS, 1) == S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK


def tree_of(*devices: tuple[str, dict[str, str], object, object]) -> DeviceTree:
    """A machine's device tree holding (driver, -device props, front end, transport) as -devices, in order:
    what the QMP command sets walk, for tests that build devices without a whole machine."""
    tree = DeviceTree()
    for driver, props, front, transport in devices:
        node = tree.add_peripheral(DeviceSpec(driver, dict(props)))
        node.front, node.transport = front, transport
    return tree

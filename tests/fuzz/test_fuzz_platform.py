"""Fuzz: PCI config space and the MSI-X table of a virtio-pci function, the 16550 UART's registers.

Properties: no access sequence raises or hangs; every read returns a value of the access size; the
device stays usable (PCI: vendor ID still reads 0x1af4; UART: a reset brings back the reset values).
"""

from __future__ import annotations

from fuzzing import FUZZ, example
from hypothesis import given
from hypothesis import strategies as st
from virtio_pci_rig import MODERN_BASE, MSIX_BASE, Rig

from refvm.bus import PioBus
from refvm.devices.chardev import Chardev
from refvm.devices.irq import IrqLine
from refvm.devices.serial import COM1, Serial16550

SIZES = st.sampled_from([1, 2, 4])
VALUES = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 0xFFFFFFFF, 0x8000, 0xC000, 0x7]))

pci_ops = st.lists(
    st.one_of(
        st.tuples(st.just("cfg"), st.integers(0, 0xFF), SIZES, VALUES),  # config space write
        st.tuples(st.just("cfgr"), st.integers(0, 0xFF), SIZES, st.just(0)),
        st.tuples(st.just("msix"), st.integers(0, 0x900), SIZES, VALUES),  # MSI-X table and PBA (BAR1)
        st.tuples(st.just("bar4"), st.integers(0, 0x4000), SIZES, VALUES),  # common/ISR/device/notify
    ),
    max_size=40,
)


def test_fuzz_pci_config_and_msix() -> None:
    @FUZZ
    @given(ops=pci_ops)
    def target(ops: list[tuple[str, int, int, int]]) -> None:
        with example():
            rig = Rig()
            for kind, off, size, value in ops:
                off -= off % size  # naturally aligned, as the CPU's config mechanism and MMIO deliver them
                value &= (1 << (8 * size)) - 1
                if kind == "cfg":
                    rig.cfg_write(off, size, value)
                elif kind == "cfgr":
                    assert 0 <= rig.cfg_read(off, size) < 1 << (8 * size)
                elif kind == "msix":
                    rig.mmio.write(MSIX_BASE + off, size, value)
                    assert 0 <= rig.mmio.read(MSIX_BASE + off, size) < 1 << (8 * size)
                else:
                    rig.mmio.write(MODERN_BASE + off, size, value)
            assert rig.cfg_read(0, 2) == 0x1AF4
            assert not [f for f in rig.vdev.failures if f.startswith("device error")]

    target()


class _Sink(Chardev):
    def __init__(self) -> None:
        super().__init__("fuzz")
        self.out = bytearray()

    def _write(self, data: bytes) -> None:
        self.out += data[-64:]

    def inject(self, data: bytes) -> None:
        self._deliver(data)


uart_ops = st.lists(
    st.one_of(
        st.tuples(st.just("w"), st.integers(0, 7), st.integers(0, 0xFF)),
        st.tuples(st.just("r"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("rx"), st.integers(0, 300), st.integers(0, 0xFF)),  # host sends N bytes
    ),
    max_size=60,
)


def test_fuzz_uart_registers() -> None:
    base, irq = COM1

    @FUZZ
    @given(ops=uart_ops)
    def target(ops: list[tuple[str, int, int]]) -> None:
        with example():
            chardev = _Sink()
            uart = Serial16550(IrqLine(lambda n, lvl: None, irq), chardev)
            bus = PioBus()
            bus.register(base, 8, uart, "serial0")
            for kind, a, b in ops:
                if kind == "w":
                    bus.write(base + a, 1, b)
                elif kind == "r":
                    assert 0 <= bus.read(base + a, 1) <= 0xFF
                else:
                    chardev.inject(bytes([b]) * a)
            uart.reset()
            # LSR after reset: THR and TSR empty, no errors (DR may be set: the host's pending bytes come back in)
            assert bus.read(base + 5, 1) & ~1 == 0x60 and bus.read(base + 3, 1) == 0

    target()

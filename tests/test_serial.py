"""16550A register semantics, checked one register at a time against the PC16550D datasheet.

The UART is driven through a real PioBus at COM1; its chardev is a small in-process backend
(guest output collected in a list, host input injected with ``_deliver`` exactly as a backend
thread does) and the IRQ line records every level change.
"""

from __future__ import annotations

import threading

import pytest

from refvm.bus import PioBus
from refvm.devices.chardev import Chardev, FileChardev
from refvm.devices.irq import IrqLine
from refvm.devices.serial import COM1, Serial16550, SerialState

BASE, IRQ = COM1
RBR = THR = DLL = BASE
IER = DLM = BASE + 1
IIR = FCR = BASE + 2
LCR, MCR, LSR, MSR, SCR = (BASE + i for i in range(3, 8))


class CaptureChardev(Chardev):
    def __init__(self) -> None:
        super().__init__("test")
        self.out = bytearray()

    def _write(self, data: bytes) -> None:
        self.out += data

    def inject(self, data: bytes) -> None:
        self._deliver(data)


class Uart:
    def __init__(self) -> None:
        self.levels: list[tuple[int, int]] = []
        self.irq = IrqLine(lambda n, lvl: self.levels.append((n, lvl)), IRQ)
        self.chr = CaptureChardev()
        self.dev = Serial16550(self.irq, self.chr)
        self.bus = PioBus()
        self.bus.register(BASE, 8, self.dev, "serial0")

    def r(self, port: int) -> int:
        return self.bus.read(port, 1)

    def w(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)


@pytest.fixture
def u() -> Uart:
    return Uart()


def test_reset_values(u: Uart) -> None:
    assert u.r(IER) == 0
    assert u.r(IIR) == 0x01
    assert u.r(LCR) == 0
    assert u.r(MCR) == 0
    assert u.r(LSR) == 0x60
    assert u.r(MSR) == 0xB0  # DCD|DSR|CTS, no deltas (QEMU's idle lines)
    assert u.r(SCR) == 0
    assert not u.irq.level


def test_scratch_register(u: Uart) -> None:
    for v in (0x55, 0xAA, 0x00, 0xFF):
        u.w(SCR, v)
        assert u.r(SCR) == v


def test_divisor_latch_roundtrip_does_not_touch_ier_or_thr(u: Uart) -> None:
    u.w(IER, 0x05)
    u.w(LCR, 0x83)  # DLAB + 8N1
    u.w(DLL, 0x01)
    u.w(DLM, 0x02)
    assert u.r(DLL) == 0x01 and u.r(DLM) == 0x02
    assert u.chr.out == b""  # writing DLL transmitted nothing
    u.w(LCR, 0x03)
    assert u.r(IER) == 0x05 and u.r(LCR) == 0x03
    assert u.dev.divisor == 0x0201
    u.w(LCR, 0x83)
    u.w(DLL, 0x01)
    u.w(DLM, 0x00)
    assert u.dev.baud == 115200


def test_ier_only_low_nibble(u: Uart) -> None:
    u.w(IER, 0xFF)
    assert u.r(IER) == 0x0F


def test_transmit_goes_to_chardev(u: Uart) -> None:
    for ch in b"hi\n":
        u.w(THR, ch)
        assert u.r(LSR) & 0x60 == 0x60  # THRE and TEMT again at once
    assert bytes(u.chr.out) == b"hi\n"


def test_fcr_fifo_enable_visible_in_iir(u: Uart) -> None:
    u.w(FCR, 0x01)
    assert u.r(IIR) == 0xC1
    u.w(FCR, 0xC7)
    assert u.r(IIR) == 0xC1
    u.w(FCR, 0x00)
    assert u.r(IIR) == 0x01


def test_thre_interrupt_raise_clear_rearm(u: Uart) -> None:
    u.w(IER, 0x02)  # enabling with THR empty raises at once
    assert u.irq.level and u.levels[-1] == (IRQ, 1)
    assert u.r(IIR) == 0x02
    assert not u.irq.level  # the IIR read acknowledged it
    assert u.r(IIR) == 0x01
    u.w(THR, ord("x"))  # next THR write re-arms it (character sent instantly)
    assert u.irq.level and u.r(IIR) == 0x02
    assert u.r(IIR) == 0x01
    u.w(IER, 0x00)
    u.w(IER, 0x02)  # re-enabling in IER re-arms too
    assert u.irq.level
    u.w(IER, 0x00)
    assert not u.irq.level


def test_rx_data_interrupt_and_lsr_dr(u: Uart) -> None:
    u.w(IER, 0x01)
    assert not u.irq.level
    u.chr.inject(b"A")
    assert u.r(LSR) & 0x01
    assert u.irq.level and u.r(IIR) == 0x04
    assert u.r(RBR) == ord("A")
    assert not u.r(LSR) & 0x01
    assert not u.irq.level and u.r(IIR) == 0x01


def test_iir_priority_rx_over_thre_and_line_status_first(u: Uart) -> None:
    u.w(IER, 0x0F)
    u.r(IIR)  # THRE acknowledged
    u.w(THR, ord("a"))  # THRE pending again
    u.chr.inject(b"x")
    assert u.r(IIR) == 0x04  # rx data outranks THRE
    u.w(MCR, 0x10)  # loopback
    u.r(MSR)  # clear deltas from entering loopback
    u.w(THR, 1)  # one byte fills the non-FIFO RBR: 'x' is there, so this overruns
    assert u.r(IIR) == 0x06  # line status outranks everything
    assert u.r(LSR) & 0x02  # OE, cleared by this read
    assert u.r(LSR) & 0x02 == 0
    assert u.r(IIR) == 0x04
    assert u.r(RBR) == ord("x")
    assert u.r(IIR) == 0x02  # THRE still pending from the loopback THR write
    assert u.r(IIR) == 0x01


def test_modem_status_interrupt_lowest_priority(u: Uart) -> None:
    u.w(IER, 0x08)
    u.w(MCR, 0x10 | 0x02)  # loopback, RTS -> CTS; DSR/DCD drop from the idle lines
    assert u.r(IIR) == 0x00  # modem status
    msr = u.r(MSR)
    assert msr == 0x10 | 0x0A  # CTS stayed up (no DCTS); DSR and DCD fell (DDSR, DDCD)
    assert u.r(IIR) == 0x01


def test_loopback_msr_mapping(u: Uart) -> None:
    u.w(MCR, 0x10)
    u.r(MSR)
    for mcr, lines in [(0x01, 0x20), (0x02, 0x10), (0x04, 0x40), (0x08, 0x80), (0x0F, 0xF0), (0x0A, 0x90)]:
        u.w(MCR, 0x10 | mcr)
        assert u.r(MSR) & 0xF0 == lines, hex(mcr)
    # Linux' 8250 autoconfig loop test: MCR=LOOP|OUT2|RTS must give DCD|CTS
    u.w(MCR, 0x1A)
    assert u.r(MSR) & 0xF0 == 0x90


def test_msr_deltas_cleared_on_read(u: Uart) -> None:
    u.w(MCR, 0x10 | 0x04)  # loopback with OUT1 -> RI
    first = u.r(MSR)
    assert first & 0x0F  # CTS/DSR/DCD changed
    assert u.r(MSR) & 0x0F == 0
    u.w(MCR, 0x10)  # RI trailing edge
    assert u.r(MSR) & 0x04
    assert u.r(MSR) & 0x0F == 0


def test_loopback_thr_to_rbr_not_to_chardev(u: Uart) -> None:
    u.w(FCR, 0x01)
    u.w(MCR, 0x10)
    for ch in b"loop":
        u.w(THR, ch)
    assert u.chr.out == b""
    got = bytes(u.r(RBR) for _ in range(4))
    assert got == b"loop" and not u.r(LSR) & 0x01


def test_overrun_in_loopback_fifo(u: Uart) -> None:
    u.w(FCR, 0x07)
    u.w(MCR, 0x10)
    for i in range(17):
        u.w(THR, i)
    lsr = u.r(LSR)
    assert lsr & 0x02 and lsr & 0x01 and lsr & 0x80  # OE, DR, error in FIFO
    assert not u.r(LSR) & 0x02  # OE cleared by the read
    assert [u.r(RBR) for _ in range(16)] == list(range(16))  # 17th byte lost


def test_fifo_trigger_level_and_timeout(u: Uart) -> None:
    u.w(FCR, 0x81)  # enable, trigger 8
    u.w(IER, 0x01)
    u.chr.inject(b"abc")
    assert u.r(IIR) == 0xCC  # below trigger: character timeout (line idle at once)
    u.chr.inject(b"defgh")
    assert u.r(IIR) == 0xC4  # trigger level reached
    assert bytes(u.r(RBR) for _ in range(8)) == b"abcdefgh"
    assert u.r(IIR) == 0xC1


def test_fcr_clear_rx(u: Uart) -> None:
    u.w(FCR, 0x01)
    u.chr.inject(b"zz")
    u.w(FCR, 0x03)
    assert not u.r(LSR) & 0x01


def test_fifo_holds_16_and_backlog_feeds_it(u: Uart) -> None:
    u.w(FCR, 0x01)
    u.chr.inject(bytes(range(40)))
    assert u.dev.backlog == 24
    assert not u.r(LSR) & 0x02  # host input never overruns
    assert [u.r(RBR) for _ in range(40)] == list(range(40))
    assert u.dev.backlog == 0 and not u.r(LSR) & 0x01


def test_paste_of_1000_bytes_arrives_whole_from_another_thread(u: Uart) -> None:
    u.w(FCR, 0xC1)
    u.w(IER, 0x01)
    paste = bytes((i * 7 + 3) % 256 for i in range(1000))
    t = threading.Thread(target=lambda: [u.chr.inject(paste[i : i + 37]) for i in range(0, 1000, 37)])
    t.start()
    got = bytearray()
    while len(got) < 1000:
        lsr = u.r(LSR)
        assert not lsr & 0x02
        if lsr & 0x01:
            got.append(u.r(RBR))
    t.join()
    assert bytes(got) == paste


def test_input_before_guest_reads_in_non_fifo_mode(u: Uart) -> None:
    u.chr.inject(b"xyz")
    assert [u.r(RBR) for _ in range(3)] == list(b"xyz")
    assert not u.r(LSR) & 0x03


def test_rbr_empty_returns_last_byte(u: Uart) -> None:
    u.chr.inject(b"Q")
    assert u.r(RBR) == ord("Q")
    assert u.r(RBR) == ord("Q")


def test_reset_restores_power_on_state(u: Uart) -> None:
    u.w(IER, 0x0F)
    u.w(LCR, 0x03)
    u.w(MCR, 0x1F)
    u.w(FCR, 0x01)
    u.dev.reset()
    assert (u.r(IER), u.r(IIR), u.r(LCR), u.r(MCR), u.r(LSR), u.r(MSR)) == (0, 1, 0, 0, 0x60, 0xB0)
    assert not u.irq.level


def test_wide_access_is_bytewise(u: Uart) -> None:
    u.w(SCR, 0x5A)
    assert u.bus.read(BASE + 6, 2) == 0x5AB0


def test_with_file_chardev(tmp_path) -> None:
    path = tmp_path / "console.log"
    chardev = FileChardev(str(path))
    levels: list = []
    uart = Serial16550(IrqLine(lambda n, lvl: levels.append(lvl), 4), chardev)
    for ch in b"Linux version\r\n":
        uart.write(0, 1, ch)
    chardev.close()
    assert path.read_bytes() == b"Linux version\r\n"


def test_state_roundtrip_for_migration(u: Uart) -> None:
    u.w(FCR, 0x41)
    u.w(IER, 0x01)
    u.w(LCR, 0x03)
    u.w(SCR, 0x77)
    u.chr.inject(bytes(range(20)))
    payload = u.dev.save().encode()  # through the stream encoding, as a migration carries it
    other = Uart()
    other.dev.load(SerialState.decode(payload, SerialState.VERSION))
    assert other.irq.level
    assert (other.r(IER), other.r(LCR), other.r(SCR), other.r(IIR)) == (0x01, 0x03, 0x77, 0xC4)
    assert [other.r(RBR) for _ in range(20)] == list(range(20))


def test_linux_8250_autoconfig_sees_a_16550a(u: Uart) -> None:
    """The probe steps Linux' 8250 driver takes, in order, must classify us as a 16550A."""
    u.w(IER, 0x00)
    assert u.r(IER) & 0x0F == 0
    u.w(IER, 0x0F)
    assert u.r(IER) & 0x0F == 0x0F  # a UART is there
    u.w(IER, 0x00)
    u.w(MCR, 0x10 | 0x0A)  # loopback test
    assert u.r(MSR) & 0xF0 == 0x90
    u.w(MCR, 0x00)
    u.w(FCR, 0x01)
    assert u.r(IIR) >> 6 == 3  # FIFO present: 16550A family
    u.w(LCR, 0xBF)  # 16650 EFR probe: offset 2 must not read 0
    assert u.r(IIR) != 0
    u.w(LCR, 0x00)
    u.w(FCR, 0x21)  # 16750 probe: 64-byte FIFO bit must not stick in IIR bit 5
    assert u.r(IIR) & 0xE0 == 0xC0
    u.w(LCR, 0x80)
    u.w(FCR, 0x21)
    u.w(LCR, 0x00)
    assert u.r(IIR) & 0xE0 == 0xC0
    u.w(IER, 0x40)  # XScale UUE bit does not stick
    assert u.r(IER) == 0
    # UART_BUG_THRE check in serial8250_do_startup: re-enabling THRI must raise again
    u.w(IER, 0x02)
    assert u.r(IIR) & 0x0F == 0x02
    u.w(IER, 0x00)
    u.w(IER, 0x02)
    assert not u.r(IIR) & 0x01
    u.w(IER, 0x00)

"""A 16550A UART (8 registers), complete enough for Linux' 8250 driver and firmware consoles.

Register semantics follow the TI/National PC16550D datasheet. Where the datasheet leaves the
VMM a choice we follow QEMU (``hw/char/serial.c``), because guests are tested against it:

* **TX is instantaneous.** A THR write goes straight to the chardev, so THRE and TEMT are set
  again at once and the THRE interrupt re-arms after every write.
* **OUT2 does not gate the IRQ.** On a real PC, MCR.OUT2 enables the UART's IRQ driver towards
  the PIC; QEMU ignores it and so do we: the IRQ output is "an enabled interrupt is pending".
  Linux sets OUT2 anyway, and firmware that forgets it still works under both VMMs.
* **Modem lines.** Outside loopback MSR reports DCD|DSR|CTS (0xB0), as QEMU does for a backend
  without modem-control lines. In loopback CTS/DSR/RI/DCD mirror RTS/DTR/OUT1/OUT2.
* **Character timeout without a clock.** With FIFOs on and fewer bytes than the trigger level
  waiting, the datasheet raises the timeout interrupt (IIR 0x0C) after 4 idle character times.
  We have no baud clock, so the line counts as idle at once: 1..trigger-1 bytes pending report
  0x0C immediately, a full trigger level reports 0x04. Linux drains both the same way.

Host input never overruns: the chardev thread appends to a backlog and the FIFO is topped up
from it whenever the guest reads RBR. Overrun (LSR.OE) happens only in loopback, where the guest
itself can outrun its own receiver. All state is guarded by one lock because the receive
callback runs on the chardev's thread while register accesses come from the vCPU thread.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from refvm.devices.chardev import Chardev
from refvm.devices.irq import IrqLine
from refvm.migration.state import BOOL, U8, U16, DeviceState, buffer, sfield

__all__ = ["Serial16550", "SerialState", "COM1", "COM2", "COM3", "COM4", "REG_COUNT"]

REG_COUNT = 8
COM1 = (0x3F8, 4)  # (iobase, irq)
COM2 = (0x2F8, 3)
COM3 = (0x3E8, 4)
COM4 = (0x2E8, 3)

FIFO_SIZE = 16
BACKLOG_LIMIT = 1 << 20  # host bytes held while the guest is not reading; beyond this we drop
CLOCK_HZ = 1_843_200  # the PC's UART crystal: divisor 1 = 115200 baud

# register offsets
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7

# IER bits
IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
# IIR values (interrupt identification, bits 0-3)
IIR_NO_INT, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_TIMEOUT = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO_ENABLED = 0xC0
# FCR bits
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX = 0x01, 0x02, 0x04
TRIGGER_LEVELS = (1, 4, 8, 14)
# LCR
LCR_DLAB = 0x80
# MCR bits
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
# LSR bits
LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI, LSR_THRE, LSR_TEMT, LSR_FIFO_ERR = (1 << i for i in range(8))
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI
# MSR bits: deltas in the low nibble, line states in the high nibble
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_IDLE_LINES = MSR_DCD | MSR_DSR | MSR_CTS


@dataclass
class SerialState(DeviceState):
    """The UART's migratable state; defaults are the power-on values (reset keeps the host backlog)."""

    VMSD_NAME: ClassVar[str] = "serial"
    VERSION: ClassVar[int] = 1
    ier: int = sfield(U8, 0, lambda v: v <= 0x0F, "a 4-bit IER")
    lcr: int = sfield(U8, 0)
    mcr: int = sfield(U8, 0, lambda v: v <= 0x1F, "a 5-bit MCR")
    lsr: int = sfield(U8, LSR_THRE | LSR_TEMT)
    msr: int = sfield(U8, MSR_IDLE_LINES)
    scr: int = sfield(U8, 0)
    divisor: int = sfield(U16, 0x0C)
    fifo_enabled: bool = sfield(BOOL, False)
    trigger: int = sfield(U8, 1, lambda v: v in TRIGGER_LEVELS, f"a trigger level {TRIGGER_LEVELS}")
    rbr: int = sfield(U8, 0)
    thr_ipending: bool = sfield(BOOL, False)
    rx: bytes = sfield(buffer(FIFO_SIZE), b"")
    backlog: bytes = sfield(buffer(BACKLOG_LIMIT), b"")

    def cross_check(self) -> tuple[str, str] | None:
        capacity = FIFO_SIZE if self.fifo_enabled else 1
        if len(self.rx) > capacity:
            return "rx", f"{len(self.rx)} bytes in a receiver of {capacity}"
        return None


class Serial16550:
    """Bus device for one UART: registers at offsets 0..7 of its I/O window."""

    def __init__(self, irq: IrqLine, chardev: Chardev) -> None:
        self.irq = irq
        self.chardev = chardev
        self._lock = threading.RLock()
        self._backlog: deque[int] = deque()
        self.dropped = 0  # host bytes dropped because the backlog was full
        self._reset_registers()
        chardev.set_receiver(self.receive)

    # ------------------------------------------------------------------ state
    def _reset_registers(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_IDLE_LINES
        self.scr = 0
        self.divisor = 0x0C  # 9600 baud, QEMU's reset value (the datasheet leaves it undefined)
        self.fifo_enabled = False
        self.trigger = 1
        self.rbr = 0  # last byte read, returned again if RBR is read while empty
        self._rx: deque[int] = deque()
        self._thr_ipending = False

    def reset(self) -> None:
        """System reset: registers to power-on values. Host input still in the backlog is kept, so this is
        not ``load(SerialState())`` (whose empty backlog would drop what the user typed)."""
        with self._lock:
            self._reset_registers()
            self._fill_rx()
            self._update_irq()

    @property
    def baud(self) -> int:
        return CLOCK_HZ // (16 * self.divisor) if self.divisor else 0

    @property
    def rx_capacity(self) -> int:
        """The 16-byte FIFO when enabled, else the single RBR holding register."""
        return FIFO_SIZE if self.fifo_enabled else 1

    # ------------------------------------------------------------------ interrupts
    def _pending(self) -> int:
        """The highest-priority enabled pending source, as an IIR code (0x01 = none)."""
        ier = self.ier
        if ier & IER_RLSI and self.lsr & LSR_ERRORS:
            return IIR_RLSI
        if ier & IER_RDI and self._rx:
            if self.fifo_enabled and len(self._rx) < self.trigger:
                return IIR_TIMEOUT
            return IIR_RDI
        if ier & IER_THRI and self._thr_ipending:
            return IIR_THRI
        if ier & IER_MSI and self.msr & 0x0F:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        self.irq.set(self._pending() != IIR_NO_INT)

    # ------------------------------------------------------------------ receive path
    def receive(self, data: bytes) -> None:
        """Host -> guest bytes (chardev thread). Queued, never overrun; see module docstring."""
        with self._lock:
            room = BACKLOG_LIMIT - len(self._backlog)
            if len(data) > room:
                self.dropped += len(data) - max(room, 0)
                data = data[: max(room, 0)]
            self._backlog.extend(data)
            self._fill_rx()
            self._update_irq()

    def _fill_rx(self) -> None:
        """Move backlog bytes into the FIFO while there is room (not in loopback: the
        receiver is then wired to our own transmitter)."""
        if not self.mcr & MCR_LOOP:
            cap = self.rx_capacity
            while self._backlog and len(self._rx) < cap:
                self._rx.append(self._backlog.popleft())
        self._sync_dr()

    def _sync_dr(self) -> None:
        if self._rx:
            self.lsr |= LSR_DR
        else:
            self.lsr &= ~LSR_DR

    def _loopback_receive(self, byte: int) -> None:
        if len(self._rx) >= self.rx_capacity:
            # The shift register overwrites nothing in the FIFO; the new character is lost.
            self.lsr |= LSR_OE
        else:
            self._rx.append(byte)
        self._sync_dr()

    @property
    def backlog(self) -> int:
        """Host bytes waiting behind the FIFO."""
        return len(self._backlog)

    # ------------------------------------------------------------------ modem lines
    def _compute_msr_lines(self) -> int:
        if not self.mcr & MCR_LOOP:
            return MSR_IDLE_LINES
        m = self.mcr
        lines = 0
        if m & MCR_RTS:
            lines |= MSR_CTS
        if m & MCR_DTR:
            lines |= MSR_DSR
        if m & MCR_OUT1:
            lines |= MSR_RI
        if m & MCR_OUT2:
            lines |= MSR_DCD
        return lines

    def _set_msr_lines(self, new: int) -> None:
        old = self.msr & 0xF0
        delta = 0
        if (old ^ new) & MSR_CTS:
            delta |= MSR_DCTS
        if (old ^ new) & MSR_DSR:
            delta |= MSR_DDSR
        if old & MSR_RI and not new & MSR_RI:  # trailing edge of ring indicator only
            delta |= MSR_TERI
        if (old ^ new) & MSR_DCD:
            delta |= MSR_DDCD
        self.msr = new | (self.msr & 0x0F) | delta

    # ------------------------------------------------------------------ bus interface
    def read(self, offset: int, size: int) -> int:
        if size != 1:  # like QEMU's byte-wide region: wider accesses are byte accesses in turn
            return sum(self.read(offset + i, 1) << (8 * i) for i in range(size) if offset + i < REG_COUNT)
        with self._lock:
            value = self._read_reg(offset)
            self._update_irq()
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            for i in range(size):
                if offset + i < REG_COUNT:
                    self.write(offset + i, 1, (value >> (8 * i)) & 0xFF)
            return
        with self._lock:
            self._write_reg(offset, value & 0xFF)
            self._update_irq()

    def _read_reg(self, reg: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR:
            if dlab:
                return self.divisor & 0xFF
            if self._rx:
                self.rbr = self._rx.popleft()
            self._fill_rx()
            return self.rbr
        if reg == IER:
            return (self.divisor >> 8) if dlab else self.ier
        if reg == IIR:
            code = self._pending()
            if code == IIR_THRI:
                self._thr_ipending = False  # reading IIR acknowledges a THRE interrupt
            return code | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            value = self.lsr
            if self.fifo_enabled and value & LSR_ERRORS:
                value |= LSR_FIFO_ERR
            self.lsr &= ~(LSR_ERRORS | LSR_FIFO_ERR)
            return value
        if reg == MSR:
            value = self.msr
            self.msr &= 0xF0
            return value
        if reg == SCR:
            return self.scr
        return 0xFF

    def _write_reg(self, reg: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if reg == THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
                return
            self._thr_ipending = False
            if self.mcr & MCR_LOOP:
                self._loopback_receive(value)
            else:
                self.chardev.write(bytes((value,)))
            # The character left at once: THR and the shift register are empty again.
            self.lsr |= LSR_THRE | LSR_TEMT
            self._thr_ipending = True
        elif reg == IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
                return
            changed = (self.ier ^ value) & 0x0F
            self.ier = value & 0x0F
            if changed & IER_THRI:
                # Enabling THRE interrupts while THR is empty raises one at once (datasheet and
                # QEMU); Linux' 8250 relies on this to start transmission.
                self._thr_ipending = bool(self.ier & IER_THRI and self.lsr & LSR_THRE)
        elif reg == FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            was_loop = self.mcr & MCR_LOOP
            self.mcr = value & 0x1F
            self._set_msr_lines(self._compute_msr_lines())
            if was_loop and not self.mcr & MCR_LOOP:
                self._fill_rx()  # the line is connected to the host again
        elif reg == SCR:
            self.scr = value
        # LSR and MSR are read-only (writes are factory test hooks on real parts): ignored.

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self.fifo_enabled:
            # Switching FIFO mode on or off clears both FIFOs (datasheet, FCR bit 0).
            self._rx.clear()
            self.fifo_enabled = enable
        if not enable:
            # With FCR0 clear the other FCR bits cannot be programmed.
            self.trigger = 1
            self._fill_rx()
            return
        if value & FCR_CLEAR_RX:
            self._rx.clear()
            self.lsr &= ~(LSR_DR | LSR_FIFO_ERR)
        # FCR_CLEAR_TX: the TX FIFO is always empty here.
        self.trigger = TRIGGER_LEVELS[value >> 6]
        self._fill_rx()

    # ------------------------------------------------------------------ migration
    def save(self) -> SerialState:
        """Guest-visible state as data; the backlog is host input the guest has not seen yet and travels too,
        so nothing typed is lost."""
        with self._lock:
            return SerialState(
                ier=self.ier, lcr=self.lcr, mcr=self.mcr, lsr=self.lsr, msr=self.msr, scr=self.scr,
                divisor=self.divisor, fifo_enabled=self.fifo_enabled, trigger=self.trigger, rbr=self.rbr,
                thr_ipending=self._thr_ipending, rx=bytes(self._rx), backlog=bytes(self._backlog))

    def load(self, state: SerialState) -> None:
        """Restore `state` (validated first: it is guest-controlled) without register-write side effects."""
        state.validate()
        with self._lock:
            self.ier, self.lcr, self.mcr, self.lsr = state.ier, state.lcr, state.mcr, state.lsr
            self.msr, self.scr, self.divisor, self.rbr = state.msr, state.scr, state.divisor, state.rbr
            self.fifo_enabled, self.trigger = state.fifo_enabled, state.trigger
            self._thr_ipending = state.thr_ipending
            self._rx = deque(state.rx)
            self._backlog = deque(state.backlog)
            self._update_irq()

    def __repr__(self) -> str:
        return (
            f"<Serial16550 ier={self.ier:#x} lcr={self.lcr:#x} mcr={self.mcr:#x} lsr={self.lsr:#x} "
            f"msr={self.msr:#x} rx={len(self._rx)} backlog={len(self._backlog)}>"
        )

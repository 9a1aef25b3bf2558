"""The three ways a PC guest asks for a reset, as small bus devices.

* port 0x64 (i8042 command): 0xFE pulses the CPU reset line. Linux' ``reboot=k`` path and many
  boot loaders use it. We have no keyboard controller, so reads of the status port return
  0x1C ("system flag, last write was a command, not inhibited", output and input buffers
  empty) -- Linux' i8042 probe then finds no data and gives up instead of spinning.
* port 0x92 (System Control Port A, "fast A20 and init"): a 0->1 transition of bit 0 resets;
  bit 1 is the A20 gate, which we record and read back.
* port 0xCF9 (Reset Control Register, PIIX/ICH): a write with bit 2 (RST_CPU) set resets; bit 1
  (SYS_RST) chooses hard (1) or soft (0) reset and is recorded in :attr:`ResetControl.hard`.
  Like QEMU we act on any write with bit 2 set, not only on a 0->1 transition.

Each device calls ``on_reset()``; the machine decides what a reset means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from refvm.migration.state import U8, DeviceState, sfield

__all__ = ["KbdReset", "ResetPort92", "ResetControl", "ResetControlState", "I8042_STATUS_IDLE"]

OnReset = Callable[[], None]

I8042_STATUS_IDLE = 0x1C
I8042_CMD_PULSE_RESET = 0xFE


class KbdReset:
    """Minimal i8042 command/status port (0x64): only the reset pulse is implemented."""

    def __init__(self, on_reset: OnReset) -> None:
        self.on_reset = on_reset
        self.resets = 0

    def read(self, offset: int, size: int) -> int:
        # The machine registers one port; a wider read sees floating bus above the status byte.
        return (((1 << (8 * size)) - 1) & ~0xFF) | I8042_STATUS_IDLE

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and value & 0xFF == I8042_CMD_PULSE_RESET:
            self.resets += 1
            self.on_reset()

    def reset(self) -> None:
        """Device reset: nothing to clear (the reset counter is diagnostics, kept across resets)."""


class ResetPort92:
    """System Control Port A (0x92): bit 0 fast reset (on 0->1), bit 1 A20 gate."""

    def __init__(self, on_reset: OnReset) -> None:
        self.on_reset = on_reset
        self.value = 0
        self.resets = 0

    @property
    def a20(self) -> bool:
        return bool(self.value & 0x02)

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            return
        value &= 0xFF
        rising = value & 0x01 and not self.value & 0x01
        # Bit 0 reads back as 0 after the reset it triggered; keep the rest (A20).
        self.value = value & ~0x01 if rising else value
        if rising:
            self.resets += 1
            self.on_reset()

    def reset(self) -> None:
        self.value = 0


@dataclass
class ResetControlState(DeviceState):
    """The Reset Control Register as the guest last wrote it: its System Reset bit says whether the next RST_CPU
    write asks for a hard or a soft reset, so a guest that chose before a migration gets that reset after it
    (QEMU carries it as PIIX3's "rcr")."""

    VMSD_NAME = "piix3-rcr"

    value: int = sfield(U8, 0)


class ResetControl:
    """Reset Control Register (0xCF9)."""

    RST_CPU = 0x04
    SYS_RST = 0x02

    def __init__(self, on_reset: OnReset) -> None:
        self.on_reset = on_reset
        self.value = 0
        self.hard: bool | None = None  # kind of the last reset requested, None before any
        self.resets = 0

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            return
        self.value = value & 0xFF
        if self.value & self.RST_CPU:
            self.hard = bool(self.value & self.SYS_RST)
            self.resets += 1
            self.on_reset()

    def reset(self) -> None:
        """Device reset: the register returns to 0 (the machine calls this after on_reset)."""
        self.load(ResetControlState())

    def save(self) -> ResetControlState:
        return ResetControlState(self.value).validate()

    def load(self, state: ResetControlState) -> None:
        """The value only: loading is not a write, so it requests no reset even with RST_CPU set."""
        self.value = state.value

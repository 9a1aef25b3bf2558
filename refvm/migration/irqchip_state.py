"""The VM-wide in-kernel devices as data: the two i8259 PICs, the IOAPIC, the i8254 PIT and kvmclock.

Sections as QEMU names them: "i8259" (instance 0 = master, 1 = slave), "ioapic", "i8254" and "kvmclock".  Each
State's fields are the uapi struct's members (kvm_pic_state, kvm_ioapic_state, kvm_pit_state2,
kvm_clock_data), checked against what the hardware they model can hold, since a stream is guest input.

Two values are host times and so cannot travel as they are: a PIT channel's count_load_time (the host's
CLOCK_MONOTONIC when the count was loaded) travels as the time elapsed since then, and is made absolute again
on the destination's clock; kvmclock travels as the guest's clock in ns, which the destination sets (guest
time stands still while the guest is stopped, as in QEMU).
"""
from __future__ import annotations

import time
from typing import Any

from refvm.migration.cpu_state import refused, state_class
from refvm.migration.state import BOOL, U8, U16, U32, U64, DeviceState, Kind, sfield

U64X24 = Kind("uint64", width=8, count=24)
IOAPIC_BASE = 0xFEC00000
#: kvm_pic_state members: (name, kind, check, rule); BOOLs are the one-bit modes.
PIC_FIELDS = (
    ("last_irr", U8, None, ""), ("irr", U8, None, ""), ("imr", U8, None, ""), ("isr", U8, None, ""),
    ("priority_add", U8, lambda v: v < 8, "an IRQ number (0..7)"),
    ("irq_base", U8, lambda v: v & 7 == 0, "a multiple of 8 (ICW2's vector base)"),
    ("read_reg_select", BOOL, None, ""), ("poll", BOOL, None, ""), ("special_mask", BOOL, None, ""),
    ("init_state", U8, lambda v: v < 4, "an ICW step (0..3)"), ("auto_eoi", BOOL, None, ""),
    ("rotate_on_auto_eoi", BOOL, None, ""), ("special_fully_nested_mode", BOOL, None, ""),
    ("init4", BOOL, None, ""), ("elcr", U8, None, ""), ("elcr_mask", U8, None, ""),
)
#: kvm_pit_channel_state members, count_load_time aside (it travels as `elapsed_ns`).
PIT_CHANNEL_FIELDS = (
    ("count", U32, lambda v: v <= 0x10000, "a 16-bit count (0x10000 for 0)"), ("latched_count", U16, None, ""),
    ("count_latched", U8, lambda v: v <= 4, "a latch read state (0..4)"), ("status_latched", BOOL, None, ""),
    ("status", U8, None, ""), ("read_state", U8, lambda v: v <= 4, "an RW_STATE (0..4)"),
    ("write_state", U8, lambda v: v <= 4, "an RW_STATE (0..4)"), ("write_latch", U8, None, ""),
    ("rw_mode", U8, lambda v: v <= 3, "an access mode (0..3)"),
    ("mode", U8, lambda v: v <= 7 or v == 0xFF, "a mode (0..7, 0xff: never programmed)"),
    ("bcd", BOOL, None, ""), ("gate", BOOL, None, ""),
)
MAX_ELAPSED_NS = 1 << 62


def _sfields(prefix: str, table: tuple) -> list[tuple[str, Any]]:
    return [(prefix + name, sfield(kind, False if kind is BOOL else 0, check, rule))
            for name, kind, check, rule in table]


PicState = state_class("PicState", "i8259", _sfields("", PIC_FIELDS), "One in-kernel i8259 (kvm_pic_state).")
IoapicState = state_class("IoapicState", "ioapic", [
    ("base_address", sfield(U64, IOAPIC_BASE, lambda v: v == IOAPIC_BASE, f"the IOAPIC's address {IOAPIC_BASE:#x}")),
    ("ioregsel", sfield(U32, 0, lambda v: v <= 0xFF, "a register index (0..0xff)")),
    ("id", sfield(U32, 0, lambda v: v <= 0xFF, "an APIC id (0..0xff)")),
    ("irr", sfield(U32, 0, lambda v: v < 1 << 24, "a mask of 24 pins")),
    ("redirtbl", sfield(U64X24, (1 << 16,) * 24)),
], "The in-kernel IOAPIC (kvm_ioapic_state): 24 redirection entries.")
PitState = state_class("PitState", "i8254", [
    *(f for ch in range(3) for f in _sfields(f"ch{ch}_", PIT_CHANNEL_FIELDS)),
    *((f"ch{ch}_elapsed_ns", sfield(U64, 0, lambda v: v < MAX_ELAPSED_NS, "below 2^62 ns")) for ch in range(3)),
    ("flags", sfield(U32, 0, lambda v: v <= 3, "KVM_PIT_FLAGS_* (HPET_LEGACY 1, SPEAKER_DUMMY 2)")),
], "The in-kernel i8254 PIT (kvm_pit_state2); each channel's load time as ns elapsed before the save.")
KvmclockState = state_class("KvmclockState", "kvmclock", [("clock", sfield(U64, 0))],
                            "kvmclock: the guest's clock in ns when it was stopped (KVM_GET_CLOCK).")


def _fields_of(c: Any, table: tuple, values: dict[str, Any], prefix: str = "") -> None:
    for name, kind, _, _ in table:
        raw = int(getattr(c, name))
        values[prefix + name] = bool(raw) if kind is BOOL else raw


def _fill(c: Any, table: tuple, state: Any, prefix: str = "") -> None:
    for name, _, _, _ in table:
        setattr(c, name, int(getattr(state, prefix + name)))


class _VmDevice:
    """Base of the VM-wide devices: a Vm and the section name its errors carry."""

    SECTION = ""

    def __init__(self, vm: Any, instance: int = 0) -> None:
        self.vm, self.instance = vm, instance

    def _apply(self, fn: Any, *args: Any) -> None:
        from refvm.kvm import KvmError

        try:
            fn(*args)
        except (KvmError, ValueError) as err:
            raise refused(self.SECTION, self.instance, err) from None


class KvmPic(_VmDevice):
    """PIC master (instance 0) or slave (instance 1)."""

    SECTION = "i8259"

    def _chip(self) -> str:
        return ("pic-master", "pic-slave")[self.instance]

    def save(self) -> DeviceState:
        from refvm.kvm.state import view

        c = view("struct kvm_irqchip", self.vm.get_irqchip(self._chip()))
        values: dict[str, Any] = {}
        _fields_of(c.chip.pic, PIC_FIELDS, values)
        return PicState(**values).validate()

    def load(self, state: Any) -> None:
        from refvm.kvm import ioctls as I
        from refvm.kvm.state import blob, view

        c = view("struct kvm_irqchip")
        c.chip_id = (I.KVM_IRQCHIP_PIC_MASTER, I.KVM_IRQCHIP_PIC_SLAVE)[self.instance]
        _fill(c.chip.pic, PIC_FIELDS, state)
        self._apply(self.vm.set_irqchip, blob(c))


class KvmIoapic(_VmDevice):
    SECTION = "ioapic"

    def save(self) -> DeviceState:
        from refvm.kvm.state import view

        io = view("struct kvm_irqchip", self.vm.get_irqchip("ioapic")).chip.ioapic
        return IoapicState(base_address=int(io.base_address), ioregsel=int(io.ioregsel), id=int(io.id),
                           irr=int(io.irr), redirtbl=tuple(int(v) for v in io.redirtbl)).validate()

    def load(self, state: Any) -> None:
        from refvm.kvm import ioctls as I
        from refvm.kvm.state import blob, view

        c = view("struct kvm_irqchip")
        c.chip_id = I.KVM_IRQCHIP_IOAPIC
        io = c.chip.ioapic
        io.base_address, io.ioregsel, io.id, io.irr = state.base_address, state.ioregsel, state.id, state.irr
        for pin, entry in enumerate(state.redirtbl):
            io.redirtbl[pin] = entry
        self._apply(self.vm.set_irqchip, blob(c))


class KvmPit(_VmDevice):
    SECTION = "i8254"

    def save(self) -> DeviceState:
        from refvm.kvm.state import view

        pit = view("struct kvm_pit_state2", self.vm.get_pit2())
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        values: dict[str, Any] = {"flags": int(pit.flags)}
        for ch in range(3):
            c = pit.channels[ch]
            _fields_of(c, PIT_CHANNEL_FIELDS, values, f"ch{ch}_")
            values[f"ch{ch}_elapsed_ns"] = min(max(now - int(c.count_load_time), 0), MAX_ELAPSED_NS - 1)
        return PitState(**values).validate()

    def load(self, state: Any) -> None:
        from refvm.kvm.state import blob, view

        pit = view("struct kvm_pit_state2")
        pit.flags = state.flags
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for ch in range(3):
            c = pit.channels[ch]
            _fill(c, PIT_CHANNEL_FIELDS, state, f"ch{ch}_")
            c.count_load_time = now - getattr(state, f"ch{ch}_elapsed_ns")
        self._apply(self.vm.set_pit2, blob(pit))


class KvmClock(_VmDevice):
    SECTION = "kvmclock"

    def save(self) -> DeviceState:
        return KvmclockState(clock=self.vm.get_clock().clock).validate()

    def load(self, state: Any) -> None:
        self._apply(self.vm.set_clock, state.clock)

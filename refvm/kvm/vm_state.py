"""The VM-wide state ioctls: the in-kernel interrupt controllers (PIC master/slave, IOAPIC), PIT and clock.

Mixed into ``Vm``. Each needs its device created first (``create_irqchip``, ``create_pit2``).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ioctls as I
from ._sys import ioctl_ptr
from .state import blob_accessors, get_blob, set_blob, view

#: chip_id of each in-kernel interrupt controller (KVM_IRQCHIP_*).
IRQCHIPS = {"pic-master": I.KVM_IRQCHIP_PIC_MASTER, "pic-slave": I.KVM_IRQCHIP_PIC_SLAVE,
            "ioapic": I.KVM_IRQCHIP_IOAPIC}  # fmt: skip


@dataclass(frozen=True)
class ClockData:
    """kvmclock's view of guest time: ``clock`` in ns, plus the flags and host stamps KVM fills in."""

    clock: int
    flags: int = 0
    realtime: int = 0
    host_tsc: int = 0


class VmStateMixin:
    """Requires ``self._fd``, the VM's file descriptor."""

    _fd: int

    get_pit2, set_pit2 = blob_accessors(
        "pit2", I.KVM_GET_PIT2, I.KVM_SET_PIT2,
        "KVM_GET_PIT2: the in-kernel i8254's three channels and flags")  # fmt: skip

    def get_irqchip(self, chip: str) -> bytes:
        """KVM_GET_IRQCHIP of one controller ('pic-master', 'pic-slave' or 'ioapic'): a struct kvm_irqchip."""
        return get_blob(self._fd, I.KVM_GET_IRQCHIP, "irqchip", {"chip_id": _chip_id(chip)})

    def set_irqchip(self, raw: bytes) -> None:
        """KVM_SET_IRQCHIP: the struct's chip_id says which controller it restores."""
        chip_id = view("struct kvm_irqchip", raw).chip_id
        if chip_id not in IRQCHIPS.values():
            raise ValueError(f"irqchip: chip_id {chip_id} is not a PIC or the IOAPIC")
        set_blob(self._fd, I.KVM_SET_IRQCHIP, "irqchip", raw)

    def get_clock(self) -> ClockData:
        """KVM_GET_CLOCK: the guest's kvmclock time now."""
        c = view("struct kvm_clock_data")
        ioctl_ptr(self._fd, I.KVM_GET_CLOCK, c)
        return ClockData(int(c.clock), int(c.flags), int(c.realtime), int(c.host_tsc))

    def set_clock(self, clock: int) -> None:
        """KVM_SET_CLOCK: set the guest's kvmclock to `clock` ns (flags 0: no realtime adjustment)."""
        c = view("struct kvm_clock_data")
        c.clock = clock
        ioctl_ptr(self._fd, I.KVM_SET_CLOCK, c, f"clock {clock}")


def _chip_id(chip: str) -> int:
    try:
        return IRQCHIPS[chip]
    except KeyError:
        raise ValueError(f"irqchip: unknown chip {chip!r} (known: {', '.join(IRQCHIPS)})") from None

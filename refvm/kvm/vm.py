"""Vm: one KVM virtual machine (memory slots, in-kernel irqchip/PIT, eventfds, MSI, dirty log, vCPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import ioctls as I
from ._ffi import ffi
from ._sys import ioctl_int, ioctl_ptr
from .vm_state import VmStateMixin

if TYPE_CHECKING:
    from .system import Kvm
    from .vcpu import Vcpu


@dataclass(frozen=True)
class IrqchipRoute:
    """GSI -> in-kernel PIC/IOAPIC pin (irqchip 0 = master PIC, 1 = slave PIC, 2 = IOAPIC)."""

    gsi: int
    irqchip: int
    pin: int


@dataclass(frozen=True)
class MsiRoute:
    """GSI -> MSI message; lets an irqfd deliver MSI(-X) without a userspace round trip."""

    gsi: int
    address: int
    data: int
    devid: int = 0


class Vm(VmStateMixin):
    """A KVM VM file descriptor. Created by ``Kvm.create_vm()``."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self._fd = fd
        self.vcpus: list[Vcpu] = []

    @property
    def fd(self) -> int:
        return self._fd

    def fileno(self) -> int:
        return self._fd

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM (answers may be VM-specific, e.g. with a VM type)."""
        return ioctl_int(self._fd, I.KVM_CHECK_EXTENSION, cap)

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """Map (or with ``memory_size=0`` delete) a slot of host memory at ``guest_phys_addr``."""
        r = ffi.new(
            "struct kvm_userspace_memory_region *",
            {
                "slot": slot,
                "flags": flags,
                "guest_phys_addr": guest_phys_addr,
                "memory_size": memory_size,
                "userspace_addr": userspace_addr,
            },
        )
        ioctl_ptr(
            self._fd, I.KVM_SET_USER_MEMORY_REGION, r,
            f"slot {slot} gpa {guest_phys_addr:#x} size {memory_size:#x} flags {flags:#x}",
        )  # fmt: skip

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR: 3 pages of guest-physical space Intel VMX needs for real-mode emulation."""
        ioctl_int(self._fd, I.KVM_SET_TSS_ADDR, addr, f"addr {addr:#x}")

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for the EPT identity map (Intel, unrestricted guest off)."""
        p = ffi.new("uint64_t *", addr)
        ioctl_ptr(self._fd, I.KVM_SET_IDENTITY_MAP_ADDR, p, f"addr {addr:#x}")

    def create_irqchip(self) -> None:
        """In-kernel PIC + IOAPIC + per-vCPU LAPIC. Afterwards HLT no longer exits to userspace."""
        ioctl_int(self._fd, I.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        """In-kernel i8254 PIT (needs the irqchip first)."""
        ioctl_ptr(self._fd, I.KVM_CREATE_PIT2, ffi.new("struct kvm_pit_config *", {"flags": flags}))

    def set_pit_reinject(self, reinject: bool) -> None:
        """Whether the in-kernel PIT re-injects ticks the guest missed (QEMU's kvm-pit lost_tick_policy: delay
        re-injects, discard drops them)."""
        arg = ffi.new("struct kvm_reinject_control *", {"pit_reinject": int(reinject)})
        ioctl_ptr(self._fd, I.KVM_REINJECT_CONTROL, arg, "KVM_REINJECT_CONTROL")

    def irq_line(self, irq: int, level: int) -> None:
        """Set a GSI's line level on the in-kernel irqchip (edge = raise then lower)."""
        ioctl_ptr(
            self._fd, I.KVM_IRQ_LINE, ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level}),
            f"irq {irq} level {level}",
        )  # fmt: skip

    def signal_msi(self, address: int, data: int, devid: int = 0) -> int:
        """Inject one MSI. Returns >0 if delivered, 0 if the guest blocked it."""
        m = ffi.new(
            "struct kvm_msi *",
            {"address_lo": address & 0xFFFFFFFF, "address_hi": address >> 32, "data": data, "devid": devid},
        )
        return ioctl_ptr(self._fd, I.KVM_SIGNAL_MSI, m, f"address {address:#x} data {data:#x}")

    def ioeventfd(
        self,
        fd: int,
        addr: int,
        length: int,
        datamatch: int | None = None,
        pio: bool = False,
        deassign: bool = False,
    ) -> None:
        """Make a guest write to ``addr`` signal eventfd ``fd`` inside the kernel (no exit to us)."""
        flags = 0
        if datamatch is not None:
            flags |= I.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= I.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= I.KVM_IOEVENTFD_FLAG_DEASSIGN
        e = ffi.new(
            "struct kvm_ioeventfd *",
            {"datamatch": datamatch or 0, "addr": addr, "len": length, "fd": fd, "flags": flags},
        )
        ioctl_ptr(
            self._fd, I.KVM_IOEVENTFD, e,
            f"{'pio' if pio else 'mmio'} {addr:#x} len {length} fd {fd}{' deassign' if deassign else ''}",
        )  # fmt: skip

    def irqfd(self, fd: int, gsi: int, resample_fd: int | None = None, deassign: bool = False) -> None:
        """Make a write to eventfd ``fd`` raise ``gsi``; with ``resample_fd`` it is level-triggered."""
        flags = 0
        if resample_fd is not None:
            flags |= I.KVM_IRQFD_FLAG_RESAMPLE
        if deassign:
            flags |= I.KVM_IRQFD_FLAG_DEASSIGN
        e = ffi.new(
            "struct kvm_irqfd *",
            {"fd": fd, "gsi": gsi, "flags": flags, "resamplefd": resample_fd or 0},
        )
        ioctl_ptr(self._fd, I.KVM_IRQFD, e, f"fd {fd} gsi {gsi}{' deassign' if deassign else ''}")

    def set_gsi_routing(self, routes: list[IrqchipRoute | MsiRoute]) -> None:
        """Replace the whole GSI routing table (KVM_SET_GSI_ROUTING)."""
        n = len(routes)
        t = ffi.new("struct kvm_irq_routing *", {"nr": n, "entries": n})
        for i, r in enumerate(routes):
            e = t.entries[i]
            e.gsi = r.gsi
            if isinstance(r, MsiRoute):
                e.type = I.KVM_IRQ_ROUTING_MSI
                e.u.msi.address_lo = r.address & 0xFFFFFFFF
                e.u.msi.address_hi = r.address >> 32
                e.u.msi.data = r.data
                e.u.msi.devid = r.devid
            else:
                e.type = I.KVM_IRQ_ROUTING_IRQCHIP
                e.u.irqchip.irqchip = r.irqchip
                e.u.irqchip.pin = r.pin
        ioctl_ptr(self._fd, I.KVM_SET_GSI_ROUTING, t, f"{n} routes")

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM (e.g. KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)."""
        c = ffi.new("struct kvm_enable_cap *", {"cap": cap, "flags": flags, "args": list(args)})
        ioctl_ptr(self._fd, I.KVM_ENABLE_CAP, c, f"cap {cap}")

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS: write-protect again every page whose ring entry the VMM marked RESET, and
        reuse those entries; returns how many were reset."""
        return ioctl_int(self._fd, I.KVM_RESET_DIRTY_RINGS, 0)

    def get_dirty_log(self, slot: int, npages: int) -> bytes:
        """KVM_GET_DIRTY_LOG: one bit per page of the slot (needs KVM_MEM_LOG_DIRTY_PAGES on it).

        The kernel writes whole u64 words, so the buffer is rounded up to 8 bytes; the result is
        trimmed to ``ceil(npages / 8)`` bytes.
        """
        nbytes = (npages + 63) // 64 * 8
        bitmap = ffi.new("uint8_t[]", nbytes)
        d = ffi.new("struct kvm_dirty_log *", {"slot": slot, "dirty_bitmap": bitmap})
        ioctl_ptr(self._fd, I.KVM_GET_DIRTY_LOG, d, f"slot {slot}")
        return bytes(ffi.buffer(bitmap, (npages + 7) // 8))

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap: bytes) -> None:
        """KVM_CLEAR_DIRTY_LOG (manual protect mode): write-protect again the pages set in `bitmap`, whose bit 0
        is `first_page` (a multiple of 64; `num_pages` too, unless the range ends at the slot's end)."""
        buf = ffi.new("uint8_t[]", max((num_pages + 63) // 64 * 8, len(bitmap)))
        ffi.memmove(buf, bitmap, len(bitmap))
        c = ffi.new("struct kvm_clear_dirty_log *",
                    {"slot": slot, "num_pages": num_pages, "first_page": first_page, "dirty_bitmap": buf})
        ioctl_ptr(self._fd, I.KVM_CLEAR_DIRTY_LOG, c, f"slot {slot} pages {first_page:#x}+{num_pages:#x}")

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU and map its kvm_run page."""
        from .vcpu import Vcpu

        fd = ioctl_int(self._fd, I.KVM_CREATE_VCPU, vcpu_id, f"vcpu id {vcpu_id}")
        try:
            v = Vcpu(self, fd, vcpu_id, self.kvm.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise
        self.vcpus.append(v)
        return v

    def close(self) -> None:
        """Close all vCPUs, then the VM fd (guest memory is the caller's and stays mapped)."""
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

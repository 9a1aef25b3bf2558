"""KVM capability numbers (``KVM_CAP_*`` from <linux/kvm.h>) and the set refvm relies on.

``REQUIRED`` drives ``refvm doctor``'s exit status: the machine model needs an in-kernel irqchip and PIT,
eventfd-based notifications and interrupts, MSI injection and ``immediate_exit`` to stop vCPUs cleanly.
"""

from __future__ import annotations

KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SYNC_MMU = 16
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223

#: number -> name, for reports.
NAMES: dict[int, str] = {v: k for k, v in globals().items() if k.startswith("KVM_CAP_")}

#: Capabilities without which refvm's machine model cannot run (doctor exits 1 if one is missing).
REQUIRED: tuple[int, ...] = (
    KVM_CAP_USER_MEMORY,
    KVM_CAP_SET_TSS_ADDR,
    KVM_CAP_EXT_CPUID,
    KVM_CAP_IRQCHIP,
    KVM_CAP_PIT2,
    KVM_CAP_IOEVENTFD,
    KVM_CAP_IRQFD,
    KVM_CAP_SIGNAL_MSI,
    KVM_CAP_IRQ_ROUTING,
    KVM_CAP_IMMEDIATE_EXIT,
)

#: Capabilities refvm uses when present (features degrade or skip without them).
OPTIONAL: tuple[int, ...] = (
    KVM_CAP_IRQFD_RESAMPLE,
    KVM_CAP_READONLY_MEM,
    KVM_CAP_COALESCED_MMIO,
    KVM_CAP_COALESCED_PIO,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
    KVM_CAP_SET_IDENTITY_MAP_ADDR,
    KVM_CAP_INTERNAL_ERROR_DATA,
    KVM_CAP_IOEVENTFD_ANY_LENGTH,
    KVM_CAP_NR_VCPUS,
    KVM_CAP_MAX_VCPUS,
    KVM_CAP_NR_MEMSLOTS,
)


def name(cap: int) -> str:
    """Return the ``KVM_CAP_*`` name of a capability number (or ``KVM_CAP_<n>`` if unknown)."""
    return NAMES.get(cap, f"KVM_CAP_{cap}")

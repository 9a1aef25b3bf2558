"""KVM ioctl request numbers, computed from the asm-generic _IO/_IOR/_IOW/_IOWR encoding.

Computing them (rather than pasting hex constants) keeps each number tied to the struct size declared
in ``_ffi.py``: if a struct is declared with the wrong size, the request number changes and
``tests/test_kvm_ioctls.py`` (which compares against the C headers) names the ioctl that broke.
"""

from __future__ import annotations

from ._ffi import ffi

# asm-generic/ioctl.h layout (x86): nr 8 bits, type 8 bits, size 14 bits, dir 2 bits.
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    """Encode one request number exactly as the kernel's _IOC() macro does."""
    if size >= 1 << 14:
        raise ValueError(f"ioctl argument size {size} does not fit in 14 bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (typ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, KVMIO, nr, 0)


def _ior(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ, KVMIO, nr, ffi.sizeof(ctype))


def _iow(nr: int, ctype: str) -> int:
    return _ioc(_IOC_WRITE, KVMIO, nr, ffi.sizeof(ctype))


def _iowr(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, KVMIO, nr, ffi.sizeof(ctype))


# /dev/kvm (system) ioctls
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, "struct kvm_cpuid2")
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, "struct kvm_msr_list")

# VM ioctls
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, "struct kvm_dirty_log")
KVM_CLEAR_DIRTY_LOG = _iowr(0xC0, "struct kvm_clear_dirty_log")
KVM_RESET_DIRTY_RINGS = _io(0xC7)  # with KVM_CAP_DIRTY_LOG_RING: re-protect the pages harvested from every ring
KVM_SET_USER_MEMORY_REGION = _iow(0x46, "struct kvm_userspace_memory_region")
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, "uint64_t")
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, "struct kvm_irq_level")
KVM_SET_GSI_ROUTING = _iow(0x6A, "struct kvm_irq_routing")
KVM_IRQFD = _iow(0x76, "struct kvm_irqfd")
KVM_CREATE_PIT2 = _iow(0x77, "struct kvm_pit_config")
KVM_REINJECT_CONTROL = _io(0x71)  # takes a struct kvm_reinject_control * (declared _IO in the kernel headers)
KVM_IOEVENTFD = _iow(0x79, "struct kvm_ioeventfd")
KVM_SIGNAL_MSI = _iow(0xA5, "struct kvm_msi")
KVM_ENABLE_CAP = _iow(0xA3, "struct kvm_enable_cap")  # also a vCPU ioctl
KVM_GET_IRQCHIP = _iowr(0x62, "struct kvm_irqchip")
KVM_SET_IRQCHIP = _ior(0x63, "struct kvm_irqchip")  # _IOR for a set: the kernel's historic encoding
KVM_GET_PIT2 = _ior(0x9F, "struct kvm_pit_state2")
KVM_SET_PIT2 = _iow(0xA0, "struct kvm_pit_state2")
KVM_SET_CLOCK = _iow(0x7B, "struct kvm_clock_data")
KVM_GET_CLOCK = _ior(0x7C, "struct kvm_clock_data")

# vCPU ioctls
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, "struct kvm_regs")
KVM_SET_REGS = _iow(0x82, "struct kvm_regs")
KVM_GET_SREGS = _ior(0x83, "struct kvm_sregs")
KVM_SET_SREGS = _iow(0x84, "struct kvm_sregs")
KVM_GET_MSRS = _iowr(0x88, "struct kvm_msrs")
KVM_SET_MSRS = _iow(0x89, "struct kvm_msrs")
KVM_GET_FPU = _ior(0x8C, "struct kvm_fpu")
KVM_SET_FPU = _iow(0x8D, "struct kvm_fpu")
KVM_SET_CPUID2 = _iow(0x90, "struct kvm_cpuid2")
KVM_GET_CPUID2 = _iowr(0x91, "struct kvm_cpuid2")
KVM_GET_LAPIC = _ior(0x8E, "struct kvm_lapic_state")
KVM_SET_LAPIC = _iow(0x8F, "struct kvm_lapic_state")
KVM_GET_MP_STATE = _ior(0x98, "struct kvm_mp_state")
KVM_SET_MP_STATE = _iow(0x99, "struct kvm_mp_state")
KVM_GET_VCPU_EVENTS = _ior(0x9F, "struct kvm_vcpu_events")
KVM_SET_VCPU_EVENTS = _iow(0xA0, "struct kvm_vcpu_events")
KVM_GET_DEBUGREGS = _ior(0xA1, "struct kvm_debugregs")
KVM_SET_DEBUGREGS = _iow(0xA2, "struct kvm_debugregs")
KVM_SET_TSC_KHZ = _io(0xA2)  # the argument is the frequency in kHz; needs KVM_CAP_TSC_CONTROL
KVM_GET_TSC_KHZ = _io(0xA3)  # returns the vCPU's TSC frequency in kHz (KVM_CAP_GET_TSC_KHZ)
KVM_GET_XSAVE = _ior(0xA4, "struct kvm_xsave")
KVM_SET_XSAVE = _iow(0xA5, "struct kvm_xsave")
KVM_GET_XCRS = _ior(0xA6, "struct kvm_xcrs")
KVM_SET_XCRS = _iow(0xA7, "struct kvm_xcrs")

#: name -> number, for error messages and for the header cross-check test.
IOCTLS: dict[str, int] = {k: v for k, v in globals().items() if k.startswith("KVM_") and isinstance(v, int)}
NAMES: dict[int, str] = {v: k for k, v in IOCTLS.items()}

# Flag bits used with the ioctls above.
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0  # KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's enable argument
# Dirty ring (KVM_CAP_DIRTY_LOG_RING): each vCPU's ring of struct kvm_dirty_gfn is mmap'd from the vCPU fd at
# page KVM_DIRTY_LOG_PAGE_OFFSET (x86's value, <asm/kvm.h>); an entry is DIRTY when KVM filled it, RESET once
# the VMM harvested it.
KVM_DIRTY_LOG_PAGE_OFFSET = 64
KVM_DIRTY_GFN_F_DIRTY = 1 << 0
KVM_DIRTY_GFN_F_RESET = 1 << 1
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1
KVM_PIT_SPEAKER_DUMMY = 1
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
# KVM_GET/SET_IRQCHIP chip_id; KVM_GET/SET_MP_STATE values; KVM_SET_VCPU_EVENTS flags.
KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC = 0, 1, 2
KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED = 0, 1, 2
KVM_MP_STATE_HALTED, KVM_MP_STATE_SIPI_RECEIVED = 3, 4
KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR = 1 << 0, 1 << 1
KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SMM = 1 << 2, 1 << 3

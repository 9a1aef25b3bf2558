"""The host's KVM, as the test side sees it: KVM_GET_SUPPORTED_CPUID (what any VMM on this host can give a
guest) and which CPUID registers a guest really reads from KVM_SET_CPUID2's table.

Both refvm and QEMU `-accel kvm` filter a model through the same KVM, so the expected guest value of a
feature word is the model's bits AND the host's. kvm-pvm (a software KVM, /sys/module/kvm_pvm) honours
KVM_SET_CPUID2 only partly; measured on this machine with a probe guest and deliberately altered tables:
CPUID.1 ECX (except bits 21 x2apic, 24 tsc-deadline, 31 hypervisor) and EDX, every register of leaf 7
subleaf 0, and leaf 0xD come from the host CPU whatever the table says; all other leaves are the table's.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import struct

KVM_GET_SUPPORTED_CPUID = 0xC008AE05  # _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
ENTRY = struct.Struct("<7I12x")  # struct kvm_cpuid_entry2: function index flags eax ebx ecx edx padding[3]
SIGNIFICANT_INDEX = 1
REGS = ("eax", "ebx", "ecx", "edx")

#: (leaf, subleaf, register) -> the bits a kvm-pvm guest reads from the table (others are the host CPU's).
PVM_HONOURED = {(1, 0, "ecx"): (1 << 21) | (1 << 24) | (1 << 31), (1, 0, "edx"): 0,
                (7, 0, "eax"): 0, (7, 0, "ebx"): 0, (7, 0, "ecx"): 0, (7, 0, "edx"): 0}


def is_kvm_pvm() -> bool:
    return os.path.isdir("/sys/module/kvm_pvm")


def honoured_mask(leaf: int, subleaf: int, reg: str) -> int:
    """Bits of this register the guest reads from the VMM's table on this host (all of them on real KVM)."""
    if not is_kvm_pvm():
        return 0xFFFFFFFF
    if leaf == 0xD:
        return 0
    return PVM_HONOURED.get((leaf, subleaf, reg), 0xFFFFFFFF)


@functools.cache
def supported_cpuid() -> tuple[tuple[int, ...], ...]:
    """KVM_GET_SUPPORTED_CPUID entries (function, index, flags, eax, ebx, ecx, edx), growing the buffer on E2BIG."""
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        nent = 64
        while True:
            buf = bytearray(struct.pack("<II", nent, 0) + bytes(ENTRY.size * nent))
            try:
                fcntl.ioctl(fd, KVM_GET_SUPPORTED_CPUID, buf)
            except OSError as err:
                if err.errno == errno.E2BIG and nent < 4096:
                    nent *= 2
                    continue
                raise
            count = struct.unpack_from("<I", buf)[0]
            return tuple(ENTRY.unpack_from(buf, 8 + i * ENTRY.size) for i in range(count))
    finally:
        os.close(fd)


def supported(leaf: int, subleaf: int, reg: str) -> int:
    for e in supported_cpuid():
        if e[0] == leaf and (e[1] == subleaf or not e[2] & SIGNIFICANT_INDEX):
            return e[3 + REGS.index(reg)]
    return 0


def vendor() -> str:
    """The host CPU's vendor string (CPUID.0 EBX, EDX, ECX as KVM reports them)."""
    regs = (supported(0, 0, "ebx"), supported(0, 0, "edx"), supported(0, 0, "ecx"))
    return b"".join(r.to_bytes(4, "little") for r in regs).decode("ascii", "replace")

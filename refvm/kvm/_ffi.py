"""cffi declarations of the KVM uapi structs refvm uses (ABI mode: no compile step).

Written by hand from ``<linux/kvm.h>`` and ``<asm/kvm.h>`` (x86-64). Every struct keeps the kernel's
real field order, padding and size, because ioctl numbers are derived from ``ffi.sizeof`` and the kernel
reads/writes these buffers byte for byte. ``tests/test_kvm_ioctls.py`` compiles a C program against the
installed headers and checks every size and offset declared here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

from ._cdef_state import STATE_CDEF

CDEF = r"""
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx;
    uint64_t rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11;
    uint64_t r12, r13, r14, r15;
    uint64_t rip, rflags;
};

struct kvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type;
    uint8_t present, dpl, db, s, l, g, avl;
    uint8_t unusable;
    uint8_t padding;
};

struct kvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};

struct kvm_fpu {
    uint8_t fpr[8][16];
    uint16_t fcw;
    uint16_t fsw;
    uint8_t ftwx;
    uint8_t pad1;
    uint16_t last_opcode;
    uint64_t last_ip;
    uint64_t last_dp;
    uint8_t xmm[16][16];
    uint32_t mxcsr;
    uint32_t pad2;
};

struct kvm_msr_entry {
    uint32_t index;
    uint32_t reserved;
    uint64_t data;
};

struct kvm_msrs {
    uint32_t nmsrs;
    uint32_t pad;
    struct kvm_msr_entry entries[];
};

struct kvm_cpuid_entry2 {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax;
    uint32_t ebx;
    uint32_t ecx;
    uint32_t edx;
    uint32_t padding[3];
};

struct kvm_cpuid2 {
    uint32_t nent;
    uint32_t padding;
    struct kvm_cpuid_entry2 entries[];
};

struct kvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};

struct kvm_pit_config {
    uint32_t flags;
    uint32_t pad[15];
};

struct kvm_reinject_control {
    uint8_t pit_reinject;
    uint8_t reserved[31];
};

struct kvm_irq_level {
    union {
        uint32_t irq;
        int32_t status;
    };
    uint32_t level;
};

struct kvm_msi {
    uint32_t address_lo;
    uint32_t address_hi;
    uint32_t data;
    uint32_t flags;
    uint32_t devid;
    uint8_t pad[12];
};

struct kvm_ioeventfd {
    uint64_t datamatch;
    uint64_t addr;
    uint32_t len;
    int32_t fd;
    uint32_t flags;
    uint8_t pad[36];
};

struct kvm_irqfd {
    uint32_t fd;
    uint32_t gsi;
    uint32_t flags;
    uint32_t resamplefd;
    uint8_t pad[16];
};

struct kvm_dirty_log {
    uint32_t slot;
    uint32_t padding1;
    union {
        void *dirty_bitmap;
        uint64_t padding2;
    };
};

struct kvm_dirty_gfn {
    uint32_t flags;
    uint32_t slot;
    uint64_t offset;
};

struct kvm_clear_dirty_log {
    uint32_t slot;
    uint32_t num_pages;
    uint64_t first_page;
    union {
        void *dirty_bitmap;
        uint64_t padding2;
    };
};

struct kvm_enable_cap {
    uint32_t cap;
    uint32_t flags;
    uint64_t args[4];
    uint8_t pad[64];
};

struct kvm_irq_routing_irqchip {
    uint32_t irqchip;
    uint32_t pin;
};

struct kvm_irq_routing_msi {
    uint32_t address_lo;
    uint32_t address_hi;
    uint32_t data;
    union {
        uint32_t pad;
        uint32_t devid;
    };
};

struct kvm_irq_routing_s390_adapter {
    uint64_t ind_addr;
    uint64_t summary_addr;
    uint64_t ind_offset;
    uint32_t summary_offset;
    uint32_t adapter_id;
};

struct kvm_irq_routing_entry {
    uint32_t gsi;
    uint32_t type;
    uint32_t flags;
    uint32_t pad;
    union {
        struct kvm_irq_routing_irqchip irqchip;
        struct kvm_irq_routing_msi msi;
        struct kvm_irq_routing_s390_adapter adapter;
        uint32_t pad[8];
    } u;
};

struct kvm_irq_routing {
    uint32_t nr;
    uint32_t flags;
    struct kvm_irq_routing_entry entries[];
};

struct kvm_debug_exit_arch {
    uint32_t exception;
    uint32_t pad;
    uint64_t pc;
    uint64_t dr6;
    uint64_t dr7;
};

struct kvm_run {
    uint8_t request_interrupt_window;
    uint8_t immediate_exit;
    uint8_t padding1[6];
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection;
    uint8_t if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union {
        struct {
            uint64_t hardware_exit_reason;
        } hw;
        struct {
            uint64_t hardware_entry_failure_reason;
            uint32_t cpu;
        } fail_entry;
        struct {
            uint32_t exception;
            uint32_t error_code;
        } ex;
        struct {
            uint8_t direction;
            uint8_t size;
            uint16_t port;
            uint32_t count;
            uint64_t data_offset;
        } io;
        struct {
            struct kvm_debug_exit_arch arch;
        } debug;
        struct {
            uint64_t phys_addr;
            uint8_t data[8];
            uint32_t len;
            uint8_t is_write;
        } mmio;
        struct {
            uint32_t suberror;
            uint32_t ndata;
            uint64_t data[16];
        } internal;
        struct {
            uint32_t type;
            uint32_t ndata;
            union {
                uint64_t flags;
                uint64_t data[16];
            };
        } system_event;
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union {
        char padding[2048];
    } s;
};

int ioctl(int fd, unsigned long request, ...);
""" + STATE_CDEF



def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "refvm" / "ffi"


def _load_ffi() -> Any:
    """The FFI for CDEF, from a pre-parsed module cached on disk when possible.

    Parsing the cdef with pycparser costs ~25 ms at every start, a sixth of refvm's time to the first
    guest prompt. cffi's out-of-line ABI mode emits a plain Python module holding the parsed types (no C
    compiler involved); we keep it in the user's cache keyed by a hash of the cdef and cffi's version, and
    fall back to parsing in-process when the cache cannot be read or written.
    """
    import _cffi_backend

    digest = hashlib.sha256(f"{CDEF}{_cffi_backend.__version__}".encode()).hexdigest()[:16]
    module_name = f"_refvm_kvm_ffi_{digest}"
    path = _cache_dir() / f"{module_name}.py"
    if path.exists():
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.ffi
        except Exception:  # noqa: BLE001 - a damaged cache only costs the parse below
            pass
    import cffi

    builder = cffi.FFI()
    builder.cdef(CDEF)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        builder.set_source(module_name, None)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with contextlib.redirect_stdout(io.StringIO()):  # cffi announces "generating ..." on stdout
            builder.emit_python_code(str(tmp))
        os.replace(tmp, path)
    except OSError:
        pass
    return builder


ffi = _load_ffi()
#: libc, for ioctls whose argument is a struct pointer (cffi releases the GIL around the call).
libc = ffi.dlopen(None)

"""Cross-check refvm.kvm's hand-written cdef and computed ioctl numbers against the real C headers.

At test time a C program including <linux/kvm.h> is generated and compiled; it prints every ioctl number,
constant, struct size and field offset/size we declare. Each item is its own test, so a mismatch names
exactly which ioctl or field drifted.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from refvm.kvm import caps, exits, ioctls
from refvm.kvm._ffi import ffi
from tests.conftest import require

STRUCTS = [
    "kvm_regs", "kvm_segment", "kvm_dtable", "kvm_sregs", "kvm_fpu", "kvm_msr_entry", "kvm_msrs",
    "kvm_cpuid_entry2", "kvm_cpuid2", "kvm_userspace_memory_region", "kvm_pit_config", "kvm_irq_level",
    "kvm_msi", "kvm_ioeventfd", "kvm_irqfd", "kvm_dirty_log", "kvm_clear_dirty_log", "kvm_dirty_gfn", "kvm_enable_cap",
    "kvm_irq_routing_irqchip",
    "kvm_irq_routing_msi", "kvm_irq_routing_entry", "kvm_irq_routing", "kvm_debug_exit_arch", "kvm_run",
    "kvm_msr_list", "kvm_xsave", "kvm_xcr", "kvm_xcrs", "kvm_debugregs", "kvm_lapic_state", "kvm_vcpu_events",
    "kvm_mp_state",
    "kvm_pic_state", "kvm_ioapic_state", "kvm_irqchip", "kvm_pit_channel_state", "kvm_pit_state2", "kvm_clock_data",
]  # fmt: skip


#: What sizeof raises for a flexible array: ValueError from a freshly parsed FFI, ffi.error from the cached one.
_SIZE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError) + ((ffi.error,) if hasattr(ffi, "error") else ())


def _fields(ctype: object, prefix: str = "", base: int = 0) -> list[tuple[str, int, int | None]]:
    """(dotted path, offset, size or None for flexible arrays) of every field, nested ones included."""
    out: list[tuple[str, int, int | None]] = []
    for name, f in ctype.fields:
        path = prefix + name
        try:
            size: int | None = ffi.sizeof(f.type)
        except _SIZE_ERRORS:  # flexible array: no size
            size = None
        out.append((path, base + f.offset, size))
        if f.type.kind in ("struct", "union"):
            out.extend(_fields(f.type, path + ".", base + f.offset))
    return out


def _expected() -> dict[str, int]:
    """What refvm believes, keyed like the C program's output lines."""
    exp: dict[str, int] = {}
    for name, num in ioctls.IOCTLS.items():
        exp[f"ioctl {name}"] = num
    for name, val in vars(caps).items():
        if name.startswith("KVM_CAP_"):
            exp[f"const {name}"] = val
    for name, val in vars(exits).items():
        if name.startswith(("KVM_EXIT_", "KVM_SYSTEM_EVENT_", "KVM_INTERNAL_ERROR_")):
            exp[f"const {name}"] = val
    for name in dir(ioctls):
        if name.startswith(("KVM_MEM_", "KVM_IOEVENTFD_FLAG_", "KVM_IRQFD_FLAG_", "KVM_IRQ_ROUTING_", "KVM_IRQCHIP_",
                            "KVM_MP_STATE_", "KVM_VCPUEVENT_VALID_", "KVM_DIRTY_")):
            exp[f"const {name}"] = getattr(ioctls, name)
    for s in STRUCTS:
        t = ffi.typeof(f"struct {s}")
        exp[f"sizeof {s}"] = ffi.sizeof(t)
        for path, off, size in _fields(t):
            exp[f"offsetof {s}.{path}"] = off
            if size is not None:
                exp[f"fieldsize {s}.{path}"] = size
    return exp


EXPECTED = _expected()


def _c_source() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for key in EXPECTED:
        kind, name = key.split(" ", 1)
        if kind in ("ioctl", "const"):
            lines.append(f"#ifdef {name}")
            lines.append(f'  printf("{key} %lu\\n", (unsigned long)({name}));')
            lines.append("#endif")
        elif kind == "sizeof":
            lines.append(f'  printf("{key} %zu\\n", sizeof(struct {name}));')
        else:
            s, path = name.split(".", 1)
            if kind == "offsetof":
                lines.append(f'  printf("{key} %zu\\n", offsetof(struct {s}, {path}));')
            else:
                lines.append(f'  printf("{key} %zu\\n", sizeof(((struct {s} *)0)->{path}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    require(shutil.which("gcc") is not None, "gcc is needed to compile the <linux/kvm.h> cross-check")
    d: Path = tmp_path_factory.mktemp("kvmhdr")
    (d / "check.c").write_text(_c_source())
    cc = subprocess.run(
        ["gcc", "-std=gnu11", "-w", "-o", str(d / "check"), str(d / "check.c")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cc.returncode == 0, f"compiling the header check failed:\n{cc.stderr[-3000:]}"
    out = subprocess.run([str(d / "check")], capture_output=True, text=True, check=True, timeout=30).stdout
    values: dict[str, int] = {}
    for line in out.splitlines():
        key, _, val = line.rpartition(" ")
        values[key] = int(val)
    return values


@pytest.mark.parametrize("key", list(EXPECTED))
def test_matches_header(key: str, header_values: dict[str, int]) -> None:
    assert key in header_values, f"{key}: not defined by this <linux/kvm.h>"
    assert EXPECTED[key] == header_values[key], (
        f"{key}: refvm has {EXPECTED[key]:#x}, <linux/kvm.h> has {header_values[key]:#x}"
    )


def test_kvm_run_union_is_256_bytes() -> None:
    """The exit union must keep its real size, or kvm_valid_regs/s would sit at the wrong offsets."""
    assert ffi.offsetof("struct kvm_run", "kvm_valid_regs") - ffi.offsetof("struct kvm_run", "io") == 256

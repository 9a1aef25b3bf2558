"""``refvm doctor``: what this host's KVM can do for refvm, in plain words.

The report exists because the same code behaves very differently on hardware KVM and on kvm-pvm (a
software KVM): on kvm-pvm Linux guests cannot boot, so users must be told to use QEMU TCG for them.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import caps
from .errors import KvmError
from .system import DEFAULT_PATH, Kvm

VENDOR_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")
SYS_MODULE = Path("/sys/module")


def detect_pvm() -> bool:
    """True when /dev/kvm is served by kvm-pvm (the software KVM) rather than VMX/SVM."""
    return (SYS_MODULE / "kvm_pvm").exists()


def vendor_module() -> str | None:
    """The loaded KVM vendor module (kvm_intel, kvm_amd or kvm_pvm), or None."""
    for m in VENDOR_MODULES:
        if (SYS_MODULE / m).exists():
            return m
    return None


def _probe(path: str) -> tuple[Kvm | None, str]:
    try:
        return Kvm(path), ""
    except KvmError as e:
        return None, str(e)


def capability_table(kvm: Kvm) -> list[tuple[str, bool, int, bool]]:
    """(name, present, value, required) for every capability refvm uses."""
    rows = []
    for cap in caps.REQUIRED + caps.OPTIONAL:
        value = kvm.check_extension(cap)
        rows.append((caps.name(cap), value > 0, value, cap in caps.REQUIRED))
    return rows


def report(path: str = DEFAULT_PATH) -> str:
    """A human-readable multi-line report of the host's KVM for refvm."""
    lines = ["refvm doctor", ""]
    kvm, err = _probe(path)
    vendor = vendor_module()
    lines.append(f"{path}: {'ok' if kvm else 'UNUSABLE - ' + err}")
    lines.append(f"vendor module: {vendor or 'none loaded'}")
    if detect_pvm():
        lines += [
            "kvm-pvm detected: this is a SOFTWARE KVM, not hardware virtualisation.",
            "  - guests run ~1000x slower than on hardware KVM; each exit costs ~8 us",
            "  - a guest's own switch to long mode faults (EFER.LME -> #GP, triple fault);",
            "    refvm enters 64-bit code only with long mode set up through KVM_SET_SREGS",
            "  - Linux guests boot only on hardware KVM: use QEMU TCG (-accel tcg) for Linux guests here",
            "  - small guests (the 32-bit probe guest) run fine",
        ]
    if kvm is not None:
        try:
            lines.append(f"API version: {kvm.api_version}")
            lines.append(f"vCPU mmap size: {kvm.vcpu_mmap_size}")
            nr = kvm.check_extension(caps.KVM_CAP_NR_VCPUS)
            mx = kvm.check_extension(caps.KVM_CAP_MAX_VCPUS)
            lines.append(f"vCPUs: recommended max {nr}, hard max {mx}")
            lines += ["", "capabilities:"]
            for name, present, value, required in capability_table(kvm):
                state = "present" if present else ("MISSING" if required else "missing")
                kind = "required" if required else "optional"
                lines.append(f"  {name:<36} {state:<8} value={value:<8} ({kind})")
        finally:
            kvm.close()
    lines += ["", "host devices:"]
    for dev, why in (("/dev/net/tun", "tap networking"), ("/dev/vhost-net", "vhost-net acceleration")):
        ok = os.path.exists(dev)
        lines.append(f"  {dev:<16} {'present' if ok else 'missing'} ({why}{'' if ok else ' unavailable'})")
    status = doctor_exit_status(path)
    lines += [
        "",
        "verdict: "
        + (
            "OK - all required KVM capabilities present"
            if status == 0
            else "NOT USABLE - /dev/kvm missing or a required capability is missing"
        ),
    ]
    return "\n".join(lines) + "\n"


def doctor_exit_status(path: str = DEFAULT_PATH) -> int:
    """0 if /dev/kvm opens and every required capability is present, else 1."""
    kvm, _ = _probe(path)
    if kvm is None:
        return 1
    try:
        return 0 if all(kvm.check_extension(c) > 0 for c in caps.REQUIRED) else 1
    finally:
        kvm.close()

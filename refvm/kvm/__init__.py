"""Typed bindings over /dev/kvm (cffi, ABI mode): Kvm -> Vm -> Vcpu, typed exits, capabilities."""

from __future__ import annotations

from . import caps, exits, ioctls
from .errors import KvmError
from .system import Kvm
from .types import CpuidEntry, DTable, Regs, Segment, Sregs
from .vcpu import Vcpu
from .vm import IrqchipRoute, MsiRoute, Vm

__all__ = [
    "Kvm", "Vm", "Vcpu", "KvmError", "exits", "caps", "ioctls",
    "Regs", "Sregs", "Segment", "DTable", "CpuidEntry", "IrqchipRoute", "MsiRoute",
]  # fmt: skip

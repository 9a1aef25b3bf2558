"""CPU models as data (QEMU 7.2's names, CPUID per model, feature names and aliases) and -smp topology.

`resolve()` turns a MachineConfig's -cpu/-smp into per-vCPU CPUID tables; the Machine hands them to
KVM_SET_CPUID2. Nothing here opens /dev/kvm: the host's KVM_GET_SUPPORTED_CPUID comes in as tuples.
"""

from __future__ import annotations

from refvm.cpu.cpuid import CpuidError, CpuPlan, Entry, build_cpuid, plan_cpu
from refvm.cpu.spec import CpuSpec, CpuSpecError, parse_cpu
from refvm.cpu.topology import Topology, TopologyError, parse_smp

__all__ = [
    "CpuPlan", "CpuSpec", "CpuSpecError", "CpuidError", "Entry", "Topology", "TopologyError", "build_cpuid",
    "parse_cpu", "parse_smp", "plan_cpu",
]

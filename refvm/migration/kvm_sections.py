"""The KVM part of a migration: which sections a KVM machine adds to the stream, and loading them back.

A KVM source writes, after the device sections, per vCPU a "cpu" and an "apic" section (instance = vCPU index),
then "i8259" 0 and 1, "ioapic", "i8254" and "kvmclock".  A qtest machine has none of them.  The destination
decodes and validates them with the rest of the stream, before anything is written to the machine
(`take_sections`), and loads them into the VM its main thread built without a kernel (`load_sections`).  A
stream must match the machine: every one of these sections for a KVM destination, with as many vCPUs; none for
a qtest one.
"""
from __future__ import annotations

from typing import Any

from refvm.migration.state import DeviceState, StateError

VM_SECTIONS = (("i8259", 0), ("i8259", 1), ("ioapic", 0), ("i8254", 0), ("kvmclock", 0))
PER_VCPU = ("cpu", "apic")
NAMES = {*PER_VCPU, *(name for name, _ in VM_SECTIONS)}
VM_WAIT_SECONDS = 60.0


def _classes() -> dict[str, type[DeviceState]]:
    from refvm.migration.cpu_state import ApicState, CpuState
    from refvm.migration.irqchip_state import IoapicState, KvmclockState, PicState, PitState

    return {"cpu": CpuState, "apic": ApicState, "i8259": PicState, "ioapic": IoapicState, "i8254": PitState,
            "kvmclock": KvmclockState}


def _expected(machine: Any) -> list[tuple[str, int]]:
    if machine.config.accel != "kvm":
        return []
    smp = machine.config.smp
    return [(name, i) for i in range(smp) for name in PER_VCPU] + list(VM_SECTIONS)


def _devices(machine: Any, vm: Any) -> dict[tuple[str, int], Any]:
    """(section, instance) -> the object whose save()/load() it is, for the VM as built now."""
    from refvm.kvm import caps
    from refvm.migration.cpu_state import KvmApic, KvmCpu
    from refvm.migration.irqchip_state import KvmClock, KvmIoapic, KvmPic, KvmPit

    msr_index = set(machine.kvm.msr_index_list())
    xsave = bool(machine.kvm.check_extension(caps.KVM_CAP_XSAVE))
    out: dict[tuple[str, int], Any] = {}
    for vcpu in sorted(vm.vcpus, key=lambda v: v.id):
        out["cpu", vcpu.id] = KvmCpu(vcpu, msr_index, xsave)
        out["apic", vcpu.id] = KvmApic(vcpu)
    out.update({("i8259", 0): KvmPic(vm, 0), ("i8259", 1): KvmPic(vm, 1), ("ioapic", 0): KvmIoapic(vm),
                ("i8254", 0): KvmPit(vm), ("kvmclock", 0): KvmClock(vm)})
    return out


def warm_up(machine: Any) -> None:
    """Import and build once what save_sections needs, while the guest still runs: the first use costs tens of
    ms (modules, state dataclasses, cffi types), which would otherwise be downtime."""
    vm = machine.vm
    if vm is None:
        return
    from refvm.kvm.state import view

    _classes()
    _devices(machine, vm)
    view("struct kvm_vcpu_events")


def save_sections(machine: Any) -> list[tuple[str, int, DeviceState]]:
    """(idstr, instance, state) of every KVM section, in stream order; [] without a KVM VM. vCPUs stopped."""
    vm = machine.vm
    if vm is None:
        return []
    devices = _devices(machine, vm)
    return [(name, inst, devices[name, inst].save()) for name, inst in _expected(machine) if (name, inst) in devices]


def take_sections(machine: Any, sections: list[Any]) -> tuple[dict[tuple[str, int], DeviceState], list[Any]]:
    """Decode and validate the KVM sections of a parsed stream; returns them and the sections left over."""
    expected = _expected(machine)
    states: dict[tuple[str, int], DeviceState] = {}
    rest = []
    classes = _classes() if any(sec.idstr in NAMES for sec in sections) else {}
    for sec in sections:
        if sec.idstr not in NAMES:
            rest.append(sec)
            continue
        key = (sec.idstr, sec.instance_id)
        if key not in expected:
            why = "this machine runs no KVM vCPUs (-accel qtest)" if not expected else \
                f"no such instance here ({machine.config.smp} vCPUs)"
            raise StateError(f"migration stream: section '{sec.idstr}' instance {sec.instance_id}: field "
                             f"'instance id': {why}")
        states[key] = classes[sec.idstr].decode(sec.payload, sec.version_id)
    for name, inst in expected:
        if (name, inst) not in states:
            raise StateError(f"migration stream: section '{name}' instance {inst}: field 'idstr': missing (a KVM "
                             f"destination needs the source's vCPU, irqchip, PIT and clock state)")
    return states, rest


def load_sections(machine: Any, states: dict[tuple[str, int], DeviceState]) -> None:
    """Load the states taken by take_sections into the machine's VM, once its main thread has built it."""
    if not states:
        return

    def load(vm: Any) -> None:
        devices = _devices(machine, vm)
        for vcpu in sorted(vm.vcpus, key=lambda v: v.id):
            cpu = devices["cpu", vcpu.id]
            cpu.load(states["cpu", vcpu.id])
            devices["apic", vcpu.id].load(states["apic", vcpu.id])
            cpu.load_late(states["cpu", vcpu.id])
        for key in VM_SECTIONS:
            devices[key].load(states[key])

    from refvm.machine import MachineError

    try:
        machine.with_vm(load, VM_WAIT_SECONDS)
    except MachineError as err:
        raise StateError(f"migration: {err}") from None

"""Virtio device state as data: each virtqueue, the transport-independent core, the virtio-pci transport.

A virtio PCI function migrates as one section (QEMU's idstr `0000:00:04.0/virtio-blk`) whose State nests
the PCI function (:class:`~refvm.devices.pci.state.PciState`), the modern and legacy transport registers,
the core (status, features, ISR, configuration generation, every queue) and the device type's own State.

Like rust-vmm's virtio-queue QueueState, a queue's State is plain data: the transport-written configuration
(size, enable, vector, the three area addresses) plus the ring engine's cursors (split: last_avail_idx and
used_idx, free-running 16-bit; packed: slot positions with their wrap counters), the event-idx state
(avail_event as last written, the used index at the last interrupt decision) and notification suppression.
It is loaded by assigning those attributes: the `enabled` setter, which a driver's queue_enable goes
through, would zero the cursors. Requests in flight are never part of a queue's State: each device either
completes them before saving or rewinds the ring over them (see the device's `save_device`), so a request
completes exactly once, on one side.

Every field came from a guest and then a stream: schema checks here (widths, ranges), checks against the
destination's own device (queue count, maximum sizes, MSI-X vectors, offered features) where it is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from refvm.devices.pci.state import PciState
from refvm.migration.state import BOOL, U8, U16, U32, U64, DeviceState, buffer, sfield, struct, struct_list

__all__ = ["QueueState", "QueueRegsState", "VirtioCoreState", "VirtioPciState", "NoDeviceState",
           "section_state", "NO_EVENT", "MAX_QUEUES"]

#: `avail_event` value meaning "not written since the ring was set up" (refvm's -1).
NO_EVENT = 0xFFFFFFFF
#: QEMU's VIRTIO_QUEUE_MAX: the most queues a device or transport has.
MAX_QUEUES = 1024
_MAX_QUEUE_SIZE = 32768


@dataclass
class QueueState(DeviceState):
    """One virtqueue: configuration and ring cursors (split or packed, as the negotiated features say)."""

    VMSD_NAME = "virtqueue"

    size: int = sfield(U16, 0, lambda v: v <= _MAX_QUEUE_SIZE, f"at most {_MAX_QUEUE_SIZE}")
    enabled: bool = sfield(BOOL, False)
    desc_addr: int = sfield(U64, 0)
    driver_addr: int = sfield(U64, 0)
    device_addr: int = sfield(U64, 0)
    msix_vector: int = sfield(U16, 0xFFFF)
    notify_off: int = sfield(U16, 0)
    last_avail_idx: int = sfield(U16, 0)  # split: next avail ring entry; packed: next slot to poll
    used_idx: int = sfield(U16, 0)  # split: the device's used idx; packed: next used slot
    avail_wrap: bool = sfield(BOOL, True)  # packed only: the driver's wrap counter at last_avail_idx
    used_wrap: bool = sfield(BOOL, True)  # packed only: the Device Ring Wrap Counter
    signalled_used: int = sfield(U32, 0)  # used position at the last interrupt decision (event idx)
    pushed: int = sfield(U32, 0)  # used elements since then (nonzero only between add_used and a decision)
    used_slots: int = sfield(U32, 0)  # packed: ring slots used since then
    avail_event: int = sfield(U32, NO_EVENT, lambda v: v <= 0xFFFF or v == NO_EVENT, "a u16 or 0xffffffff")
    suppressed: bool = sfield(BOOL, False)


@dataclass
class QueueRegsState(DeviceState):
    """What the driver wrote for one queue through the modern common configuration (before queue_enable)."""

    VMSD_NAME = "virtio-pci-queue"

    index: int = sfield(U16, 0, lambda v: v < MAX_QUEUES, f"below {MAX_QUEUES}")
    desc: int = sfield(U64, 0)
    driver: int = sfield(U64, 0)
    device: int = sfield(U64, 0)
    enabled: bool = sfield(BOOL, False)
    msix_vector: int = sfield(U16, 0xFFFF)


@dataclass
class VirtioCoreState(DeviceState):
    """The transport-independent device (VIRTIO 1.2 ch. 2-3): status, features, ISR, generation, queues."""

    VMSD_NAME = "virtio"

    status: int = sfield(U8, 0)
    driver_features: int = sfield(U64, 0)
    negotiated_features: int = sfield(U64, 0)
    features_locked: bool = sfield(BOOL, False)
    isr: int = sfield(U8, 0, lambda v: v <= 3, "ISR bits 0-1 only")
    config_msix_vector: int = sfield(U16, 0xFFFF)
    generation: int = sfield(U8, 0)
    config_dirty: bool = sfield(BOOL, False)
    error: bytes = sfield(buffer(1024), b"")  # the DEVICE_NEEDS_RESET reason (empty: none)
    queues: tuple[QueueState, ...] = sfield(struct_list(QueueState, MAX_QUEUES), ())


@dataclass
class VirtioPciState(DeviceState):
    """The virtio-pci transport's own registers: modern selectors and queue registers, legacy BAR0 state."""

    VMSD_NAME = "virtio-pci"

    device_feature_select: int = sfield(U32, 0)
    driver_feature_select: int = sfield(U32, 0)
    driver_feature_word0: int = sfield(U32, 0)
    driver_feature_word1: int = sfield(U32, 0)
    queue_select: int = sfield(U16, 0, lambda v: v < MAX_QUEUES, f"below {MAX_QUEUES}")
    queue_regs: tuple[QueueRegsState, ...] = sfield(struct_list(QueueRegsState, MAX_QUEUES), ())
    legacy_queue_select: int = sfield(U16, 0)
    legacy_guest_features: int = sfield(U32, 0)
    legacy_negotiated: bool = sfield(BOOL, False)


@dataclass
class NoDeviceState(DeviceState):
    """A device type with no state beyond the core's."""

    VMSD_NAME = "virtio-device"


_SECTIONS: dict[tuple[str, type[DeviceState]], type[DeviceState]] = {}


def section_state(vmsd_name: str, device_state: type[DeviceState]) -> type[DeviceState]:
    """The State class of a whole virtio PCI function: pci, transport, virtio core, device (one per type)."""
    key = (vmsd_name, device_state)
    if key not in _SECTIONS:
        fields: list[tuple[str, Any, Any]] = [
            (name, part, dataclasses.field(default_factory=part, metadata=sfield(struct(part), None).metadata))
            for name, part in (("pci", PciState), ("transport", VirtioPciState), ("virtio", VirtioCoreState),
                               ("device", device_state))]
        cls = dataclasses.make_dataclass(f"VirtioPciSection_{vmsd_name.replace('-', '_')}", fields,
                                         bases=(DeviceState,), namespace={"VMSD_NAME": vmsd_name, "VERSION": 1})
        _SECTIONS[key] = cls
    return _SECTIONS[key]

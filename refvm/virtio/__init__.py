"""Virtio device core (VIRTIO 1.2): device-side split and packed virtqueues, the device status and
feature negotiation state machine, and DEVICE_NEEDS_RESET on driver errors.

Transports (PCI) and device types (blk, net, console, rng, balloon) build on :class:`VirtioDevice`.
"""

from refvm.virtio.device import ISR_CONFIG, ISR_QUEUE, VirtioDevice
from refvm.virtio.packed_queue import PackedQueue
from refvm.virtio.queue import NO_VECTOR, Chain, Virtqueue, VirtqueueError
from refvm.virtio.split_queue import SplitQueue, vring_need_event

__all__ = [
    "VirtioDevice",
    "Virtqueue",
    "SplitQueue",
    "PackedQueue",
    "Chain",
    "VirtqueueError",
    "vring_need_event",
    "NO_VECTOR",
    "ISR_QUEUE",
    "ISR_CONFIG",
]

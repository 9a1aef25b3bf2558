"""Device-independent feature bits (VIRTIO 1.2 section 6, "Reserved Feature Bits").

Feature bits 0-23 and 50-127 belong to the device type; 24-40 extend the queue and feature
negotiation mechanisms (section 2.2). This module names the transport/queue bits and offers
helpers for reports; the negotiation itself lives in :mod:`refvm.virtio.device`.
"""

from __future__ import annotations

__all__ = [
    "VIRTIO_F_NOTIFY_ON_EMPTY",
    "VIRTIO_F_ANY_LAYOUT",
    "VIRTIO_F_RING_INDIRECT_DESC",
    "VIRTIO_F_RING_EVENT_IDX",
    "VIRTIO_F_VERSION_1",
    "VIRTIO_F_ACCESS_PLATFORM",
    "VIRTIO_F_RING_PACKED",
    "VIRTIO_F_IN_ORDER",
    "VIRTIO_F_ORDER_PLATFORM",
    "VIRTIO_F_SR_IOV",
    "VIRTIO_F_NOTIFICATION_DATA",
    "VIRTIO_F_NOTIF_CONFIG_DATA",
    "VIRTIO_F_RING_RESET",
    "VIRTIO_F_INDIRECT_DESC",
    "VIRTIO_F_EVENT_IDX",
    "FEATURE_NAMES",
    "CORE_FEATURES",
    "FEATURE_WORDS",
    "bit",
    "has",
    "feature_names",
    "describe",
]

# Legacy-only bits (section 6.1): a transitional device MAY offer NOTIFY_ON_EMPTY and MUST offer ANY_LAYOUT.
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_F_ANY_LAYOUT = 27
# Section 6.
VIRTIO_F_RING_INDIRECT_DESC = 28
VIRTIO_F_RING_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35
VIRTIO_F_ORDER_PLATFORM = 36
VIRTIO_F_SR_IOV = 37
VIRTIO_F_NOTIFICATION_DATA = 38
VIRTIO_F_NOTIF_CONFIG_DATA = 39
VIRTIO_F_RING_RESET = 40
#: The spec's own spelling of bits 28 and 29 (section 6 names them VIRTIO_F_INDIRECT_DESC / VIRTIO_F_EVENT_IDX).
VIRTIO_F_INDIRECT_DESC = VIRTIO_F_RING_INDIRECT_DESC
VIRTIO_F_EVENT_IDX = VIRTIO_F_RING_EVENT_IDX

FEATURE_NAMES: dict[int, str] = {
    VIRTIO_F_NOTIFY_ON_EMPTY: "NOTIFY_ON_EMPTY",
    VIRTIO_F_ANY_LAYOUT: "ANY_LAYOUT",
    VIRTIO_F_RING_INDIRECT_DESC: "RING_INDIRECT_DESC",
    VIRTIO_F_RING_EVENT_IDX: "RING_EVENT_IDX",
    VIRTIO_F_VERSION_1: "VERSION_1",
    VIRTIO_F_ACCESS_PLATFORM: "ACCESS_PLATFORM",
    VIRTIO_F_RING_PACKED: "RING_PACKED",
    VIRTIO_F_IN_ORDER: "IN_ORDER",
    VIRTIO_F_ORDER_PLATFORM: "ORDER_PLATFORM",
    VIRTIO_F_SR_IOV: "SR_IOV",
    VIRTIO_F_NOTIFICATION_DATA: "NOTIFICATION_DATA",
    VIRTIO_F_NOTIF_CONFIG_DATA: "NOTIF_CONFIG_DATA",
    VIRTIO_F_RING_RESET: "RING_RESET",
}

#: Number of 32-bit feature words a transport can select (bits 0..127; section 2.2 allocates up to 127).
FEATURE_WORDS = 4


def bit(n: int) -> int:
    """The mask of feature bit ``n``."""
    return 1 << n


def has(features: int, n: int) -> bool:
    """True if feature bit ``n`` is set in ``features``."""
    return (features >> n) & 1 == 1


#: What this virtqueue core implements for every device (section 6): the device MUST offer VERSION_1.
#: IN_ORDER, NOTIFICATION_DATA and ACCESS_PLATFORM are not implemented, so never offered; RING_RESET is offered
#: by VirtioDevice itself (ring_reset=True, as QEMU 7.2) and handled through queue_reset (4.1.4.3).
CORE_FEATURES = (
    bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_F_RING_INDIRECT_DESC)
    | bit(VIRTIO_F_RING_EVENT_IDX)
    | bit(VIRTIO_F_RING_PACKED)
)


def feature_names(features: int, device_names: dict[int, str] | None = None) -> list[str]:
    """Names of the set bits, lowest first; unknown bits appear as ``bit<N>``."""
    names = []
    n = 0
    while features >> n:
        if (features >> n) & 1:
            if device_names and n in device_names:
                names.append(device_names[n])
            else:
                names.append(FEATURE_NAMES.get(n, f"bit{n}"))
        n += 1
    return names


def describe(features: int, device_names: dict[int, str] | None = None) -> str:
    """``0x... (A|B|C)`` for logs and reports."""
    return f"{features:#x} ({'|'.join(feature_names(features, device_names)) or '-'})"

"""The device status field (VIRTIO 1.2 section 2.1) and its bits.

The state machine that interprets driver writes lives in :meth:`refvm.virtio.device.VirtioDevice.write_status`;
this module holds the bit values and helpers to describe a status byte.
"""

from __future__ import annotations

__all__ = [
    "ACKNOWLEDGE",
    "DRIVER",
    "DRIVER_OK",
    "FEATURES_OK",
    "DEVICE_NEEDS_RESET",
    "FAILED",
    "STATUS_NAMES",
    "DRIVER_BITS",
    "status_names",
    "describe",
]

ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 64
FAILED = 128

STATUS_NAMES: dict[int, str] = {
    ACKNOWLEDGE: "ACKNOWLEDGE",
    DRIVER: "DRIVER",
    DRIVER_OK: "DRIVER_OK",
    FEATURES_OK: "FEATURES_OK",
    DEVICE_NEEDS_RESET: "DEVICE_NEEDS_RESET",
    FAILED: "FAILED",
}

#: Bits the driver sets (section 2.1); DEVICE_NEEDS_RESET is the device's own.
DRIVER_BITS = ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | FAILED


def status_names(status: int) -> list[str]:
    """Names of the set bits in the order of section 2.1's list; undefined bits as ``bit<N>``."""
    out = [name for value, name in STATUS_NAMES.items() if status & value]
    for n in range(8):
        if status & (1 << n) and (1 << n) not in STATUS_NAMES:
            out.append(f"bit{n}")
    return out


def describe(status: int) -> str:
    """``0x0f (ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK)``."""
    return f"{status:#04x} ({'|'.join(status_names(status)) or 'RESET'})"

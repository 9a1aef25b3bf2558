"""Tap devices opened by the daemon and handed to the hypervisor as fds, as libvirt does for
<interface type='ethernet|bridge'> (the hypervisor never needs the right to create network devices)."""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess

from refvm.mgmt.domain_model import Interface
from refvm.mgmt.errors import VIR_ERR_SYSTEM_ERROR, VIR_FROM_NONE, VirError

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def open_tap(nic: Interface, index: int) -> int:
    """Open (creating if needed) the tap named by <target dev> (default vnetN); bridge it when asked."""
    name = nic.target_dev or f"vnet{index}"
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise VirError(VIR_ERR_SYSTEM_ERROR, f"Unable to open /dev/net/tun, is tun module loaded?: {err.strerror}",
                       domain=VIR_FROM_NONE) from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError as err:
        os.close(fd)
        raise VirError(VIR_ERR_SYSTEM_ERROR, f"Unable to create tap device {name}: {err.strerror}",
                       domain=VIR_FROM_NONE) from None
    nic.target_dev = name
    cmds = [["ip", "link", "set", name, "up"]]
    if nic.bridge:
        cmds.insert(0, ["ip", "link", "set", name, "master", nic.bridge])
    for cmd in cmds:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            os.close(fd)
            raise VirError(VIR_ERR_SYSTEM_ERROR, f"Unable to add tap {name} to bridge {nic.bridge}: "
                           f"{done.stderr.strip()}", domain=VIR_FROM_NONE)
    return fd


def tap_counters(name: str) -> tuple[int, ...] | None:
    """rx bytes, packets, errs, drop, tx bytes, packets, errs, drop of a host device (/proc/net/dev)."""
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            ifname, _, rest = line.partition(":")
            if ifname.strip() == name:
                v = [int(x) for x in rest.split()]
                return (v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11])
    return None

"""-netdev tap with inherited descriptors, as libvirt passes them: ``fd=N``, ``fds=N:M:...``, ``vhost=``,
``vhostfd=``/``vhostfds=``.

libvirt opens the tap itself (it runs as root, refvm/QEMU need not) and starts the VMM with the descriptor
inherited; the VMM only checks it. The checks and texts are QEMU 7.2's (``Invalid file descriptor number``,
``Can't use file descriptor N``, ``Unable to query TUNGETIFF on FD N``). refvm has no vhost-net backend, so
``vhost=on`` -- also implied by ``vhostfd=`` -- fails with one line naming the cause.
"""

from __future__ import annotations

import fcntl
import os
import struct

__all__ = ["TAP_FD_KEYS", "check_tap_fds"]

TAP_FD_KEYS = {"fds", "vhostfd", "vhostfds", "vhostforce", "sndbuf"}
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_VNET_HDR = 0x4000
VHOST_NET = "/dev/vhost-net"


def _vhost_cause() -> str:
    if not os.path.exists(VHOST_NET):
        return f"{VHOST_NET}: No such file or directory (the host kernel has no vhost-net); use vhost=off"
    return "refvm has no vhost-net backend; use vhost=off"


def _check_fd(where: str, ident: str, text: str) -> int:
    try:
        fd = int(text, 10)
    except ValueError:
        raise ValueError(f"{where}: Invalid file descriptor number '{text}'") from None
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as err:
        raise ValueError(f"{where}: {ident}: Can't use file descriptor {fd}: {err.strerror}") from None
    try:
        ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    except OSError as err:
        raise ValueError(f"{where}: Unable to query TUNGETIFF on FD {fd}: {err.strerror}") from None
    flags = struct.unpack_from("H", ifr, 16)[0]
    if not flags & IFF_TAP:
        raise ValueError(f"{where}: FD {fd} is a tun device, not a tap (refvm needs IFF_TAP)")
    if not flags & IFF_VNET_HDR:
        raise ValueError(f"{where}: tap FD {fd} was opened without IFF_VNET_HDR (refvm needs the virtio-net header)")
    return fd


def check_tap_fds(where: str, props: dict[str, str]) -> None:
    """Validate a tap netdev's descriptor options in place; ValueError with the one-line text."""
    ident = props.get("id", "")
    vhost = props.get("vhost")
    if vhost not in (None, "on", "off"):
        raise ValueError(f"{where}: Parameter 'vhost' expects 'on' or 'off'")
    wants_vhostfd = "vhostfd" in props or "vhostfds" in props
    if wants_vhostfd and vhost == "off":
        raise ValueError(f"{where}: vhostfd=/vhostfds= is not valid with vhost=off")
    if vhost == "on" or wants_vhostfd or props.get("vhostforce") == "on":
        raise ValueError(f"{where}: vhost-net requested but could not be initialized: {_vhost_cause()}")
    if "fd" in props and "fds" in props:
        raise ValueError(f"{where}: fd= and fds= are mutually exclusive")
    given = "fds" if "fds" in props else "fd" if "fd" in props else None
    if given and ("ifname" in props or props.get("script", "no") != "no" or "queues" in props and given == "fd"):
        others = "fds=, and vhostfds=" if given == "fd" else "and vhostfd="  # QEMU 7.2's two texts
        raise ValueError(f"{where}: ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, {others} are "
                         f"invalid with {given}=")  # fmt: skip
    if "fd" in props:
        _check_fd(where, ident, props["fd"])
    if "fds" in props:
        fds = [_check_fd(where, ident, f) for f in props["fds"].split(":")]
        if len(set(fds)) != len(fds):
            raise ValueError(f"{where}: fds= names a descriptor twice")

"""QMP commands about a machine's NICs: ``announce-self`` (QEMU 7.2 qapi/net.json, net/announce.c).

``announce-self`` takes QEMU's ``AnnounceParameters``: ``initial``, ``max``, ``rounds``, ``step`` (ms,
all required) and the optional ``interfaces`` (NIC names) and ``id`` (a named timer; a new call with
the same id replaces the running one). The first round runs at once; round k (k >= 1) follows
``initial + (k - 1) * step`` ms after the previous one, that delay clamped to ``max`` (QEMU's
``qemu_announce_timer_step``). A round asks each selected virtio-net device to announce itself
(:meth:`refvm.virtio.devices.net.VirtioNet.announce`: RARP on the wire, VIRTIO_NET_S_ANNOUNCE and a
configuration change notification for a driver that negotiated GUEST_ANNOUNCE, VIRTIO 1.2 5.1.6.5.4).
"""

from __future__ import annotations

import threading
from typing import Any

from refvm.monitor.qmp import QmpError, QmpServer

__all__ = ["AnnounceTimer", "NetCommands"]


class AnnounceTimer:
    """One ``announce-self`` run (QEMU's AnnounceTimer): rounds on a thread timer."""

    def __init__(self, params: dict[str, Any], nics: list[Any]) -> None:
        self.params = params
        self.nics = nics
        self.round = params["rounds"]
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._cancelled = False

    def start(self) -> None:
        """QEMU's ``qemu_announce_self``: no rounds, nothing; otherwise the first round now."""
        if self.round:
            self._once()

    def _once(self) -> None:
        with self._lock:
            if self._cancelled:
                return
        for nic in self.nics:
            nic.announce()
        with self._lock:
            self.round -= 1
            if self.round and not self._cancelled:
                self._step()

    def _step(self) -> None:
        p = self.params
        delay = p["initial"] + (p["rounds"] - self.round - 1) * p["step"]
        if delay < 0 or delay > p["max"]:
            delay = p["max"]
        self._timer = threading.Timer(max(delay, 0) / 1000.0, self._once)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class NetCommands:
    """Registers the NIC commands of one machine on a QMP server (the NICs are in ``machine.devices``)."""

    def __init__(self, server: QmpServer, machine: Any) -> None:
        self.server = server
        self.machine = machine
        self.timers: dict[str, AnnounceTimer] = {}
        server.register("announce-self", self.announce_self, args={
            "initial": int, "max": int, "rounds": int, "step": int, "*interfaces": list, "*id": str,
        })
        server.register("set_link", self.set_link, args={"name": str, "up": bool})

    def nics(self) -> list[tuple[str, Any]]:
        """(name, device) of every virtio-net: the ``id``, else QEMU's ``<type>.<n>`` generated name."""
        from refvm.virtio.devices.net import VirtioNet

        out = []
        unnamed = 0
        for model in self.machine.devices.fronts(VirtioNet):
            name = model.qdev_id
            if not name:
                name = f"virtio-net-pci.{unnamed}"
                unnamed += 1
            out.append((name, model))
        return out

    def announce_self(self, args: dict[str, Any]) -> dict[str, Any]:
        """QMP ``announce-self`` (qapi/net.json): start (or restart) the announce timer ``id``."""
        wanted = args.get("interfaces")
        nics = [dev for name, dev in self.nics() if wanted is None or name in wanted]
        key = args.get("id", "")
        old = self.timers.pop(key, None)
        if old is not None:
            old.cancel()
        timer = AnnounceTimer(dict(args), nics)
        self.timers[key] = timer
        timer.start()
        return {}

    def set_link(self, args: dict[str, Any]) -> dict[str, Any]:
        """QMP ``set_link`` (qapi/net.json): the name is a NIC's (id or generated) or its netdev's id."""
        name = args["name"]
        found = [dev for nic, dev in self.nics() if name in (nic, getattr(dev, "netdev_id", None))]
        if not found:
            raise QmpError(f"Device '{name}' not found", "DeviceNotFound")
        for dev in found:
            dev.set_link(args["up"])
        return {}

    def close(self) -> None:
        """Stop every running announce timer."""
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()

"""virtio-net's own migratable state (QEMU's vmstate_virtio_net_device, in refvm's terms).

Carried: the MAC the driver set (CTRL_MAC_ADDR_SET), ``status`` (LINK_UP, ANNOUNCE; the destination's link
follows it, as QEMU's post_load does), the queue pairs in use, the receive filter (modes, unicast and
multicast tables with their overflow flags, the VLAN table) and the announce count. Receive buffers the
device holds popped for a frame not yet delivered are given back to their receive queue (they are the last
ones popped there) and popped again by the destination. Frames waiting in the device for a buffer are not
carried: like frames on the wire during the switchover, they are lost (TCP and ARP retry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from refvm.migration.state import BOOL, U16, U32, DeviceState, buffer, sfield, u8_array

if TYPE_CHECKING:
    from refvm.virtio.devices.net import VirtioNet
    from refvm.virtio.queue import Chain
    from refvm.virtio.state import VirtioCoreState

__all__ = ["NetState", "NetMigration"]

_MACS = 64 * 6  # MAC_TABLE_ENTRIES six-byte addresses
_VLAN_BYTES = 4096 // 8


def _macs(value: bytes) -> bool:
    return len(value) % 6 == 0


@dataclass
class NetState(DeviceState):
    """The NIC as the driver configured it; see the module docstring for what is not carried."""

    VMSD_NAME = "virtio-net-device"

    mac: tuple[int, ...] = sfield(u8_array(6), (0,) * 6)
    net_status: int = sfield(U16, 1, lambda v: v <= 3, "LINK_UP and ANNOUNCE bits only")
    curr_pairs: int = sfield(U16, 1, lambda v: v >= 1, "at least 1")
    announces: int = sfield(U32, 0)
    promisc: bool = sfield(BOOL, True)
    allmulti: bool = sfield(BOOL, False)
    alluni: bool = sfield(BOOL, False)
    nomulti: bool = sfield(BOOL, False)
    nouni: bool = sfield(BOOL, False)
    nobcast: bool = sfield(BOOL, False)
    uni_macs: bytes = sfield(buffer(_MACS), b"", _macs, "whole 6-byte addresses")
    multi_macs: bytes = sfield(buffer(_MACS), b"", _macs, "whole 6-byte addresses")
    uni_overflow: bool = sfield(BOOL, False)
    multi_overflow: bool = sfield(BOOL, False)
    vlan_filter: bool = sfield(BOOL, False)
    vlans: bytes = sfield(buffer(_VLAN_BYTES), b"", lambda v: len(v) in (0, _VLAN_BYTES), "0 or 512 bytes")

    def cross_check(self) -> tuple[str, str] | None:
        if self.vlan_filter != bool(self.vlans):
            return "vlans", "a VLAN table exactly when vlan_filter is set"
        return None


class NetMigration:
    """virtio-net's migration hooks (a mixin of :class:`~refvm.virtio.devices.net.VirtioNet`)."""

    def held_chains(self: VirtioNet, index: int) -> tuple[Chain, ...]:  # type: ignore[misc]
        """Receive buffers popped for a frame not yet delivered: the last ones popped on their queue."""
        return tuple(self._helds[index // 2]) if index < self.ctrl_index and index % 2 == 0 else ()

    def save_device(self: VirtioNet) -> NetState:  # type: ignore[misc]
        vlans = b""
        if self.vlans is not None:
            bitmap = bytearray(_VLAN_BYTES)
            for vid in self.vlans:
                bitmap[vid // 8] |= 1 << (vid % 8)
            vlans = bytes(bitmap)
        return NetState(mac=tuple(self.config[0:6]), net_status=self.net_status, curr_pairs=self.curr_pairs,
                        announces=self.announces, promisc=self.promisc, allmulti=self.allmulti, alluni=self.alluni,
                        nomulti=self.nomulti, nouni=self.nouni, nobcast=self.nobcast,
                        uni_macs=b"".join(self.uni_macs), multi_macs=b"".join(self.multi_macs),
                        uni_overflow=self.uni_overflow, multi_overflow=self.multi_overflow,
                        vlan_filter=self.vlans is not None, vlans=vlans)

    def device_problem(self: VirtioNet, st: object, core: VirtioCoreState) -> tuple[str, str] | None:  # type: ignore[misc]
        """What a driver could not have made of this NIC: more pairs than it has or than MQ allows."""
        assert isinstance(st, NetState)
        limit = self.pairs_allowed(core.negotiated_features)
        if st.curr_pairs > limit:
            return "curr_pairs", f"{st.curr_pairs} pairs, at most {limit} here"
        return None

    def load_device(self: VirtioNet, st: object) -> None:  # type: ignore[misc]
        assert isinstance(st, NetState)
        self.config[0:6] = bytes(st.mac)
        self.net_status, self.link_up, self.announces = st.net_status, bool(st.net_status & 1), st.announces
        self.promisc, self.allmulti, self.alluni = st.promisc, st.allmulti, st.alluni
        self.nomulti, self.nouni, self.nobcast = st.nomulti, st.nouni, st.nobcast
        self.uni_macs = [st.uni_macs[i:i + 6] for i in range(0, len(st.uni_macs), 6)]
        self.multi_macs = [st.multi_macs[i:i + 6] for i in range(0, len(st.multi_macs), 6)]
        self.uni_overflow, self.multi_overflow = st.uni_overflow, st.multi_overflow
        self.vlans = {v for v in range(len(st.vlans) * 8) if st.vlans[v // 8] >> (v % 8) & 1} \
            if st.vlan_filter else None
        for held in self._helds:  # given back to the rings by the source
            held.clear()
        for backlog in self.rx_backlogs:
            backlog.clear()
        self.ctrl_index = 2 if self._single_pair(self.negotiated_features) else 2 * self.max_pairs
        self._sync_status()
        if self.curr_pairs != st.curr_pairs:
            self.curr_pairs = st.curr_pairs
            self._apply_pairs()

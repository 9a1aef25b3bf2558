"""virtio-net: the network device (VIRTIO 1.2 section 5.1), as QEMU 7.2's ``virtio-net-pci`` on a tap.

Properties (plus the transport's ``addr id bus disable-legacy disable-modern vectors`` and the core's
``indirect_desc event_idx packed``):

===========  ==================  =================================================================
property     default             meaning
===========  ==================  =================================================================
``netdev``   required            id of a ``-netdev tap`` (a :class:`~refvm.virtio.devices.tap.Tap`)
``mac``      52:54:00:12:34:56   ``mac`` in the configuration space (QEMU's default NIC address)
``ctrl_vq``  on                  offer the control queue and its CTRL_* features
``status``   on                  offer VIRTIO_NET_F_STATUS (``status`` LINK_UP)
``mrg_rxbuf``  on                offer VIRTIO_NET_F_MRG_RXBUF
``rx_queue_size`` / ``tx_queue_size``  256  queue sizes (power of 2, 256..1024)
``host_mtu``  0 (none)           offer VIRTIO_NET_F_MTU with config ``mtu`` = N (68..65535, 5.1.4.1)
``speed``     -1 (unknown)       Mbit/s; >= 0 offers VIRTIO_NET_F_SPEED_DUPLEX (config ``speed``)
``duplex``    (unknown)          ``full`` / ``half``: offers VIRTIO_NET_F_SPEED_DUPLEX (``duplex``)
``mq``        off                offer VIRTIO_NET_F_MQ (with ``ctrl_vq``; the pairs are the tap's ``queues``)
===========  ==================  =================================================================

Offered features are QEMU 7.2's for a backend without offloads (measured with ``-netdev user``, the
same as ``tap,vnet_hdr=off``): CTRL_GUEST_OFFLOADS, MAC, MRG_RXBUF, STATUS, CTRL_VQ, CTRL_RX,
CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE, CTRL_MAC_ADDR; config ``mac``, ``status`` = LINK_UP (8
bytes); queues receiveq 256, transmitq 256, controlq 64.

5.1.6: every buffer starts with ``struct virtio_net_hdr`` (12 bytes with VERSION_1). Transmit: the
header must be in the chain (else DEVICE_NEEDS_RESET, as QEMU's virtio_error); no offloads are
negotiable, so the frame goes to the tap with a zeroed header. Receive: a reader thread takes frames
from the tap, applies QEMU's receive filter (promiscuous until the driver says otherwise, 5.1.6.5.1),
and fills posted buffers, merging several when MRG_RXBUF is negotiated (``num_buffers``, 5.1.6.4);
without it a frame that does not fit one buffer is dropped. Frames that find no buffers wait in a
bounded queue (oldest dropped first, counted in :attr:`rx_dropped`).

The configuration space is as long as the last field a offered feature brings in (QEMU's
``virtio_net_config_size``): 8 bytes (mac, status), 12 with MTU, 17 with SPEED_DUPLEX.

Speed and duplex (5.1.4): ``speed`` is the le32 property value (-1, unknown, reads 0xffffffff) and
``duplex`` is 0x01 full, 0x00 half, 0xff unknown. That is the descriptive text of 5.1.4 and ethtool's
encoding, which Linux's driver and QEMU use; the device-normative line of 5.1.4.2 says the reverse (0x00
full), a typo of the spec (an erratum: virtio-spec issue #75). Following the typo made a Linux guest report
refvm's full-duplex link as half duplex. Neither changes while the device runs.

MTU (5.1.4.1): with VIRTIO_NET_F_MTU negotiated, a received frame longer than ``mtu`` plus the
Ethernet header (14 bytes, 18 with an 802.1Q tag) is not passed to the driver (counted in
:attr:`rx_oversize`); transmitted frames up to that size go out whole (QEMU 7.2 passes longer
received frames through: a known deviation the conformance suite records). QEMU 7.2 accepts any
``host_mtu`` of 1..65535; refvm refuses 1..67 because 5.1.4.1 says the device MUST present 68..65535.

Guest announce (5.1.6.5.4): :meth:`announce` is one round of QMP ``announce-self`` for this NIC, as
QEMU 7.2's ``qemu_announce_self_iter``: a RARP frame from the NIC's own (property) MAC goes out on the
tap while the link is up, and when the driver negotiated GUEST_ANNOUNCE and CTRL_VQ the device sets
VIRTIO_NET_S_ANNOUNCE in ``status`` and raises a configuration change notification. The driver's
VIRTIO_NET_CTRL_ANNOUNCE_ACK clears the bit; an ACK with the bit clear is VIRTIO_NET_ERR (QEMU).

Multiqueue (5.1.6.5.5): a tap opened with ``queues=N`` gives N receive/transmit pairs (queues 2i, 2i+1)
and the control queue last (2N), as QEMU 7.2 creates them whatever ``mq`` says; ``mq=on`` offers
VIRTIO_NET_F_MQ with config ``max_virtqueue_pairs`` = N. Pair i uses tap queue i both ways. After
reset only pair 0 is used; VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET k (1..N, MQ negotiated, else
VIRTIO_NET_ERR) enables pairs 0..k-1. As QEMU does, the tap queues of unused pairs are detached
(TUNSETQUEUE), so the kernel steers every frame to a used pair, and buffers on unused transmit queues
wait until their pair is enabled.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import threading
from collections import deque
from collections.abc import Mapping, Sequence

from refvm.memory import GuestMemory
from refvm.virtio.device import VirtioDevice
from refvm.virtio.devices.net_state import NetMigration, NetState
from refvm.virtio.devices.props import Props
from refvm.virtio.devices.tap import VNET_HDR_LEN, Tap
from refvm.virtio.queue import Chain, Virtqueue

__all__ = ["VirtioNet", "parse_mac"]

log = logging.getLogger(__name__)

F_CTRL_GUEST_OFFLOADS = 2
F_MTU = 3
F_MAC = 5
F_MRG_RXBUF = 15
F_STATUS = 16
F_CTRL_VQ = 17
F_CTRL_RX = 18
F_CTRL_VLAN = 19
F_CTRL_RX_EXTRA = 20
F_GUEST_ANNOUNCE = 21
F_MQ = 22
F_CTRL_MAC_ADDR = 23
F_SPEED_DUPLEX = 63
_CTRL_FEATURES = (F_CTRL_GUEST_OFFLOADS, F_CTRL_VQ, F_CTRL_RX, F_CTRL_VLAN, F_CTRL_RX_EXTRA, F_GUEST_ANNOUNCE,
                  F_CTRL_MAC_ADDR)

S_LINK_UP, S_ANNOUNCE = 1, 2
ANNOUNCE_ACK = 0
MQ_VQ_PAIRS_SET = 0
CFG_MAX_PAIRS = 8
ETH_P_RARP = 0x8035
# 5.1.6.5 control classes / commands
CLASS_RX, CLASS_MAC, CLASS_VLAN, CLASS_ANNOUNCE, CLASS_MQ, CLASS_GUEST_OFFLOADS = 0, 1, 2, 3, 4, 5
OK, ERR = 0, 1
MAC_TABLE_ENTRIES = 64
MAX_VLAN = 4096
RX_BACKLOG = 256
MAX_MERGE = 64  # buffers one received frame may span
DEFAULT_MAC = "52:54:00:12:34:56"
_BCAST = b"\xff" * 6
ETH_HLEN = 14
VLAN_HLEN = 4
MTU_MIN, MTU_MAX = 68, 65535
# struct virtio_net_config offsets (5.1.4)
CFG_MTU, CFG_SPEED, CFG_DUPLEX = 10, 12, 16
SPEED_UNKNOWN = -1
#: 5.1.4 duplex values as the descriptive text, ethtool, Linux and QEMU have them (5.1.4.2's normative line
#: swaps full and half: an erratum, virtio-spec issue #75)
DUPLEX_FULL, DUPLEX_HALF, DUPLEX_UNKNOWN = 0x01, 0x00, 0xFF
#: (feature, end of the last field it brings in), QEMU's feature_sizes for virtio_net_config
_CONFIG_ENDS = ((F_MAC, 6), (F_STATUS, 8), (F_MQ, 10), (F_MTU, 12), (F_SPEED_DUPLEX, 17))


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(text)
    return bytes(int(p, 16) for p in parts)


def rarp_frame(mac: bytes) -> bytes:
    """QEMU's ``announce_self_create``: a broadcast RARP request for ``mac``, padded to 60 bytes."""
    arp = (b"\x00\x01\x08\x00\x06\x04\x00\x03"  # Ethernet, IPv4, hlen 6, plen 4, op 3 (RARP request)
           + mac + bytes(4) + mac + bytes(4))
    return (_BCAST + mac + ETH_P_RARP.to_bytes(2, "big") + arp).ljust(60, b"\x00")


def parse_uint(name: str, text: str, bits: int) -> int:
    """A QEMU unsigned integer property value (``host_mtu``): QEMU's visitor errors for bad values."""
    try:
        n = int(text, 0)
    except ValueError:
        raise ValueError(f"Parameter '{name}' expects integer") from None
    if not 0 <= n < 1 << bits:
        raise ValueError(f"Parameter '{name}' expects uint{bits}_t")
    return n


def parse_int32(name: str, text: str) -> int:
    """A QEMU int32 property value (``speed``), with QEMU's visitor errors."""
    try:
        n = int(text, 0)
    except ValueError:
        raise ValueError(f"Parameter '{name}' expects integer") from None
    if not -(1 << 31) <= n < 1 << 31:
        raise ValueError(f"Parameter '{name}' expects int32_t")
    return n


def config_size(features: int) -> int:
    """Bytes of ``struct virtio_net_config`` the offered ``features`` make present (5.1.4)."""
    return max([6] + [end for bit, end in _CONFIG_ENDS if features >> bit & 1])


class VirtioNet(NetMigration, VirtioDevice):
    """A virtio NIC on a tap device."""

    device_id = 1
    VMSD_NAME = "virtio-net"
    DEVICE_STATE = NetState
    feature_names = {2: "CTRL_GUEST_OFFLOADS", 3: "MTU", 5: "MAC", 15: "MRG_RXBUF", 16: "STATUS", 17: "CTRL_VQ",
                     18: "CTRL_RX", 19: "CTRL_VLAN", 20: "CTRL_RX_EXTRA", 21: "GUEST_ANNOUNCE", 22: "MQ",
                     23: "CTRL_MAC_ADDR", 63: "SPEED_DUPLEX"}

    def __init__(self, mem: GuestMemory, tap: Tap, *, mac: bytes = bytes.fromhex("525400123456"),
                 ctrl_vq: bool = True, status: bool = True, mrg_rxbuf: bool = True,
                 rx_queue_size: int = 256, tx_queue_size: int = 256, host_mtu: int = 0,
                 speed: int = SPEED_UNKNOWN, duplex: int | None = None, mq: bool = False,
                 start_reader: bool = True, **virtio: bool) -> None:
        self.tap = tap
        self.max_pairs = max(tap.queues, 1)
        self.curr_pairs = 1
        self.perm_mac = mac
        self.host_mtu = host_mtu
        feats = 1 << F_MAC
        if host_mtu:
            feats |= 1 << F_MTU
        if speed >= 0 or duplex is not None:  # QEMU: either property offers SPEED_DUPLEX
            feats |= 1 << F_SPEED_DUPLEX
        if mrg_rxbuf:
            feats |= 1 << F_MRG_RXBUF
        if status:
            feats |= 1 << F_STATUS
        if ctrl_vq:
            for b in _CTRL_FEATURES:
                feats |= 1 << b
            if mq:
                feats |= 1 << F_MQ
        self.features = feats
        self.queue_max_sizes = (rx_queue_size, tx_queue_size) * self.max_pairs + ((64,) if ctrl_vq else ())
        self.ctrl_index = 2 * self.max_pairs
        self.link_up = True
        self.net_status = S_LINK_UP  # QEMU's n->status: LINK_UP and ANNOUNCE
        self.announces = 0  # announce rounds done (RARP frames sent or not)
        self.qdev_id: str | None = None  # the -device id: the NIC's name for announce-self "interfaces"
        self.rx_backlogs: list[deque[bytes]] = [deque() for _ in range(self.max_pairs)]
        self.rx_dropped = 0
        self.rx_filtered = 0
        self.rx_oversize = 0
        self.rx_packets = self.tx_packets = 0
        self._helds: list[deque[Chain]] = [deque() for _ in range(self.max_pairs)]  # rx buffers popped, not yet used
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        super().__init__(mem, config_size=config_size(feats), **virtio)
        self.config[0:6] = mac
        self._sync_status()
        if feats >> F_MQ & 1:
            self.config[CFG_MAX_PAIRS:CFG_MAX_PAIRS + 2] = self.max_pairs.to_bytes(2, "little")
        self._apply_pairs()
        if host_mtu:
            self.config[CFG_MTU:CFG_MTU + 2] = host_mtu.to_bytes(2, "little")  # never changes (5.1.4.1)
        if feats >> F_SPEED_DUPLEX & 1:
            self.config[CFG_SPEED:CFG_SPEED + 4] = (speed & 0xFFFFFFFF).to_bytes(4, "little")
            self.config[CFG_DUPLEX] = DUPLEX_UNKNOWN if duplex is None else duplex
        self._filter_reset()
        self._thread: threading.Thread | None = None
        if start_reader:
            self._thread = threading.Thread(target=self._reader, name="virtio-net-rx", daemon=True)
            self._thread.start()

    PROPERTIES = ("netdev", "mac", "ctrl_vq", "status", "mrg_rxbuf", "rx_queue_size", "tx_queue_size",
                  "host_mtu", "speed", "duplex", "mq")

    @classmethod
    def create(
        cls,
        mem: GuestMemory,
        props: Mapping[str, str],
        *,
        chardevs: Mapping[str, object] | None = None,
        drives: Mapping[str, object] | None = None,
        netdevs: Mapping[str, object] | None = None,
        objects: Mapping[str, object] | None = None,
        type_name: str = "virtio-net-pci",
    ) -> VirtioNet:
        p = Props(type_name, props, cls.PROPERTIES)
        nid = p.text("netdev")
        if not nid:
            raise ValueError(f"{type_name}: netdev property not set")
        tap = (netdevs or {}).get(nid)
        if tap is None:
            raise ValueError(f"Property '{type_name}.netdev' can't find value '{nid}'")
        if not isinstance(tap, Tap):
            raise ValueError(f"Property '{type_name}.netdev': '{nid}' is not a tap netdev")
        text = p.text("mac", DEFAULT_MAC) or DEFAULT_MAC
        try:
            mac = parse_mac(text)
        except ValueError:
            raise ValueError(f"Property '{type_name}.mac' doesn't take value '{text}'") from None
        sizes = []
        for name in ("rx_queue_size", "tx_queue_size"):
            n = p.number(name, 256, 256, 1024)
            if n & (n - 1):
                raise ValueError(f"Invalid {name} (= {n}), must be a power of 2 between 256 and 1024.")
            sizes.append(n)
        host_mtu = parse_uint("host_mtu", p.text("host_mtu", "0") or "0", 16)
        if 0 < host_mtu < MTU_MIN:
            raise ValueError(f"'host_mtu' must be between {MTU_MIN} and {MTU_MAX}")
        duplex_text = p.text("duplex")
        duplex: int | None = None
        if duplex_text is not None:
            if duplex_text not in ("half", "full"):
                raise ValueError("'duplex' must be 'half' or 'full'")
            duplex = DUPLEX_FULL if duplex_text == "full" else DUPLEX_HALF
        speed = parse_int32("speed", p.text("speed", "-1") or "-1")
        if speed < SPEED_UNKNOWN:
            raise ValueError("'speed' must be between 0 and INT_MAX")
        dev = cls(mem, tap, mac=mac, ctrl_vq=p.flag("ctrl_vq", True), status=p.flag("status", True),
                  mrg_rxbuf=p.flag("mrg_rxbuf", True), rx_queue_size=sizes[0], tx_queue_size=sizes[1],
                  host_mtu=host_mtu, speed=speed, duplex=duplex, mq=p.flag("mq", False), **p.virtio_flags())
        dev.qdev_id = p.text("id")
        dev.netdev_id = nid  # QMP set_link may name the NIC by its backend's id
        return dev

    # ------------------------------------------------------------------ state
    def _filter_reset(self) -> None:
        self.promisc, self.allmulti, self.alluni = True, False, False
        self.nomulti, self.nouni, self.nobcast = False, False, False
        self.uni_macs: list[bytes] = []
        self.multi_macs: list[bytes] = []
        self.uni_overflow = self.multi_overflow = False
        self.vlans: set[int] | None = None  # None: every VLAN passes (CTRL_VLAN not negotiated)

    @property
    def rx_backlog(self) -> deque[bytes]:
        """Frames pair 0 has not delivered yet."""
        return self.rx_backlogs[0]

    def _apply_pairs(self) -> None:
        """Attach the tap queues of used pairs and detach the others (QEMU's virtio_net_set_queue_pairs)."""
        if self.max_pairs < 2:
            return
        for i in range(self.max_pairs):
            try:
                self.tap.enable_queue(i, i < self.curr_pairs)
            except OSError as exc:
                log.warning("virtio-net: %s", exc)
        try:
            os.write(self._wake_w, b"q")  # the reader selects on the attached queues only
        except OSError:
            pass

    def reset_device(self) -> None:
        for held in self._helds:
            held.clear()
        for backlog in self.rx_backlogs:
            backlog.clear()
        self.ctrl_index = 2 * self.max_pairs
        if self.curr_pairs != 1:
            self.curr_pairs = 1  # 5.1.6.5.5: after reset only the first pair is used
            self._apply_pairs()
        self._filter_reset()
        self.config[0:6] = self.perm_mac
        self.net_status &= ~S_ANNOUNCE  # QEMU's virtio_net_reset
        self._sync_status()

    def driver_ok(self) -> None:
        self.vlans = set() if self.negotiated(F_CTRL_VLAN) else None
        self._flush_rx()

    def set_link(self, up: bool) -> None:
        """QMP ``set_link``: LINK_UP in ``status`` and a configuration change notification (5.1.4)."""
        with self.lock:
            self.link_up = up
            self.net_status = (self.net_status & ~S_LINK_UP) | (S_LINK_UP if up else 0)
            if self.features & (1 << F_STATUS):
                self._sync_status()
                self.config_changed()

    def _sync_status(self) -> None:
        """The ``status`` config field mirrors :attr:`net_status` when STATUS is offered (5.1.4)."""
        if self.features & (1 << F_STATUS):
            self.config[6:8] = self.net_status.to_bytes(2, "little")

    def announce(self) -> None:
        """One round of QMP ``announce-self`` (QEMU's ``qemu_announce_self_iter`` and
        ``virtio_net_announce``): a RARP frame on the wire, and VIRTIO_NET_S_ANNOUNCE with a
        configuration change notification if the driver can announce itself (5.1.6.5.4)."""
        with self.lock:
            self.announces += 1
            if self.link_up:
                self.tap.write(bytes(VNET_HDR_LEN) + rarp_frame(self.perm_mac))
            if self.negotiated(F_GUEST_ANNOUNCE) and self.negotiated(F_CTRL_VQ):
                self.net_status |= S_ANNOUNCE
                self._sync_status()
                self.config_changed()

    @property
    def mac(self) -> bytes:
        return bytes(self.config[0:6])

    # ------------------------------------------------------------------ queues
    def handle_queue(self, queue: Virtqueue) -> None:
        i = queue.index
        if i == self.ctrl_index:
            self._control(queue)
        elif i < self.ctrl_index and i // 2 < self.curr_pairs:  # unused pairs wait (5.1.6.5.5)
            if i % 2:
                self._transmit(queue)
            else:
                self._flush_rx(i // 2)

    def _single_pair(self, negotiated: int) -> bool:
        return self.max_pairs > 1 and not negotiated >> F_MQ & 1 and len(self.queue_max_sizes) > 2 * self.max_pairs

    def shape_queues(self, queues: list[Virtqueue], negotiated: int) -> None:
        """Without MQ negotiated only one pair exists and the control queue is queue 2 (5.1.2; QEMU's
        virtio_net_change_num_queue_pairs): the other pairs' queues become unavailable (size 0)."""
        if self._single_pair(negotiated):
            first = queues[0]
            for i in range(2, len(queues)):
                nq = type(first)(self.mem, i, 64 if i == 2 else 0)
                nq.event_idx, nq.indirect = first.event_idx, first.indirect
                queues[i] = nq

    def _setup_queues(self) -> None:
        super()._setup_queues()
        self.ctrl_index = 2 if self._single_pair(self.negotiated_features) else 2 * self.max_pairs

    def pairs_allowed(self, negotiated: int) -> int:
        """Queue pairs a driver with ``negotiated`` features may use (5.1.6.5.5)."""
        return self.max_pairs if negotiated >> F_MQ & 1 else 1

    def queue_reset_device(self, index: int) -> None:
        if index < self.ctrl_index and index % 2 == 0:
            self._helds[index // 2].clear()

    def _transmit(self, queue: Virtqueue) -> None:
        for _ in range(queue.size):
            chain = queue.pop()
            if chain is None:
                return
            if chain.readable_len < VNET_HDR_LEN:
                self.fail("5.1.6.2: virtio-net transmit buffer without its 12-byte header")
                return
            frame = chain.read(VNET_HDR_LEN, min(chain.readable_len, 65536 + VNET_HDR_LEN) - VNET_HDR_LEN)
            queue.add_used(chain, 0)  # published once per notify (VirtioDevice._run -> notify_used)
            if self.link_up and frame:
                self.tx_packets += 1
                self.tap.write(bytes(VNET_HDR_LEN) + frame, queue.index // 2)  # no offloads: a plain frame

    # ------------------------------------------------------------------ receive (5.1.6.3, 5.1.6.4)
    def _reader(self) -> None:
        while not self._stop.is_set():
            fds = {fd: i for i, fd in enumerate(self.tap.fds) if fd >= 0 and self.tap.enabled[i]}
            try:
                ready, _, _ = select.select([*fds, self._wake_r], [], [], 1.0)
            except (OSError, ValueError):
                return
            if self._stop.is_set():
                return
            if self._wake_r in ready:
                os.read(self._wake_r, 64)  # the attached queues changed
                continue
            for fd in ready:
                burst = []
                for _ in range(64):
                    pkt = self.tap.read(fds[fd])
                    if not pkt:
                        break
                    burst.append(pkt[VNET_HDR_LEN:])
                if burst:
                    self.receive_burst(burst, fds[fd])  # one delivery pass, one notification

    def receive(self, frame: bytes, pair: int = 0) -> None:
        """A frame from tap queue ``pair`` (any thread): deliver it on that pair's receive queue now, or
        keep it for later buffers."""
        self.receive_burst((frame,), pair)

    def receive_burst(self, frames: Sequence[bytes], pair: int = 0) -> None:
        """Frames read from tap queue ``pair`` in one go: delivered in one pass with at most one used
        buffer notification for the burst (the driver sees one interrupt, not one per frame)."""
        with self.lock:
            if not self.link_up:
                return
            backlog = self.rx_backlogs[pair]
            for frame in frames:
                if len(backlog) >= RX_BACKLOG:
                    backlog.popleft()
                    self.rx_dropped += 1
                backlog.append(frame)
            self._flush_rx(pair)

    def _accepts(self, frame: bytes) -> bool:
        """QEMU's receive filter (5.1.6.5.1, 5.1.6.5.2, 5.1.6.5.3)."""
        if self.promisc:
            return True
        if len(frame) >= 16 and frame[12:14] == b"\x81\x00" and self.vlans is not None:
            vid = int.from_bytes(frame[14:16], "big") & 0xFFF
            if vid not in self.vlans:
                return False
        dest = frame[:6]
        if len(dest) < 6:
            return False
        if dest[0] & 1:
            if dest == _BCAST:
                return not self.nobcast
            if self.nomulti:
                return False
            return self.allmulti or self.multi_overflow or dest in self.multi_macs
        if self.nouni:
            return False
        return self.alluni or self.uni_overflow or dest == self.mac or dest in self.uni_macs

    def _flush_rx(self, pair: int | None = None) -> None:
        """Deliver waiting frames of ``pair`` (default: every used pair) into its receive queue."""
        if pair is None:
            for p in range(self.curr_pairs):
                self._flush_rx(p)
            return
        if not self.live or pair >= self.curr_pairs or 2 * pair >= len(self.queues) or \
                not self.queues[2 * pair].ready:
            return
        q = self.queues[2 * pair]
        backlog = self.rx_backlogs[pair]
        delivered = False
        try:
            limit = self._rx_limit()
            while backlog:
                frame = backlog[0]
                if limit is not None and len(frame) > limit + (VLAN_HLEN if frame[12:14] == b"\x81\x00" else 0):
                    backlog.popleft()  # 5.1.4.1: MUST NOT pass packets exceeding mtu
                    self.rx_oversize += 1
                    continue
                if not self._accepts(frame):
                    backlog.popleft()
                    self.rx_filtered += 1
                    continue
                done = self._deliver(q, frame, self._helds[pair])
                if done is None:
                    break  # wait for more buffers
                backlog.popleft()
                delivered = delivered or done
        except Exception as exc:  # a VirtqueueError/GuestMemoryError from the driver's ring: fail the device
            q.publish()  # frames delivered before the error stay delivered
            self.fail(f"virtio-net receive: {exc}")
            return
        if delivered:
            self.notify_used(q)  # publishes the burst's used elements, then decides the interrupt

    def _rx_limit(self) -> int | None:
        """Longest frame the driver may receive: ``mtu`` + Ethernet header once MTU is negotiated (5.1.4.1)."""
        return self.host_mtu + ETH_HLEN if self.host_mtu and self.negotiated(F_MTU) else None

    def _deliver(self, q: Virtqueue, frame: bytes, held: deque[Chain]) -> bool | None:
        """Put one frame into ``held`` buffers (popped from ``q`` as needed): True if used, False if
        dropped, None if buffers are missing. O(buffers used): room is counted as buffers are added."""
        need = VNET_HDR_LEN + len(frame)
        merge = self.negotiated(F_MRG_RXBUF)
        limit = MAX_MERGE if merge else 1
        room = 0
        for chain in itertools.islice(held, limit):  # at most `limit` buffers, kept from an earlier frame
            room += chain.writable_len
        while len(held) < limit and room < need:
            chain = q.pop()
            if chain is None:
                break
            held.append(chain)
            room += chain.writable_len
        if not held:
            return None
        if room < need:
            if not merge or len(held) >= limit:
                log.debug("virtio-net: %d-byte frame does not fit the receive buffer: dropped", len(frame))
                self.rx_dropped += 1
                return False
            return None
        data = memoryview(bytes(VNET_HDR_LEN) + frame)
        used: list[tuple[Chain, int]] = []
        pos = 0
        while pos < need:
            chain = held.popleft()
            n = chain.write_into(data[pos:])
            used.append((chain, n))
            pos += n
        used[0][0].write_into(len(used).to_bytes(2, "little"), 10)  # num_buffers (5.1.6.4)
        for chain, n in used:
            q.add_used(chain, n)  # published with the burst's notification (_flush_rx)
        self.rx_packets += 1
        return True

    # ------------------------------------------------------------------ control queue (5.1.6.5)
    def _control(self, queue: Virtqueue) -> None:
        for _ in range(queue.size):
            chain = queue.pop()
            if chain is None:
                return
            if chain.readable_len < 2 or chain.writable_len < 1:
                self.fail("5.1.6.5: virtio-net control request without its class/command header or ack byte")
                return
            raw = chain.read(0, min(chain.readable_len, 2 + 8 + 2 * 4 + 2 * 6 * 4096))
            ack = self._command(raw[0], raw[1], raw[2:])
            chain.write_into(bytes([ack]))
            queue.add_used(chain, 1)

    def _command(self, cls: int, cmd: int, data: bytes) -> int:
        if cls == CLASS_RX:
            if len(data) != 1 or cmd > 5:
                return ERR
            on = data[0] != 0
            name = ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast")[cmd]
            setattr(self, name, on)
            return OK
        if cls == CLASS_MAC:
            if cmd == 1:  # ADDR_SET
                if len(data) != 6:
                    return ERR
                self.config[0:6] = data
                return OK
            if cmd == 0:  # TABLE_SET: unicast table then multicast table
                tables = []
                off = 0
                for _ in range(2):
                    if len(data) < off + 4:
                        return ERR
                    n = int.from_bytes(data[off:off + 4], "little")
                    off += 4
                    if n > 4096 or len(data) < off + 6 * n:
                        return ERR
                    tables.append([data[off + 6 * k: off + 6 * k + 6] for k in range(n)])
                    off += 6 * n
                if off != len(data):
                    return ERR
                uni, multi = tables
                self.uni_overflow = len(uni) > MAC_TABLE_ENTRIES
                self.multi_overflow = len(multi) > MAC_TABLE_ENTRIES
                self.uni_macs = [] if self.uni_overflow else uni
                self.multi_macs = [] if self.multi_overflow else multi
                return OK
            return ERR
        if cls == CLASS_VLAN:
            if len(data) != 2 or cmd > 1:
                return ERR
            vid = int.from_bytes(data, "little")
            if vid >= MAX_VLAN:
                return ERR
            if self.vlans is None:
                self.vlans = set(range(MAX_VLAN))
            (self.vlans.add if cmd == 0 else self.vlans.discard)(vid)
            return OK
        if cls == CLASS_ANNOUNCE:  # 5.1.6.5.4.1: the ACK clears VIRTIO_NET_S_ANNOUNCE
            if cmd != ANNOUNCE_ACK or not self.net_status & S_ANNOUNCE:
                return ERR
            self.net_status &= ~S_ANNOUNCE
            self._sync_status()
            return OK
        if cls == CLASS_MQ:  # 5.1.6.5.5 (QEMU reads the first 2 bytes of the command data)
            pairs = int.from_bytes(data[:2], "little")
            if cmd != MQ_VQ_PAIRS_SET or len(data) < 2 or not self.negotiated(F_MQ) or \
                    not 1 <= pairs <= self.max_pairs:
                return ERR
            old, self.curr_pairs = self.curr_pairs, pairs
            self._apply_pairs()
            for p in range(old, pairs):  # newly used pairs: buffers the driver already posted
                self._flush_rx(p)
                tx = self.queues[2 * p + 1]
                if tx.ready:
                    self._transmit(tx)
                    self.notify_used(tx)
            return OK
        if cls == CLASS_GUEST_OFFLOADS:
            if cmd != 0 or len(data) != 8:
                return ERR
            return OK if int.from_bytes(data, "little") == 0 else ERR  # no guest offloads exist here
        return ERR

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop the reader thread (the tap stays open: it belongs to the netdev)."""
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

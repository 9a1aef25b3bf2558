"""Network device (VIRTIO 1.2 §5.1): configuration layout, control queue, and the datapath.

Configuration and control-queue checks use `-netdev hubport` (always built in, no host setup). The datapath
uses `-netdev socket,udp=...`: every Ethernet frame is one UDP datagram between the target and a socket the
test holds, so frames can be injected and captured byte for byte with no tap device and no root. QEMU's
virtio-net moves packets only while the machine runs, hence `running_vm` (a firmware that only halts).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from conformance.targets import Target
from conformance.virtio.conftest import MAC, Machine, clause, free_udp_port, known_deviation
from conformance.virtio.devices import (
    NET_F,
    NET_HDR_GSO_NONE,
    NET_HDR_LEN,
    NET_S_ANNOUNCE,
    NET_S_LINK_UP,
    net_requires,
    parse_net_hdr,
)

NET = "Device Types / Network Device"
LAYOUT = f"{NET} / Device configuration layout"
TX = f"{NET} / Device Operation / Packet Transmission"
RXBUF = f"{NET} / Device Operation / Setting Up Receive Buffers"
RX = f"{NET} / Device Operation / Processing of Incoming Packets"
CTRL = f"{NET} / Device Operation / Control Virtqueue"
RX_FILTER = f"{CTRL} / Packet Receive Filtering"
MAC_FILTER = f"{CTRL} / Setting MAC Address Filtering"
ANNOUNCE = f"{CTRL} / Gratuitous Packet Sending"
FEATURES = "Basic Facilities of a Virtio Device / Feature Bits"

CFG_MAC, CFG_STATUS, CFG_MAX_PAIRS, CFG_MTU, CFG_SPEED, CFG_DUPLEX = 0, 6, 8, 10, 12, 16
CFG_RSS_KEY, CFG_RSS_TABLE = 17, 18
CTRL_RX, CTRL_RX_PROMISC = 0, 0
CTRL_MAC, CTRL_MAC_TABLE_SET, CTRL_MAC_ADDR_SET = 1, 0, 1
CTRL_ANNOUNCE, CTRL_ANNOUNCE_ACK = 3, 0
CTRL_OK = 0
OTHER_MAC = bytes.fromhex("020000abcdef")
ETHERTYPE = b"\x88\xb5"  # IEEE 802 local experimental


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _has(offered: int, name: str) -> bool:
    return bool(offered >> NET_F[name] & 1)


def _net_args(netdev: str, *opts: str) -> list[str]:
    return ["-netdev", netdev, "-device", ",".join(["virtio-net-pci", "netdev=n0", f"mac={MAC}",
                                                    "disable-legacy=on", *opts])]


CONFIGS = {
    "default": (),
    "mtu": ("host_mtu=1400",),
    "speed-duplex": ("speed=1000", "duplex=full"),
    "mq": ("mq=on",),
    "rss": ("rss=on", "hash=on"),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@clause(LAYOUT, FEATURES)
def test_configuration_layout(vm: Callable[..., Machine], config: str) -> None:
    m = vm(*_net_args("hubport,id=n0,hubid=0", *CONFIGS[config]))
    dev = m.device("net")
    offered = dev.device_features()
    assert net_requires(offered) == [], "features offered without their prerequisites"
    assert dev.config_bytes(CFG_MAC, 6) == _mac(MAC)
    if _has(offered, "STATUS"):
        assert dev.config_read(CFG_STATUS, 2) & NET_S_LINK_UP, "link of a connected netdev is not up"
    if _has(offered, "MQ"):
        assert 1 <= dev.config_read(CFG_MAX_PAIRS, 2) <= 0x8000
    if _has(offered, "MTU"):
        mtu = dev.config_read(CFG_MTU, 2)
        assert 68 <= mtu <= 65535 and mtu >= 1280, f"mtu {mtu}"
        dev.initialize(want=1 << NET_F["MTU"])
        assert dev.config_read(CFG_MTU, 2) == mtu, "mtu changed once set"
    if _has(offered, "RSS") or _has(offered, "HASH_REPORT"):
        assert dev.config_read(CFG_RSS_KEY, 1) >= 40
    if _has(offered, "RSS"):
        assert dev.config_read(CFG_RSS_TABLE, 2) >= 128
    if _has(offered, "SPEED_DUPLEX"):
        dev.initialize(want=1 << NET_F["SPEED_DUPLEX"])
        speed, duplex = dev.config_read(CFG_SPEED, 4), dev.config_read(CFG_DUPLEX, 1)
        assert speed <= 0x7FFFFFFF or speed == 0xFFFFFFFF, f"speed {speed:#x}"
        assert duplex in (0x00, 0x01, 0xFF), f"duplex {duplex:#x}"
        if config == "speed-duplex":
            assert speed == 1000
    elif config == "speed-duplex":
        pytest.skip("speed/duplex given but VIRTIO_NET_F_SPEED_DUPLEX not offered")


@clause(LAYOUT)
def test_full_duplex_encoding(vm: Callable[..., Machine], target: Target, request) -> None:  # noqa: ANN001
    """§5.1.4.2: duplex is 0x00 for full duplex (and 0x01 for half)."""
    m = vm(*_net_args("hubport,id=n0,hubid=0", "speed=1000", "duplex=full"))
    dev = m.device("net")
    if not _has(dev.device_features(), "SPEED_DUPLEX"):
        pytest.skip("VIRTIO_NET_F_SPEED_DUPLEX not offered")
    dev.initialize(want=1 << NET_F["SPEED_DUPLEX"])
    known_deviation(request, target, "qemu", "QEMU 7.2 encodes duplex as ethtool does (full = 0x01, half = "
                    "0x00), the reverse of devicenormative 'Network Device / Device "
                    "configuration layout', which says 0x00 for full duplex and 0x01 for half")
    assert dev.config_read(CFG_DUPLEX, 1) == 0x00, "duplex=full not presented as 0x00"


def _ctrl(vq, cls: int, cmd: int, data: bytes) -> int:  # noqa: ANN001
    c = vq.transact([bytes([cls, cmd]) + data], [1])
    return c.data[0][0]


@clause(MAC_FILTER)
def test_mac_addr_set_updates_config(vm: Callable[..., Machine]) -> None:
    m = vm(*_net_args("hubport,id=n0,hubid=0"))
    dev = m.device("net")
    offered = dev.device_features()
    if not (_has(offered, "CTRL_VQ") and _has(offered, "CTRL_MAC_ADDR") and _has(offered, "MAC")):
        pytest.skip("CTRL_VQ/CTRL_MAC_ADDR/MAC not offered")
    want = sum(1 << NET_F[n] for n in ("CTRL_VQ", "CTRL_MAC_ADDR", "MAC"))
    dev, (_, _, ctrl) = m.ready("net", want=want, queues=(0, 1, 2))
    assert _ctrl(ctrl, CTRL_MAC, CTRL_MAC_ADDR_SET, OTHER_MAC) == CTRL_OK
    assert dev.config_bytes(CFG_MAC, 6) == OTHER_MAC, "config mac not updated by VIRTIO_NET_CTRL_MAC_ADDR_SET"


# ---- datapath ------------------------------------------------------------------------------------------


class Wire:
    """The host end of `-netdev socket,udp=`: one Ethernet frame per datagram."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.target_port = free_udp_port()

    @property
    def netdev(self) -> str:
        return f"socket,id=n0,udp=127.0.0.1:{self.port},localaddr=127.0.0.1:{self.target_port}"

    def send(self, frame: bytes) -> None:
        self.sock.sendto(frame, ("127.0.0.1", self.target_port))

    def recv(self, timeout: float = 3.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.sock.close()


def _frame(dst: bytes, tag: bytes) -> bytes:
    return dst + bytes.fromhex("5254aabbccdd") + ETHERTYPE + tag.ljust(46, b".")


@clause(TX)
def test_transmit_ignores_unknown_flags_and_unused_fields(running_vm: Callable[..., Machine], wire: Wire) -> None:
    """Unknown flag bits, and csum_start/csum_offset/hdr_len without NEEDS_CSUM or GSO, must not change
    what goes on the wire."""
    m = running_vm(*_net_args(wire.netdev))
    dev, (rx, tx) = m.ready("net", queues=(0, 1))
    frame = _frame(b"\xff" * 6, b"tx-test")
    hdr = struct.pack("<BBHHHHH", 0x80 | 0x40 | 0x08, NET_HDR_GSO_NONE, 0xFFFF, 0, 3, 0x7777, 0)
    c = tx.transact([hdr, frame], [])
    assert c.used.length == 0
    assert wire.recv() == frame, "the frame on the wire differs from what the driver sent"


def _receive(m: Machine, wire: Wire, count: int = 3) -> Iterator[tuple[dict[str, int], bytes, bytes]]:
    """(header, payload, frame sent) for `count` frames injected from the host, one rx buffer each."""
    dev, (rx, tx) = m.ready("net", queues=(0, 1))
    for _ in range(count):
        rx.add([rx.in_buf(2048)])
    rx.kick()
    for n in range(count):
        frame = _frame(_mac(MAC), b"rx-%d" % n)
        wire.send(frame)
        used = rx.wait_used()
        data = rx.read_back(used.id)[0][: used.length]
        yield parse_net_hdr(data), data[NET_HDR_LEN:], frame


@clause(RX)
def test_receive_header_without_offloads(running_vm: Callable[..., Machine], wire: Wire) -> None:
    for hdr, payload, frame in _receive(running_vm(*_net_args(wire.netdev)), wire):
        assert hdr["flags"] == 0, "flags must be 0 without GUEST_CSUM"
        assert hdr["gso_type"] == NET_HDR_GSO_NONE, "gso_type must be NONE without GUEST_TSO*/UFO"
        assert payload == frame


@clause(RXBUF, RX)
def test_receive_num_buffers_is_one(running_vm: Callable[..., Machine], wire: Wire, target: Target,
                                    request) -> None:  # noqa: ANN001
    m = running_vm(*_net_args(wire.netdev))
    known_deviation(request, target, "qemu", "QEMU 7.2 writes only the 10-byte legacy header when MRG_RXBUF "
                    "is not negotiated and leaves num_buffers of the 12-byte VERSION_1 header unwritten "
                    "(devicenormative 'Setting Up Receive Buffers' and 'Processing of Incoming Packets': "
                    "MUST set num_buffers to 1)")
    for hdr, _, _ in _receive(m, wire):
        assert hdr["num_buffers"] == 1, f"num_buffers {hdr['num_buffers']:#x}, must be 1 without MRG_RXBUF"


@clause(MAC_FILTER, RX_FILTER)
def test_mac_filtering_table(running_vm: Callable[..., Machine], wire: Wire) -> None:
    """Promiscuous off + the table empty after reset: a frame for another unicast MAC is dropped and one
    for our MAC arrives; after MAC_TABLE_SET with that MAC it arrives too."""
    m = running_vm(*_net_args(wire.netdev))
    dev = m.device("net")
    offered = dev.device_features()
    if not (_has(offered, "CTRL_VQ") and _has(offered, "CTRL_RX")):
        pytest.skip("CTRL_VQ/CTRL_RX not offered")
    dev, (rx, tx, ctrl) = m.ready("net", want=1 << NET_F["CTRL_VQ"] | 1 << NET_F["CTRL_RX"], queues=(0, 1, 2))
    assert _ctrl(ctrl, CTRL_RX, CTRL_RX_PROMISC, b"\x00") == CTRL_OK
    rx.add([rx.in_buf(2048)])
    rx.kick()

    def arrives(dst: bytes, tag: bytes) -> bool:
        wire.send(_frame(dst, tag))
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            used = rx.get_used()
            if used is not None:
                got = rx.read_back(used.id)[0][NET_HDR_LEN : used.length]
                rx.add([rx.in_buf(2048)])
                rx.kick()
                assert got[6 + 6 + 2 :].startswith(tag), f"unexpected frame {got[:24].hex()}"
                return True
            time.sleep(0.005)
        return False

    assert not arrives(OTHER_MAC, b"other-1"), "frame for a MAC outside mac/table accepted (table not empty)"
    assert arrives(_mac(MAC), b"own-1"), "frame for the device's own MAC dropped"
    table = struct.pack("<I", 1) + OTHER_MAC + struct.pack("<I", 0)
    assert _ctrl(ctrl, CTRL_MAC, CTRL_MAC_TABLE_SET, table) == CTRL_OK
    assert arrives(OTHER_MAC, b"other-2"), "MAC_TABLE_SET consumed but the table does not admit the MAC"
    assert _ctrl(ctrl, CTRL_RX, CTRL_RX_PROMISC, b"\x01") == CTRL_OK
    assert arrives(bytes.fromhex("02000000beef"), b"promisc"), "promiscuous mode on, frame still dropped"


@clause(ANNOUNCE)
def test_announce_ack_clears_status_bit(running_vm: Callable[..., Machine]) -> None:
    m = running_vm(*_net_args("hubport,id=n0,hubid=0"))
    dev = m.device("net")
    names = ("CTRL_VQ", "GUEST_ANNOUNCE", "STATUS")
    if not all(_has(dev.device_features(), n) for n in names):
        pytest.skip("CTRL_VQ/GUEST_ANNOUNCE/STATUS not offered")
    dev, (_, _, ctrl) = m.ready("net", want=sum(1 << NET_F[n] for n in names), queues=(0, 1, 2), msix=True)
    assert m.qmp is not None
    m.qmp.execute("announce-self", initial=1, max=1, rounds=1, step=1)
    deadline = time.monotonic() + 3
    while not dev.config_read(CFG_STATUS, 2) & NET_S_ANNOUNCE:
        assert time.monotonic() < deadline, "VIRTIO_NET_S_ANNOUNCE never set after announce-self"
        time.sleep(0.01)
    assert dev.wait_msix(0), "no configuration change notification for the announce request"
    assert _ctrl(ctrl, CTRL_ANNOUNCE, CTRL_ANNOUNCE_ACK, b"") == CTRL_OK
    assert not dev.config_read(CFG_STATUS, 2) & NET_S_ANNOUNCE, "ANNOUNCE still set after the ACK was used"

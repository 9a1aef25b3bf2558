"""Network device (VIRTIO 1.2 §5.1): configuration layout, control queue, and the datapath.

Every machine uses `-netdev tap` on a tap interface the fixture creates (root, /dev/net/tun; IPv6 is off on
it so the host kernel stays silent). Frames are injected and captured on the host side through an AF_PACKET
socket bound to that interface, filtered to one local-experimental EtherType. QEMU's virtio-net moves
packets only while the machine runs, hence `running_vm` (conftest: a firmware that only halts).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from conformance.targets import Target
from conformance.verdicts import expect, known
from conformance.virtio.conftest import MAC, Machine, clause, net_args
from conformance.virtio.devices import (
    NET_F,
    NET_HDR_GSO_NONE,
    NET_HDR_LEN,
    NET_S_ANNOUNCE,
    NET_S_LINK_UP,
    net_requires,
    parse_net_hdr,
)
from conformance.virtio.known import NET_RX_NUM_BUFFERS, NET_RX_OVER_MTU, NET_TX_HDR_LEN

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
#: The reading the duplex test follows, against the normative line that contradicts it.
DUPLEX_ERRATUM = ("5.1.4: duplex has the values of 0x01 for full duplex, 0x00 for half duplex and 0xff for unknown "
                  "duplex state. (5.1.4.2's normative line says 0x00 for full and 0x01 for half: a typo, "
                  "virtio-spec issue #75; Linux and QEMU use 0x01 = full, as ethtool does.)")

CFG_MAC, CFG_STATUS, CFG_MAX_PAIRS, CFG_MTU, CFG_SPEED, CFG_DUPLEX = 0, 6, 8, 10, 12, 16
CFG_RSS_KEY, CFG_RSS_TABLE = 17, 18
CTRL_RX, CTRL_RX_PROMISC = 0, 0
CTRL_MAC, CTRL_MAC_TABLE_SET, CTRL_MAC_ADDR_SET = 1, 0, 1
CTRL_ANNOUNCE, CTRL_ANNOUNCE_ACK = 3, 0
CTRL_OK = 0
OTHER_MAC = bytes.fromhex("020000abcdef")
ETHERTYPE_NUM = 0x88B5  # IEEE 802 local experimental
ETHERTYPE = ETHERTYPE_NUM.to_bytes(2, "big")


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _has(offered: int, name: str) -> bool:
    return bool(offered >> NET_F[name] & 1)


CONFIGS = {
    "default": (),
    "mtu": ("host_mtu=1400",),
    "speed-duplex": ("speed=1000", "duplex=full"),
    "mq": ("mq=on",),
    "rss": ("rss=on", "hash=on"),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@clause(LAYOUT, FEATURES)
def test_configuration_layout(vm: Callable[..., Machine], tap: str, config: str) -> None:
    m = vm(*net_args(tap, *CONFIGS[config]))
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
@pytest.mark.verdict("erratum", DUPLEX_ERRATUM)
def test_full_duplex_encoding(vm: Callable[..., Machine], tap: str) -> None:
    """§5.1.4: duplex is 0x01 for full duplex (and 0x00 for half), as the descriptive text, Linux and QEMU have
    it; the normative line of 5.1.4.2 swaps the two, a typo of the spec (virtio-spec issue #75)."""
    m = vm(*net_args(tap, "speed=1000", "duplex=full"))
    dev = m.device("net")
    if not _has(dev.device_features(), "SPEED_DUPLEX"):
        pytest.skip("VIRTIO_NET_F_SPEED_DUPLEX not offered")
    dev.initialize(want=1 << NET_F["SPEED_DUPLEX"])
    assert dev.config_read(CFG_DUPLEX, 1) == 0x01, "duplex=full not presented as 0x01"


def _ctrl(vq, cls: int, cmd: int, data: bytes) -> int:  # noqa: ANN001
    c = vq.transact([bytes([cls, cmd]) + data], [1])
    return c.data[0][0]


@clause(MAC_FILTER)
def test_mac_addr_set_updates_config(vm: Callable[..., Machine], tap: str) -> None:
    m = vm(*net_args(tap))
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
    """The host end of the tap: raw Ethernet frames of our EtherType, in and out."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE_NUM))
        self.sock.bind((ifname, ETHERTYPE_NUM))

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def recv(self, timeout: float = 3.0) -> bytes | None:
        """The next frame the guest sent (frames this socket sent itself are not looped back)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                return None
            if addr[2] != socket.PACKET_OUTGOING:
                return data
        return None


@pytest.fixture
def wire(tap: str) -> Iterator[Wire]:
    w = Wire(tap)
    yield w
    w.sock.close()


def _frame(dst: bytes, tag: bytes) -> bytes:
    return dst + bytes.fromhex("5254aabbccdd") + ETHERTYPE + tag.ljust(46, b".")


def _transmit(m: Machine, hdr: bytes, want: int) -> tuple[bytes, bytes | None]:
    dev, (rx, tx) = m.ready("net", want=want, queues=(0, 1))
    frame = _frame(b"\xff" * 6, b"tx-test")
    assert tx.transact([hdr, frame], []).used.length == 0, "a transmit buffer has no device-writable part"
    return frame, m.wire.recv()  # type: ignore[attr-defined]


def _tx_machine(running_vm: Callable[..., Machine], wire: Wire, *features: str) -> tuple[Machine, int]:
    m = running_vm(*net_args(wire.ifname))
    m.wire = wire  # type: ignore[attr-defined]
    offered = m.device("net").device_features()
    if not all(_has(offered, f) for f in features):
        pytest.skip(f"{'/'.join(features)} not offered")
    return m, sum(1 << NET_F[f] for f in features)


@clause(TX)
def test_transmit_ignores_unknown_flags_and_csum_fields(running_vm: Callable[..., Machine], wire: Wire) -> None:
    """CSUM negotiated (so flags may be non-zero), flags holding only unknown bits and no NEEDS_CSUM:
    the unknown bits are ignored and csum_start/csum_offset are not used; the frame goes out unchanged."""
    m, want = _tx_machine(running_vm, wire, "CSUM")
    hdr = struct.pack("<BBHHHHH", 0x80 | 0x40 | 0x08, NET_HDR_GSO_NONE, 0, 0, 3, 0x7777, 0)
    frame, got = _transmit(m, hdr, want)
    assert got == frame, "the frame on the wire differs from what the driver sent"


@clause(TX)
def test_transmit_does_not_rely_on_hdr_len(running_vm: Callable[..., Machine], wire: Wire, target: Target,
                                           request) -> None:  # noqa: ANN001
    """HOST_TSO4 negotiated without GUEST_HDRLEN and gso_type NONE: hdr_len is only a hint and a wrong one
    must not stop the frame."""
    m, want = _tx_machine(running_vm, wire, "CSUM", "HOST_TSO4")
    hdr = struct.pack("<BBHHHHH", 0, NET_HDR_GSO_NONE, 0xFFFF, 0, 0, 0, 0)
    known(request, target, NET_TX_HDR_LEN)
    frame, got = _transmit(m, hdr, want)
    expect(got == frame, "a frame with a bogus hdr_len (a hint only) was not transmitted unchanged")


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


@clause(RXBUF, RX)
def test_receive_header_without_offloads(running_vm: Callable[..., Machine], wire: Wire) -> None:
    for hdr, payload, frame in _receive(running_vm(*net_args(wire.ifname)), wire):
        assert hdr["flags"] == 0, "flags must be 0 without GUEST_CSUM"
        assert hdr["gso_type"] == NET_HDR_GSO_NONE, "gso_type must be NONE without GUEST_TSO*/UFO"
        assert payload == frame


@clause(RXBUF, RX)
def test_receive_num_buffers_is_one(running_vm: Callable[..., Machine], wire: Wire, target: Target,
                                    request) -> None:  # noqa: ANN001
    m = running_vm(*net_args(wire.ifname))
    known(request, target, NET_RX_NUM_BUFFERS)
    for hdr, _, _ in _receive(m, wire):
        expect(hdr["num_buffers"] == 1, f"num_buffers {hdr['num_buffers']:#x}, must be 1 without MRG_RXBUF")


def _arrival_probe(rx, wire: Wire) -> Callable[[bytes, bytes], bool]:  # noqa: ANN001
    """A function sending one tagged frame to `dst` and telling whether the guest side received it."""
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

    return arrives


@clause(MAC_FILTER, RX_FILTER)
def test_mac_filtering_table(running_vm: Callable[..., Machine], wire: Wire) -> None:
    """Promiscuous off + the table empty after reset: a frame for another unicast MAC is dropped and one
    for our MAC arrives; after MAC_TABLE_SET with that MAC it arrives too."""
    m = running_vm(*net_args(wire.ifname))
    dev = m.device("net")
    offered = dev.device_features()
    if not (_has(offered, "CTRL_VQ") and _has(offered, "CTRL_RX")):
        pytest.skip("CTRL_VQ/CTRL_RX not offered")
    dev, (rx, tx, ctrl) = m.ready("net", want=1 << NET_F["CTRL_VQ"] | 1 << NET_F["CTRL_RX"], queues=(0, 1, 2))
    assert _ctrl(ctrl, CTRL_RX, CTRL_RX_PROMISC, b"\x00") == CTRL_OK
    arrives = _arrival_probe(rx, wire)

    assert not arrives(OTHER_MAC, b"other-1"), "frame for a MAC outside mac/table accepted (table not empty)"
    assert arrives(_mac(MAC), b"own-1"), "frame for the device's own MAC dropped"
    table = struct.pack("<I", 1) + OTHER_MAC + struct.pack("<I", 0)
    assert _ctrl(ctrl, CTRL_MAC, CTRL_MAC_TABLE_SET, table) == CTRL_OK
    assert arrives(OTHER_MAC, b"other-2"), "MAC_TABLE_SET consumed but the table does not admit the MAC"
    assert _ctrl(ctrl, CTRL_RX, CTRL_RX_PROMISC, b"\x01") == CTRL_OK
    assert arrives(bytes.fromhex("02000000beef"), b"promisc"), "promiscuous mode on, frame still dropped"


@clause(ANNOUNCE)
def test_announce_ack_clears_status_bit(running_vm: Callable[..., Machine], tap: str) -> None:
    m = running_vm(*net_args(tap), qmp=True)
    dev = m.device("net")
    names = ("CTRL_VQ", "GUEST_ANNOUNCE", "STATUS")
    if not all(_has(dev.device_features(), n) for n in names):
        pytest.skip("CTRL_VQ/GUEST_ANNOUNCE/STATUS not offered")
    dev, (_, _, ctrl) = m.ready("net", want=sum(1 << NET_F[n] for n in names), queues=(0, 1, 2), msix=True)
    m.qmp_call("announce-self", initial=1, max=1, rounds=1, step=1)
    deadline = time.monotonic() + 3
    while not dev.config_read(CFG_STATUS, 2) & NET_S_ANNOUNCE:
        assert time.monotonic() < deadline, "VIRTIO_NET_S_ANNOUNCE never set after announce-self"
        time.sleep(0.01)
    assert dev.wait_msix(0), "no configuration change notification for the announce request"
    assert _ctrl(ctrl, CTRL_ANNOUNCE, CTRL_ANNOUNCE_ACK, b"") == CTRL_OK
    assert not dev.config_read(CFG_STATUS, 2) & NET_S_ANNOUNCE, "ANNOUNCE still set after the ACK was used"


@clause(RXBUF, RX)
def test_mergeable_receive_buffers(running_vm: Callable[..., Machine], wire: Wire) -> None:
    """MRG_RXBUF with 64-byte buffers and a 200-byte frame: num_buffers counts the buffers the packet
    (with its 12-byte header) spans, all but the last are filled to the brim, and all are used together."""
    m = running_vm(*net_args(wire.ifname))
    if not _has(m.device("net").device_features(), "MRG_RXBUF"):
        pytest.skip("VIRTIO_NET_F_MRG_RXBUF not offered")
    dev, (rx, tx) = m.ready("net", want=1 << NET_F["MRG_RXBUF"], queues=(0, 1), size=32)
    for _ in range(16):
        rx.add([rx.in_buf(64)])
    rx.kick()
    frame = _frame(_mac(MAC), b"mrg" + bytes(range(150)))
    frame = frame.ljust(200, b"!")
    wire.send(frame)
    first = rx.wait_used()
    head = rx.read_back(first.id)[0][: first.length]
    hdr = parse_net_hdr(head)
    total = NET_HDR_LEN + len(frame)
    expect = -(-total // 64)
    assert hdr["num_buffers"] == expect, f"num_buffers {hdr['num_buffers']}, packet spans {expect} buffers"
    parts, lengths = [head], [first.length]
    for _ in range(hdr["num_buffers"] - 1):
        used = rx.wait_used(1.0)
        lengths.append(used.length)
        parts.append(rx.read_back(used.id)[0][: used.length])
    assert all(n == 64 for n in lengths[:-1]), f"buffers before the last not filled completely: {lengths}"
    assert b"".join(parts)[NET_HDR_LEN:] == frame


CTRL_RX_ALLMULTI, CTRL_RX_ALLUNI, CTRL_RX_NOMULTI, CTRL_RX_NOUNI, CTRL_RX_NOBCAST = 1, 2, 3, 4, 5
BROADCAST, MULTICAST = b"\xff" * 6, bytes.fromhex("01005e000001")


@clause(RX_FILTER)
def test_rx_extra_filters(running_vm: Callable[..., Machine], wire: Wire) -> None:
    """CTRL_RX_EXTRA: ALLUNI, NOMULTI, NOUNI and NOBCAST are accepted (MUST) and filter as described
    (SHOULD), NOMULTI winning over ALLMULTI and NOUNI over ALLUNI."""
    m = running_vm(*net_args(wire.ifname))
    names = ("CTRL_VQ", "CTRL_RX", "CTRL_RX_EXTRA")
    if not all(_has(m.device("net").device_features(), n) for n in names):
        pytest.skip("CTRL_VQ/CTRL_RX/CTRL_RX_EXTRA not offered")
    dev, (rx, tx, ctrl) = m.ready("net", want=sum(1 << NET_F[n] for n in names), queues=(0, 1, 2))
    arrives = _arrival_probe(rx, wire)

    def cmd(command: int, on: bool) -> None:
        assert _ctrl(ctrl, CTRL_RX, command, bytes([on])) == CTRL_OK, f"RX command {command} refused"

    cmd(CTRL_RX_PROMISC, False)
    assert arrives(BROADCAST, b"bcast-1")
    cmd(CTRL_RX_NOBCAST, True)
    assert not arrives(BROADCAST, b"bcast-2"), "broadcast received with NOBCAST"
    cmd(CTRL_RX_NOBCAST, False)
    cmd(CTRL_RX_ALLUNI, True)
    assert arrives(OTHER_MAC, b"alluni"), "unicast to another MAC dropped with ALLUNI"
    cmd(CTRL_RX_NOUNI, True)
    assert not arrives(_mac(MAC), b"nouni"), "unicast received with NOUNI (even with ALLUNI on)"
    cmd(CTRL_RX_NOUNI, False)
    cmd(CTRL_RX_ALLMULTI, True)
    assert arrives(MULTICAST, b"allmulti"), "multicast dropped with ALLMULTI"
    cmd(CTRL_RX_NOMULTI, True)
    assert not arrives(MULTICAST, b"nomulti"), "multicast received with NOMULTI (even with ALLMULTI on)"
    assert arrives(BROADCAST, b"bcast-3"), "NOMULTI must not filter broadcast"


@clause(LAYOUT)
def test_mtu_enforced_both_ways(running_vm: Callable[..., Machine], wire: Wire, target: Target,
                                request) -> None:  # noqa: ANN001
    """MTU 1400 negotiated: a 1414-byte frame (mtu + Ethernet header) is transmitted whole, and a received
    frame longer than that is not passed to the driver."""
    m = running_vm(*net_args(wire.ifname, "host_mtu=1400"))
    if not _has(m.device("net").device_features(), "MTU"):
        pytest.skip("VIRTIO_NET_F_MTU not offered")
    dev, (rx, tx) = m.ready("net", want=1 << NET_F["MTU"], queues=(0, 1))
    frame = _frame(b"\xff" * 6, b"mtu-tx").ljust(1414, b"m")
    tx.transact([bytes(NET_HDR_LEN), frame], [])
    assert wire.recv() == frame, "an mtu-sized frame was not transmitted unchanged"
    arrives = _arrival_probe(rx, wire)
    assert arrives(_mac(MAC), b"fits".ljust(1400 - 46 - 14, b"f"))
    known(request, target, NET_RX_OVER_MTU)
    expect(not arrives(_mac(MAC), b"too-big".ljust(1500 - 46, b"x")), "a frame longer than mtu was received")

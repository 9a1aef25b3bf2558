"""virtio-net with several queue pairs (VIRTIO 1.2 §5.1.6.5.6, §5.1.6.5.7): automatic receive steering and
receive-side scaling, on a multi-queue tap. Frames are IPv4/UDP with varying ports so that the host kernel
spreads them over the tap's queues; each lands in the receive queue of the pair the target picked."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest

from conformance.drivers.virtqueue import Virtqueue
from conformance.virtio.conftest import MAC, Machine, clause, net_args
from conformance.virtio.devices import NET_F, NET_HDR_LEN

CTRL = "Device Types / Network Device / Device Operation / Control Virtqueue"
STEERING = f"{CTRL} / Automatic receive steering in multiqueue mode"
RSS = f"{CTRL} / Receive-side scaling (RSS) / RSS processing"
CTRL_MQ, MQ_VQ_PAIRS_SET, MQ_RSS_CONFIG = 4, 0, 1
RSS_HASH_IPV4, RSS_HASH_UDPV4 = 1 << 0, 1 << 2


def _udp_frame(sport: int) -> bytes:
    """Ethernet + IPv4 + UDP to the device's MAC; only the 5-tuple varies."""
    payload = b"steer-%05d" % sport
    udp = struct.pack("!HHHH", sport, 9999, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return bytes.fromhex(MAC.replace(":", "")) + bytes.fromhex("5254aabbccdd") + b"\x08\x00" + ip + udp


class MqNet:
    """A running machine with `pairs` queue pairs set up and receive buffers posted on every rx queue."""

    def __init__(self, m: Machine, tap: str, want: int, pairs: int) -> None:
        self.m = m
        max_pairs = m.device("net").config_read(8, 2)
        ctrl_index = 2 * max_pairs
        self.dev, vqs = m.ready("net", want=want, queues=(*range(2 * pairs), ctrl_index), size=64)
        self.rx: list[Virtqueue] = vqs[0 : 2 * pairs : 2]
        self.ctrl = vqs[-1]
        for vq in self.rx:
            for _ in range(48):
                vq.add([vq.in_buf(256)])
            vq.kick()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((tap, 0))

    def command(self, cls: int, cmd: int, data: bytes) -> int:
        return self.ctrl.transact([bytes([cls, cmd]) + data], [1]).data[0][0]

    def spray(self, count: int, base: int) -> list[int]:
        """Send `count` flows and return, per rx queue, how many frames it received."""
        for n in range(count):
            self.sock.send(_udp_frame(base + n))
        got = [0] * len(self.rx)
        deadline = time.monotonic() + 3
        while sum(got) < count and time.monotonic() < deadline:
            for i, vq in enumerate(self.rx):
                used = vq.get_used()
                if used is not None:
                    data = vq.read_back(used.id)[0][: used.length]
                    assert data[NET_HDR_LEN + 12 : NET_HDR_LEN + 14] == b"\x08\x00", "not one of our frames"
                    got[i] += 1
                    vq.add([vq.in_buf(256)])
                    vq.kick()
            time.sleep(0.001)
        assert sum(got) == count, f"only {sum(got)} of {count} frames arrived ({got})"
        return got

    def close(self) -> None:
        self.sock.close()


def _mq(running_vm: Callable[..., Machine], tap: str, features: tuple[str, ...], *opts: str) -> MqNet:
    m = running_vm(*net_args(tap, "mq=on", "vectors=6", *opts, queues=2))
    offered = m.device("net").device_features()
    if not all(offered >> NET_F[f] & 1 for f in features):
        pytest.skip(f"{'/'.join(features)} not offered")
    return MqNet(m, tap, sum(1 << NET_F[f] for f in features), pairs=2)


@clause(STEERING)
def test_receive_steering_follows_vq_pairs(running_vm: Callable[..., Machine], mq_tap: str) -> None:
    net = _mq(running_vm, mq_tap, ("CTRL_VQ", "MQ"))
    try:
        assert net.spray(16, 1000)[1] == 0, "after reset, packets must be queued on receiveq1 only"
        assert net.command(CTRL_MQ, MQ_VQ_PAIRS_SET, struct.pack("<H", 2)) == 0
        net.spray(32, 2000)  # with two pairs QEMU 7.2 + the kernel spread these over both rx queues
        assert net.command(CTRL_MQ, MQ_VQ_PAIRS_SET, struct.pack("<H", 1)) == 0
        assert net.spray(16, 3000)[1] == 0, "a packet reached receiveq2 after VQ_PAIRS_SET 1 was used"
    finally:
        net.close()


RSS_KEY = bytes((i * 37 + 11) & 0xFF for i in range(40))


def toeplitz(key: bytes, data: bytes) -> int:
    """The Toeplitz hash of 'Hash calculation for incoming packets' (a 32-bit key window slides per input bit)."""
    k, kbits, result = int.from_bytes(key, "big"), 8 * len(key), 0
    for i in range(8 * len(data)):
        if data[i // 8] >> (7 - i % 8) & 1:
            result ^= (k >> (kbits - 32 - i)) & 0xFFFFFFFF
    return result


def _rss_config(table: list[int], unclassified: int) -> bytes:
    key = RSS_KEY
    return (struct.pack("<IHH", RSS_HASH_IPV4 | RSS_HASH_UDPV4, len(table) - 1, unclassified)
            + b"".join(struct.pack("<H", q) for q in table) + struct.pack("<HB", 2, len(key)) + key)


@clause(RSS)
def test_rss_destination_from_indirection_table(running_vm: Callable[..., Machine], mq_tap: str) -> None:
    """With every indirection entry (and unclassified_queue) naming one queue, every packet must go there,
    whatever its hash; then the same with the other queue."""
    net = _mq(running_vm, mq_tap, ("CTRL_VQ", "MQ", "RSS"), "rss=on")
    try:
        for target_queue in (1, 0, 1):
            assert net.command(CTRL_MQ, MQ_RSS_CONFIG, _rss_config([target_queue] * 4, target_queue)) == 0
            got = net.spray(16, 4000 + 100 * target_queue)
            assert got[target_queue] == 16, f"RSS table names receiveq{target_queue + 1}, frames went {got}"
    finally:
        net.close()


@clause(RSS)
def test_rss_hash_selects_table_entry(running_vm: Callable[..., Machine], mq_tap: str) -> None:
    """A 128-entry table mixing both queues: each UDP flow must land in table[toeplitz(4-tuple) & 127]."""
    net = _mq(running_vm, mq_tap, ("CTRL_VQ", "MQ", "RSS"), "rss=on")
    table = [(i >> 2) & 1 for i in range(128)]
    try:
        assert net.command(CTRL_MQ, MQ_RSS_CONFIG, _rss_config(table, 0)) == 0
        for sport in range(5000, 5012):
            expect = table[toeplitz(RSS_KEY, bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", sport, 9999)) & 127]
            got = net.spray(1, sport)
            assert got[expect] == 1, f"source port {sport}: expected receiveq{expect + 1}, got {got}"
    finally:
        net.close()

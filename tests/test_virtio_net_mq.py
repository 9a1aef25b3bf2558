"""virtio-net with several queue pairs (VIRTIO 1.2 5.1.6.5.5) on a real multi-queue tap.

The test is the driver (rings written byte by byte in guest memory) on one side and a host AF_PACKET
socket on the tap interface on the other; IPv4/UDP flows with different source ports let the kernel
spread frames over the tap's attached queues. Needs root and /dev/net/tun.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest
from test_virtio_helpers import MODERN, SplitDriver, bring_up, make_mem

from refvm.virtio.devices import net as N
from refvm.virtio.devices.net import VirtioNet
from refvm.virtio.devices.tap import Tap, TapError
from tests.conftest import require

GUEST_MAC = bytes.fromhex("525400123456")
HOST_MAC = bytes.fromhex("02aabbccddee")
BASE = MODERN | (1 << N.F_MAC) | (1 << N.F_CTRL_VQ) | (1 << N.F_MRG_RXBUF)
MQ_FEATS = BASE | (1 << N.F_MQ)
RING = 64
BUF = 256

_names = itertools.count()


@pytest.fixture
def mq_tap() -> Iterator[Tap]:
    require(os.geteuid() == 0 and os.path.exists("/dev/net/tun"), "needs root and /dev/net/tun for a tap device")
    t = Tap(f"rvq{os.getpid() % 100000}x{next(_names)}", queues=2)
    subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{t.ifname}.disable_ipv6=1"], check=False,
                   capture_output=True)
    subprocess.run(["ip", "link", "set", "dev", t.ifname, "up"], check=True)
    yield t
    t.close()


@pytest.fixture
def host(mq_tap: Tap) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((mq_tap.ifname, 0x0800))
    s.settimeout(2)
    yield s
    s.close()


def udp_frame(sport: int) -> bytes:
    payload = b"mq-%05d" % sport
    udp = struct.pack("!HHHH", sport, 9999, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return GUEST_MAC + HOST_MAC + b"\x08\x00" + ip + udp


class Rig:
    """The device with every queue set up; receive queues get RING buffers of BUF bytes each."""

    def __init__(self, tap: Tap, features: int = MQ_FEATS, **props: str) -> None:
        self.mem = make_mem()
        self.dev = VirtioNet.create(self.mem, {"netdev": "n0", "mq": "on", **props}, netdevs={"n0": tap})
        self.q = [SplitDriver(self.mem, RING, base=0x10000 + 0x1000 * i) for i in range(5)]
        self.heads = [0] * 5
        self.seen = [0] * 5

        def configure(dev: VirtioNet) -> None:
            for i, d in enumerate(self.q[: len(dev.queues)]):
                if dev.queues[i].max_size:
                    d.configure(dev, i)

        assert bring_up(self.dev, features, configure=configure)

    def buf(self, qi: int, k: int) -> int:
        return 0x40000 + 0x10000 * qi + BUF * k

    def post(self, qi: int, elems: list[tuple[int, int, bool]]) -> None:
        h = self.heads[qi]
        self.heads[qi] = (h + len(elems)) % RING
        self.q[qi].chain(h, elems)
        self.q[qi].publish(h)
        self.dev.queue_notify(qi)

    def post_rx(self, qi: int) -> None:
        for k in range(RING):
            self.q[qi].chain(k, [(self.buf(qi, k), BUF, True)])
            self.q[qi].publish(k, bump=False)
        self.q[qi].set_avail_idx(self.q[qi].idx)
        self.dev.queue_notify(qi)

    def take(self, qi: int) -> list[bytes]:
        """Frames newly used on receive queue ``qi`` (virtio-net header stripped)."""
        out = []
        while self.seen[qi] < self.q[qi].used_idx():
            head, length = self.q[qi].used_elem(self.seen[qi])
            data = self.mem.read(self.buf(qi, head), length)
            assert int.from_bytes(data[10:12], "little") == 1  # num_buffers
            out.append(bytes(data[12:]))
            self.seen[qi] += 1
        return out

    def command(self, ctrl: int, cls: int, cmd: int, data: bytes) -> int:
        at = 0x30000
        self.mem.write(at, bytes([cls, cmd]) + data)
        self.mem.write(at + 0x100, b"\xee")
        n = self.q[ctrl].used_idx()
        self.post(ctrl, [(at, 2 + len(data), False), (at + 0x100, 1, True)])
        assert self.q[ctrl].used_idx() == n + 1
        return self.mem.read(at + 0x100, 1)[0]

    def spray(self, host: socket.socket, sports: range, rx: tuple[int, ...] = (0, 2)) -> dict[int, list[bytes]]:
        for sport in sports:
            host.send(udp_frame(sport))
        got: dict[int, list[bytes]] = {qi: [] for qi in rx}
        deadline = time.monotonic() + 3
        while sum(map(len, got.values())) < len(sports) and time.monotonic() < deadline:
            for qi in rx:
                got[qi] += self.take(qi)
            time.sleep(0.005)
        assert sorted(itertools.chain(*got.values())) == sorted(udp_frame(s) for s in sports)
        return got


def test_queues_features_and_config(mq_tap: Tap) -> None:
    assert mq_tap.queues == 2 and len(set(mq_tap.fds)) == 2
    r = Rig(mq_tap)
    assert r.dev.queue_max_sizes == (256, 256, 256, 256, 64) and r.dev.ctrl_index == 4
    assert r.dev.device_features >> N.F_MQ & 1 and r.dev.negotiated(N.F_MQ)
    assert len(r.dev.config) == 10 and r.dev.config_read(8, 2) == 2  # max_virtqueue_pairs
    assert mq_tap.enabled == [True, False]  # 5.1.6.5.5: only the first pair after reset
    r.dev.close()
    off = VirtioNet(make_mem(), mq_tap, start_reader=False)  # mq=off: QEMU still makes every queue
    assert not off.device_features >> N.F_MQ & 1 and len(off.config) == 8 and len(off.queue_max_sizes) == 5
    no_ctrl = VirtioNet(make_mem(), mq_tap, mq=True, ctrl_vq=False, start_reader=False)
    assert not no_ctrl.device_features >> N.F_MQ & 1 and len(no_ctrl.queue_max_sizes) == 4
    off.close()
    no_ctrl.close()


def test_single_queue_open_of_multi_queue_tap_fails(mq_tap: Tap) -> None:
    with pytest.raises(TapError):
        Tap(mq_tap.ifname)  # as QEMU: queues=1 on a multi_queue tap is refused by the kernel
    with pytest.raises(TapError):
        Tap("x", queues=0)


def test_steering_follows_vq_pairs_set(mq_tap: Tap, host: socket.socket) -> None:
    r = Rig(mq_tap)
    r.post_rx(0)
    r.post_rx(2)
    assert not r.spray(host, range(1000, 1016))[2]  # before VQ_PAIRS_SET: receiveq1 only
    assert r.command(4, N.CLASS_MQ, N.MQ_VQ_PAIRS_SET, struct.pack("<H", 2)) == N.OK
    assert r.dev.curr_pairs == 2 and mq_tap.enabled == [True, True]
    got = r.spray(host, range(2000, 2040))
    assert got[0] and got[2]  # 40 flows over two attached tap queues: both pairs receive
    assert r.command(4, N.CLASS_MQ, N.MQ_VQ_PAIRS_SET, struct.pack("<H", 1)) == N.OK
    assert mq_tap.enabled == [True, False]
    assert not r.spray(host, range(3000, 3016))[2]
    r.dev.reset()
    assert r.dev.curr_pairs == 1 and mq_tap.enabled == [True, False]
    r.dev.close()


def test_transmit_on_second_pair_only_once_enabled(mq_tap: Tap, host: socket.socket) -> None:
    r = Rig(mq_tap)
    f = udp_frame(77).replace(GUEST_MAC + HOST_MAC, HOST_MAC + GUEST_MAC, 1)
    r.mem.write(0x38000, bytes(12) + f)
    r.post(3, [(0x38000, 12, False), (0x3800C, len(f), False)])
    assert r.q[3].used_idx() == 0  # pair 1 is not in use yet: the buffer waits
    assert r.command(4, N.CLASS_MQ, N.MQ_VQ_PAIRS_SET, struct.pack("<H", 2)) == N.OK
    assert r.q[3].used_idx() == 1 and r.q[3].used_elem(0) == (0, 0)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if host.recv(2048) == f:
            break
    else:
        pytest.fail("frame sent on transmitq2 never reached the tap")
    assert r.dev.tx_packets == 1
    r.dev.close()


@pytest.mark.parametrize("cmd, data", [(0, struct.pack("<H", 0)), (0, struct.pack("<H", 3)), (0, b"\x01"),
                                       (1, struct.pack("<H", 1)), (5, struct.pack("<H", 1))])
def test_vq_pairs_set_errors(mq_tap: Tap, cmd: int, data: bytes) -> None:
    r = Rig(mq_tap)
    assert r.command(4, N.CLASS_MQ, cmd, data) == N.ERR and r.dev.curr_pairs == 1
    r.dev.close()


def test_without_mq_negotiated_control_queue_is_queue_2(mq_tap: Tap) -> None:
    r = Rig(mq_tap, features=BASE)
    assert r.dev.ctrl_index == 2 and r.dev.queues[2].max_size == 64
    assert [q.max_size for q in r.dev.queues[3:]] == [0, 0]
    assert r.command(2, N.CLASS_MQ, N.MQ_VQ_PAIRS_SET, struct.pack("<H", 2)) == N.ERR
    assert r.command(2, N.CLASS_RX, 0, b"\x00") == N.OK and not r.dev.promisc
    r.dev.reset()
    assert r.dev.ctrl_index == 4 and r.dev.queues[4].max_size == 64
    r.dev.close()

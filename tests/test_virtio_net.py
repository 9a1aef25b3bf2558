"""virtio-net (VIRTIO 1.2 section 5.1) on a real tap: frames both ways, link status, MAC, control queue.

The test is the driver on one side and a host AF_PACKET socket on the tap interface on the other.
Needs root and /dev/net/tun: skips locally without them, fails in CI (tests.conftest.require).
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

from refvm.virtio import status as S
from refvm.virtio.devices import net as N
from refvm.virtio.devices.net import VirtioNet
from refvm.virtio.devices.tap import Tap
from tests.conftest import require

ETH_P = 0x88B5  # local experimental ethertype: no other traffic uses it
FEATS = MODERN | (1 << N.F_MAC) | (1 << N.F_STATUS) | (1 << N.F_MRG_RXBUF) | (1 << N.F_CTRL_VQ) | (1 << N.F_CTRL_RX)
HOST_MAC = bytes.fromhex("02aabbccddee")
GUEST_MAC = bytes.fromhex("525400123456")


_names = itertools.count()


def _tun_usable() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


@pytest.fixture
def tap() -> Iterator[Tap]:
    require(_tun_usable(), "needs root and /dev/net/tun for a tap device")
    t = Tap(f"rvt{os.getpid() % 100000}x{next(_names)}")
    subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{t.ifname}.disable_ipv6=1"], check=False,
                   capture_output=True)
    subprocess.run(["ip", "link", "set", "dev", t.ifname, "up"], check=True)
    yield t
    t.close()


@pytest.fixture
def host(tap: Tap) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P))
    s.bind((tap.ifname, ETH_P))
    s.settimeout(2)
    yield s
    s.close()


class Rig:
    def __init__(self, tap: Tap, features: int = FEATS, **props: str) -> None:
        self.mem = make_mem()
        self.dev = VirtioNet.create(self.mem, {"netdev": "n0", **props}, netdevs={"n0": tap})
        self.q = [SplitDriver(self.mem, 8, base=0x10000 + 0x1000 * i) for i in range(3)]
        self.cfg_irqs = 0

        def cfg() -> None:
            self.cfg_irqs += 1

        self.dev.on_config_change = cfg

        def configure(dev: VirtioNet) -> None:
            for i, d in enumerate(self.q[: len(dev.queues)]):
                d.configure(dev, i)

        assert bring_up(self.dev, features, configure=configure)
        self.heads = [0, 0, 0]

    def post(self, qi: int, elems: list[tuple[int, int, bool]]) -> None:
        h = self.heads[qi]
        self.heads[qi] = (h + len(elems)) % 8
        self.q[qi].chain(h, elems)
        self.q[qi].publish(h)
        self.dev.queue_notify(qi)

    def wait_used(self, qi: int, n: int, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while self.q[qi].used_idx() < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.q[qi].used_idx() >= n


def frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    return dst + src + struct.pack(">H", ETH_P) + payload


def test_qemu_shape_and_config(tap: Tap) -> None:
    r = Rig(tap)
    assert r.dev.device_id == 1 and r.dev.queue_max_sizes == (256, 256, 64)
    assert r.dev.device_feature_word(0) == 0x30BF8024  # QEMU 7.2 without backend offloads
    assert bytes(r.dev.config) == bytes.fromhex("5254001234560100")
    r.dev.close()
    r2 = Rig(tap, features=MODERN | (1 << N.F_MAC), mac="02:00:00:00:00:01", ctrl_vq="off")
    assert r2.dev.config_read(0, 6) == 0x010000000002 and len(r2.dev.queue_max_sizes) == 2
    r2.dev.close()


def test_guest_to_host_frame(tap: Tap, host: socket.socket) -> None:
    r = Rig(tap)
    f = frame(b"\xff" * 6, GUEST_MAC, b"hello from the guest".ljust(46, b"."))
    r.mem.write(0x3000, bytes(12) + f)
    r.post(1, [(0x3000, 12, False), (0x300C, len(f), False)])
    assert r.q[1].used_elem(0) == (0, 0)
    got = host.recv(2048)
    assert got == f and r.dev.tx_packets == 1
    r.dev.close()


def test_host_to_guest_frame_buffered_then_delivered(tap: Tap, host: socket.socket) -> None:
    r = Rig(tap)
    f = frame(GUEST_MAC, HOST_MAC, b"hello from the host".ljust(46, b"!"))
    host.send(f)
    deadline = time.monotonic() + 2
    while not r.dev.rx_backlog and time.monotonic() < deadline:
        time.sleep(0.005)
    assert list(r.dev.rx_backlog) == [f]  # no buffer posted yet: held, not lost
    r.mem.fill(0x4000, 2048, 0xEE)
    r.post(0, [(0x4000, 1526, True)])
    r.wait_used(0, 1)
    head, length = r.q[0].used_elem(0)
    assert (head, length) == (0, 12 + len(f))
    hdr = r.mem.read(0x4000, 12)
    assert hdr == bytes(10) + b"\x01\x00"  # num_buffers = 1
    assert r.mem.read(0x400C, len(f)) == f
    r.dev.close()


def test_mergeable_buffers_span_a_large_frame(tap: Tap, host: socket.socket) -> None:
    r = Rig(tap)
    f = frame(GUEST_MAC, HOST_MAC, bytes(range(256)) * 4)
    r.post(0, [(0x4000, 512, True)])
    r.post(0, [(0x5000, 512, True)])
    r.post(0, [(0x6000, 512, True)])
    host.send(f)
    r.wait_used(0, 3)
    assert [r.q[0].used_elem(n)[1] for n in range(3)] == [512, 512, 12 + len(f) - 1024]
    assert r.mem.read(0x400A, 2) == b"\x03\x00"
    got = r.mem.read(0x400C, 500) + r.mem.read(0x5000, 512) + r.mem.read(0x6000, len(f) - 1012)
    assert got == f
    r.dev.close()


def test_link_status_change(tap: Tap, host: socket.socket) -> None:
    r = Rig(tap)
    r.dev.set_link(False)
    assert r.dev.config_read(6, 2) == 0 and r.cfg_irqs == 1
    f = frame(b"\xff" * 6, GUEST_MAC, bytes(46))
    r.mem.write(0x3000, bytes(12) + f)
    r.post(1, [(0x3000, 12 + len(f), False)])
    host.settimeout(0.2)
    with pytest.raises(TimeoutError):
        host.recv(2048)  # link down: dropped
    r.dev.set_link(True)
    assert r.dev.config_read(6, 2) == 1 and r.cfg_irqs == 2
    r.dev.close()


def test_control_queue_rx_filter_and_mac(tap: Tap) -> None:
    r = Rig(tap, features=FEATS | (1 << N.F_CTRL_MAC_ADDR))

    def command(cls: int, cmd: int, data: bytes) -> int:
        r.mem.write(0x7000, bytes([cls, cmd]) + data)
        r.mem.write_u8(0x7800, 0xEE)
        r.post(2, [(0x7000, 2 + len(data), False), (0x7800, 1, True)])
        assert r.q[2].used_elem(r.q[2].used_idx() - 1)[1] == 1
        return r.mem.read_u8(0x7800)

    assert command(N.CLASS_RX, 0, b"\x00") == N.OK  # promiscuous off
    assert command(N.CLASS_MAC, 1, HOST_MAC) == N.OK
    assert r.dev.config_read(0, 6) == int.from_bytes(HOST_MAC, "little")
    assert command(N.CLASS_MQ, 0, b"\x01\x00") == N.ERR
    assert command(N.CLASS_RX, 0, b"\x00\x00") == N.ERR
    r.dev.receive(frame(GUEST_MAC, HOST_MAC, bytes(46)))  # not our MAC any more: filtered
    r.dev.receive(frame(HOST_MAC, GUEST_MAC, bytes(46)))
    assert r.dev.rx_filtered == 1 and len(r.dev.rx_backlog) == 1
    r.dev.close()


def test_tx_without_header_needs_reset(tap: Tap) -> None:
    r = Rig(tap)
    r.post(1, [(0x3000, 8, False)])
    assert r.dev.status & S.DEVICE_NEEDS_RESET
    r.dev.close()


def test_backlog_is_bounded(tap: Tap) -> None:
    r = Rig(tap)
    for k in range(N.RX_BACKLOG + 5):
        r.dev.receive(frame(GUEST_MAC, HOST_MAC, k.to_bytes(4, "big") + bytes(42)))
    assert len(r.dev.rx_backlog) == N.RX_BACKLOG and r.dev.rx_dropped == 5
    assert r.dev.rx_backlog[0][14:18] == (5).to_bytes(4, "big")  # the oldest went first
    r.dev.close()


def test_create_errors(tap: Tap) -> None:
    mem = make_mem()
    with pytest.raises(ValueError, match=r"Property 'virtio-net-pci.netdev' can't find value 'x'"):
        VirtioNet.create(mem, {"netdev": "x"}, netdevs={})
    with pytest.raises(ValueError, match=r"Property 'virtio-net-pci.mac' doesn't take value 'zz'"):
        VirtioNet.create(mem, {"netdev": "n0", "mac": "zz"}, netdevs={"n0": tap})

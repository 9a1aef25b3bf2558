"""virtio-net optional features (VIRTIO 1.2 section 5.1.3, 5.1.4): MTU, speed/duplex, guest announce.

Same driver-side rig as tests/test_virtio_net.py (real GuestMemory, rings byte by byte, a real tap and
an AF_PACKET socket on its host side).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import test_virtio_net as base
from test_qmp_server import RawClient
from test_virtio_helpers import make_mem
from virtio_pci_rig import tree_of

from refvm.monitor.net_qmp import NetCommands
from refvm.monitor.qmp import QmpServer
from refvm.virtio.devices import net as N
from refvm.virtio.devices.net import VirtioNet
from refvm.virtio.devices.tap import Tap

tap = base.tap
host = base.host
Rig, frame, FEATS = base.Rig, base.frame, base.FEATS
GUEST_MAC, HOST_MAC = base.GUEST_MAC, base.HOST_MAC


# ---- MTU (5.1.4.1) ---------------------------------------------------------------------------------------


def test_mtu_offered_and_in_config(tap: Tap) -> None:
    r = Rig(tap, features=FEATS | 1 << N.F_MTU, host_mtu="1400")
    assert r.dev.device_features >> N.F_MTU & 1
    assert len(r.dev.config) == 12  # mac, status, max_virtqueue_pairs, mtu
    assert r.dev.config_read(N.CFG_MTU, 2) == 1400 and r.dev.config_read(8, 2) == 0
    assert r.dev.negotiated(N.F_MTU)
    r.dev.close()
    plain = VirtioNet.create(make_mem(), {"netdev": "n0"}, netdevs={"n0": tap})
    assert not plain.device_features >> N.F_MTU & 1 and len(plain.config) == 8
    plain.close()


def test_mtu_receive_limit_and_full_size_transmit(tap: Tap, host: socket.socket) -> None:
    r = Rig(tap, features=FEATS | 1 << N.F_MTU, host_mtu="1400")
    big = frame(b"\xff" * 6, GUEST_MAC, bytes(1400))  # 1414 bytes: mtu + Ethernet header
    assert len(big) == 1414
    r.mem.write(0x3000, bytes(12) + big)
    r.post(1, [(0x3000, 12, False), (0x300C, len(big), False)])
    assert host.recv(4096) == big  # 5.1.4.1: forwarded whole
    r.dev.receive(frame(GUEST_MAC, HOST_MAC, bytes(1401)))  # 1415 bytes: too long, not passed on
    assert r.dev.rx_oversize == 1 and not r.dev.rx_backlog
    fits = frame(GUEST_MAC, HOST_MAC, bytes(1400))
    r.post(0, [(0x8000, 2048, True)])
    r.dev.receive(fits)
    r.wait_used(0, 1)
    assert r.q[0].used_elem(0)[1] == 12 + 1414 and r.mem.read(0x800C, 1414) == fits
    tagged = GUEST_MAC + HOST_MAC + b"\x81\x00\x00\x05" + b"\x88\xb5" + bytes(1400)  # 1418 with the VLAN tag
    r.post(0, [(0x9000, 2048, True)])
    r.dev.receive(tagged)
    r.wait_used(0, 2)
    assert r.dev.rx_oversize == 1
    r.dev.close()


def test_mtu_not_negotiated_no_limit(tap: Tap) -> None:
    r = Rig(tap, features=FEATS, host_mtu="1400")
    r.post(0, [(0x8000, 2048, True)])
    r.dev.receive(frame(GUEST_MAC, HOST_MAC, bytes(1500)))
    r.wait_used(0, 1)
    assert r.dev.rx_oversize == 0
    r.dev.close()


@pytest.mark.parametrize(("value", "error"), [
    ("67", "'host_mtu' must be between 68 and 65535"),
    ("65536", "Parameter 'host_mtu' expects uint16_t"),
    ("-1", "Parameter 'host_mtu' expects uint16_t"),
    ("abc", "Parameter 'host_mtu' expects integer"),
])
def test_mtu_property_errors(tap: Tap, value: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        VirtioNet.create(make_mem(), {"netdev": "n0", "host_mtu": value}, netdevs={"n0": tap})


def test_mtu_bounds_accepted(tap: Tap) -> None:
    for value in (68, 65535):
        dev = VirtioNet.create(make_mem(), {"netdev": "n0", "host_mtu": str(value)}, netdevs={"n0": tap})
        assert dev.config_read(N.CFG_MTU, 2) == value
        dev.close()


# ---- speed and duplex (5.1.4) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("props", "speed", "duplex"), [
    ({"speed": "1000", "duplex": "full"}, 1000, 0x01),  # 5.1.4 (and its erratum): 0x01 is full duplex
    ({"speed": "10", "duplex": "half"}, 10, 0x00),
    ({"speed": "100"}, 100, 0xFF),
    ({"duplex": "full"}, 0xFFFFFFFF, 0x01),
    ({"speed": "-1", "duplex": "half"}, 0xFFFFFFFF, 0x00),
])
def test_speed_duplex_config(tap: Tap, props: dict[str, str], speed: int, duplex: int) -> None:
    r = Rig(tap, features=FEATS | 1 << N.F_SPEED_DUPLEX, **props)
    assert r.dev.negotiated(N.F_SPEED_DUPLEX) and len(r.dev.config) == 17
    assert r.dev.config_read(N.CFG_SPEED, 4) == speed and r.dev.config_read(N.CFG_DUPLEX, 1) == duplex
    assert r.dev.device_feature_word(1) >> 31 & 1
    r.dev.close()


def test_speed_duplex_not_offered_by_default(tap: Tap) -> None:
    dev = VirtioNet.create(make_mem(), {"netdev": "n0", "speed": "-1"}, netdevs={"n0": tap})
    assert not dev.device_features >> N.F_SPEED_DUPLEX & 1 and len(dev.config) == 8
    dev.close()
    both = VirtioNet.create(make_mem(), {"netdev": "n0", "host_mtu": "1500", "speed": "0"}, netdevs={"n0": tap})
    assert len(both.config) == 17 and both.config_read(N.CFG_MTU, 2) == 1500
    assert both.config_read(N.CFG_SPEED, 4) == 0 and both.config_read(N.CFG_DUPLEX, 1) == 0xFF
    both.close()


@pytest.mark.parametrize(("props", "error"), [
    ({"speed": "-2"}, "'speed' must be between 0 and INT_MAX"),
    ({"speed": "2147483648"}, "Parameter 'speed' expects int32_t"),
    ({"speed": "fast"}, "Parameter 'speed' expects integer"),
    ({"duplex": "FULL"}, "'duplex' must be 'half' or 'full'"),
    ({"duplex": ""}, "'duplex' must be 'half' or 'full'"),
])
def test_speed_duplex_property_errors(tap: Tap, props: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        VirtioNet.create(make_mem(), {"netdev": "n0", **props}, netdevs={"n0": tap})


# ---- guest announce (5.1.6.5.4) and QMP announce-self -------------------------------------------------------

ANNOUNCE_FEATS = FEATS | 1 << N.F_GUEST_ANNOUNCE


@pytest.fixture
def rarp(tap: Tap) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(N.ETH_P_RARP))
    s.bind((tap.ifname, N.ETH_P_RARP))
    s.settimeout(2)
    yield s
    s.close()


def _ctrl(r: Rig, cls: int, cmd: int, data: bytes = b"") -> int:
    r.mem.write(0x7000, bytes([cls, cmd]) + data)
    r.mem.write_u8(0x7800, 0xEE)
    r.post(2, [(0x7000, 2 + len(data), False), (0x7800, 1, True)])
    assert r.q[2].used_elem(r.q[2].used_idx() - 1)[1] == 1
    return r.mem.read_u8(0x7800)


def test_announce_sets_status_and_ack_clears_it(tap: Tap, rarp: socket.socket) -> None:
    r = Rig(tap, features=ANNOUNCE_FEATS)
    assert r.dev.device_features >> N.F_GUEST_ANNOUNCE & 1
    assert _ctrl(r, N.CLASS_ANNOUNCE, N.ANNOUNCE_ACK) == N.ERR  # nothing to acknowledge (QEMU)
    r.dev.announce()
    assert r.dev.config_read(6, 2) == N.S_LINK_UP | N.S_ANNOUNCE and r.cfg_irqs == 1
    got = rarp.recv(2048)
    assert got[:6] == b"\xff" * 6 and got[6:12] == GUEST_MAC and got[12:14] == b"\x80\x35"
    assert got[14:22] == bytes.fromhex("0001080006040003") and got[22:28] == GUEST_MAC == got[32:38]
    assert len(got) == 60
    assert _ctrl(r, N.CLASS_ANNOUNCE, 1) == N.ERR  # only ACK exists
    assert _ctrl(r, N.CLASS_ANNOUNCE, N.ANNOUNCE_ACK) == N.OK
    assert r.dev.config_read(6, 2) == N.S_LINK_UP
    r.dev.announce()
    r.dev.reset()
    assert r.dev.config_read(6, 2) == N.S_LINK_UP  # reset clears ANNOUNCE
    r.dev.close()


def test_announce_without_guest_announce_only_sends_rarp(tap: Tap, rarp: socket.socket) -> None:
    r = Rig(tap, features=FEATS)
    r.dev.announce()
    assert rarp.recv(2048)[6:12] == GUEST_MAC
    assert r.dev.config_read(6, 2) == N.S_LINK_UP and r.cfg_irqs == 0
    r.dev.set_link(False)
    r.dev.announce()  # link down: nothing on the wire
    rarp.settimeout(0.2)
    with pytest.raises(TimeoutError):
        rarp.recv(2048)
    r.dev.close()


@pytest.fixture
def qmp_net(tmp_path: Path, tap: Tap) -> Iterator[tuple[Rig, NetCommands, RawClient]]:
    r = Rig(tap, features=ANNOUNCE_FEATS, id="nic0")
    server = QmpServer(str(tmp_path / "qmp.sock"), server=True)
    tree = tree_of(("virtio-rng-pci", {}, object(), None), ("virtio-net-pci", {"id": "nic0"}, r.dev, None))
    commands = NetCommands(server, SimpleNamespace(devices=tree))
    server.start()
    client = RawClient(server.path)
    client.negotiate()
    yield r, commands, client
    client.close()
    commands.close()
    server.close()
    r.dev.close()


def _wait(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_qmp_announce_self(qmp_net: tuple[Rig, NetCommands, RawClient]) -> None:
    r, commands, c = qmp_net
    assert commands.nics() == [("nic0", r.dev)]
    args = {"initial": 1, "max": 1, "rounds": 1, "step": 1}
    assert c.cmd("announce-self", args) == {"return": {}}
    assert r.dev.config_read(6, 2) & N.S_ANNOUNCE and r.cfg_irqs == 1 and r.dev.announces == 1
    assert _ctrl(r, N.CLASS_ANNOUNCE, N.ANNOUNCE_ACK) == N.OK
    # three rounds: one now, then 20 ms and 40 ms later (initial + k * step, clamped to max)
    t0 = time.monotonic()
    assert c.cmd("announce-self", {"initial": 20, "max": 40, "rounds": 3, "step": 50}) == {"return": {}}
    assert r.dev.announces == 2
    assert _wait(lambda: r.dev.announces == 4)
    assert time.monotonic() - t0 >= 0.06
    time.sleep(0.1)
    assert r.dev.announces == 4
    assert c.cmd("announce-self", {**args, "interfaces": ["other"], "id": "t2"}) == {"return": {}}
    assert c.cmd("announce-self", {**args, "interfaces": ["nic0"], "id": "t2"}) == {"return": {}}
    assert r.dev.announces == 5
    assert c.cmd("announce-self", {**args, "rounds": 0}) == {"return": {}}
    assert r.dev.announces == 5


def test_qmp_announce_self_replaces_named_timer(qmp_net: tuple[Rig, NetCommands, RawClient]) -> None:
    r, commands, c = qmp_net
    assert c.cmd("announce-self", {"initial": 1000, "max": 1000, "rounds": 5, "step": 0, "id": "a"}) == {
        "return": {}}
    assert c.cmd("announce-self", {"initial": 1000, "max": 1000, "rounds": 1, "step": 0, "id": "a"}) == {
        "return": {}}
    assert r.dev.announces == 2 and list(commands.timers) == ["a"]
    time.sleep(0.05)
    assert r.dev.announces == 2


@pytest.mark.parametrize(("args", "desc"), [
    ({"max": 1, "rounds": 1, "step": 1}, "Parameter 'initial' is missing"),
    ({"initial": "1", "max": 1, "rounds": 1, "step": 1}, "Invalid parameter type for 'initial', expected: integer"),
    ({"initial": 1, "max": 1, "rounds": 1, "step": 1, "x": 1}, "Parameter 'x' is unexpected"),
])
def test_qmp_announce_self_errors(qmp_net: tuple[Rig, NetCommands, RawClient], args: dict[str, object],
                                  desc: str) -> None:
    _, _, c = qmp_net
    assert c.cmd("announce-self", args) == {"error": {"class": "GenericError", "desc": desc}}


def test_qmp_set_link_by_nic_name_and_errors(qmp_net: tuple[Rig, NetCommands, RawClient]) -> None:
    """QMP set_link flips LINK_UP in the status field and raises a configuration change (5.1.4)."""
    r, _commands, c = qmp_net
    assert r.dev.config_read(6, 2) & N.S_LINK_UP
    irqs = r.cfg_irqs
    assert c.cmd("set_link", {"name": "nic0", "up": False}) == {"return": {}}
    assert not r.dev.config_read(6, 2) & N.S_LINK_UP and r.cfg_irqs == irqs + 1
    assert c.cmd("set_link", {"name": "nic0", "up": True}) == {"return": {}}
    assert r.dev.config_read(6, 2) & N.S_LINK_UP
    reply = c.cmd("set_link", {"name": "nope", "up": True})
    assert reply["error"] == {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}

"""virtio-console (VIRTIO 1.2 section 5.3): echo both ways, buffering, emergency write, multiport."""

from __future__ import annotations

import struct

import pytest
from test_virtio_helpers import MODERN, SplitDriver, bring_up, make_mem

from refvm.devices.chardev import Chardev
from refvm.virtio import features as F
from refvm.virtio.devices import console as C
from refvm.virtio.devices.console import VirtConsole, VirtioSerial

MULTI = MODERN | (1 << C.VIRTIO_CONSOLE_F_MULTIPORT)


class MemChardev(Chardev):
    def __init__(self) -> None:
        super().__init__("mem")
        self.out = bytearray()

    def _write(self, data: bytes) -> None:
        self.out += data

    def type_in(self, data: bytes) -> None:
        self._deliver(data)


class Rig:
    """Driver of a virtio-serial: one SplitDriver per queue used, at separate addresses."""

    def __init__(self, features: int = MODERN, name: str | None = None) -> None:
        self.mem = make_mem()
        self.chr = MemChardev()
        self.dev = VirtioSerial.create(self.mem, {})
        props = {"chardev": "c0"} | ({"name": name} if name else {})
        self.dev.add_port(VirtConsole.create(props, chardevs={"c0": self.chr}))
        nq = 4 if features & (1 << C.VIRTIO_CONSOLE_F_MULTIPORT) else 2
        self.q = [SplitDriver(self.mem, 8, base=0x10000 + 0x1000 * i) for i in range(nq)]
        self.irqs: list[int] = []
        self.dev.on_used_buffer = self.irqs.append

        def configure(dev: VirtioSerial) -> None:
            for i, d in enumerate(self.q):
                d.configure(dev, i)

        assert bring_up(self.dev, features, configure=configure)
        self.heads = [0] * nq

    def post(self, qi: int, addr: int, length: int, writable: bool, data: bytes = b"") -> None:
        if data:
            self.mem.write(addr, data)
        h = self.heads[qi]
        self.heads[qi] = (h + 1) % 8
        self.q[qi].chain(h, [(addr, length, writable)])
        self.q[qi].publish(h)
        self.dev.queue_notify(qi)

    def used(self, qi: int) -> list[tuple[int, int]]:
        d = self.q[qi]
        return [d.used_elem(n) for n in range(d.used_idx())]


def test_qemu_shape() -> None:
    r = Rig()
    assert r.dev.device_id == 3 and len(r.dev.queue_max_sizes) == 64
    assert r.dev.queue_max_sizes[:5] == (128, 128, 32, 32, 128)
    assert r.dev.device_feature_word(0) == 0x30000006  # MULTIPORT | EMERG_WRITE (+ ring bits), as QEMU 7.2
    assert bytes(r.dev.config) == bytes.fromhex("000000001f00000000000000")


def test_guest_to_host_without_multiport() -> None:
    r = Rig()
    r.post(1, 0x3000, 6, False, b"hello\n")
    assert r.chr.out == b"hello\n"
    assert r.used(1) == [(0, 0)]  # nothing written into a transmit buffer


def test_host_to_guest_buffered_until_buffers_are_posted() -> None:
    r = Rig()
    r.chr.type_in(b"early input ")
    r.chr.type_in(b"survives")
    assert r.used(0) == []
    r.post(0, 0x4000, 8, True)
    assert r.used(0) == [(0, 8)] and r.mem.read(0x4000, 8) == b"early in"
    r.post(0, 0x4100, 64, True)
    assert r.used(0)[1] == (1, 12) and r.mem.read(0x4100, 12) == b"put survives"
    r.chr.type_in(b"x")  # no buffer now
    r.post(0, 0x4200, 64, True)
    assert r.used(0)[2] == (2, 1) and r.mem.read(0x4200, 1) == b"x"
    assert r.irqs.count(0) == 3


def test_echo_both_ways() -> None:
    r = Rig()
    r.post(0, 0x4000, 64, True)
    r.chr.type_in(b"ping")
    assert r.mem.read(0x4000, 4) == b"ping"
    r.post(1, 0x3000, 4, False, r.mem.read(0x4000, 4))
    assert r.chr.out == b"ping"


def test_input_is_bounded() -> None:
    r = Rig()
    port = r.dev.ports[0]
    r.chr.type_in(b"a" * (C.INPUT_LIMIT + 10))
    assert port.pending_len == C.INPUT_LIMIT and port.dropped == 10


def test_emergency_write_even_before_initialisation() -> None:
    r = Rig()
    r.dev.write_status(0)
    r.dev.config_write(8, 4, ord("!"))
    r.dev.config_write(8, 4, 0)  # NUL is not sent (QEMU)
    assert r.chr.out == b"!"


def ctrl(nr: int, event: int, value: int) -> bytes:
    return struct.pack("<IHH", nr, event, value)


def test_multiport_handshake_like_linux() -> None:
    r = Rig(MULTI, name="org.refvm.console")
    for k in range(4):
        r.post(2, 0x5000 + 0x100 * k, 64, True)  # control receive buffers
    r.post(3, 0x6000, 8, False, ctrl(0, C.DEVICE_READY, 1))
    assert r.mem.read(0x5000, 8) == ctrl(0, C.DEVICE_ADD, 1)
    r.post(3, 0x6100, 8, False, ctrl(0, C.PORT_READY, 1))
    msgs = r.used(2)
    assert [r.mem.read(0x5000 + 0x100 * k, 8) for k in range(1, 4)] == [
        ctrl(0, C.CONSOLE_PORT, 1),
        ctrl(0, C.PORT_NAME, 1),
        ctrl(0, C.PORT_OPEN, 1),
    ]
    assert msgs[2][1] == 8 + len("org.refvm.console")
    assert r.mem.read(0x5208, 17) == b"org.refvm.console"
    r.chr.type_in(b"before open")
    r.post(0, 0x4000, 64, True)
    assert r.used(0) == []  # the guest has not opened the port yet
    r.post(3, 0x6200, 8, False, ctrl(0, C.PORT_OPEN, 1))
    assert r.used(0) == [(0, 11)] and r.mem.read(0x4000, 11) == b"before open"
    r.post(1, 0x3000, 3, False, b"out")
    assert r.chr.out == b"out"


def test_multiport_messages_wait_for_control_buffers() -> None:
    r = Rig(MULTI)
    r.post(3, 0x6000, 8, False, ctrl(0, C.DEVICE_READY, 1))
    r.post(3, 0x6100, 8, False, ctrl(7, C.PORT_READY, 1))  # no such port: a violation, ignored
    assert r.dev.violations
    r.post(2, 0x5000, 64, True)
    assert r.used(2) == [(0, 8)] and r.mem.read(0x5000, 8) == ctrl(0, C.DEVICE_ADD, 1)


def test_create_errors() -> None:
    mem = make_mem()
    with pytest.raises(ValueError, match=r"Property 'virtconsole.chardev' can't find value 'zz'"):
        VirtConsole.create({"chardev": "zz"}, chardevs={})
    with pytest.raises(ValueError, match="max_ports"):
        VirtioSerial.create(mem, {"max_ports": "0"})
    dev = VirtioSerial.create(mem, {"max_ports": "2", "emergency-write": "off"})
    assert len(dev.queue_max_sizes) == 6 and not dev.features & (1 << C.VIRTIO_CONSOLE_F_EMERG_WRITE)
    assert F.has(dev.device_features, F.VIRTIO_F_VERSION_1)

"""Console device (VIRTIO 1.2 §5.3): virtio-serial-pci with a virtconsole on a unix-socket chardev whose
host end the test holds, so bytes can be checked in both directions. QEMU's virtio-serial only feeds the
guest while the machine runs, so the machine is resumed with a halting firmware (conftest.running_vm)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from conformance.drivers.virtio import F_VERSION_1
from conformance.virtio.conftest import Machine, clause
from conformance.virtio.devices import (
    CONSOLE_DEVICE_ADD,
    CONSOLE_DEVICE_READY,
    CONSOLE_DEVICE_REMOVE,
    CONSOLE_EMERG_WR,
    CONSOLE_F_EMERG_WRITE,
    CONSOLE_F_MULTIPORT,
    CONSOLE_MAX_NR_PORTS,
    CONSOLE_PORT_READY,
    console_control,
    parse_console_control,
)

INIT = "Device Types / Console Device / Device Initialization"
MULTIPORT = "Device Types / Console Device / Device Operation / Multiport Device Operation"


class Console:
    def __init__(self, machine: Machine, sock: socket.socket) -> None:
        self.machine, self.sock = machine, sock

    def recv(self, n: int, timeout: float = 3.0) -> bytes:
        self.sock.settimeout(timeout)
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < n and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(n - len(data))
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data


def _console(running_vm: Callable[..., Machine], short_tmp: str, ports: int) -> Iterator[Console]:
    """virtio-serial with `ports` virtconsoles: the first on a socket the test holds, the rest on null."""
    path = os.path.join(short_tmp, "con.sock")
    args = ["-chardev", f"socket,id=c0,path={path},server=on,wait=off",
            "-device", "virtio-serial-pci,disable-legacy=on", "-device", "virtconsole,chardev=c0"]
    for n in range(1, ports):
        args += ["-chardev", f"null,id=c{n}", "-device", f"virtconsole,chardev=c{n},nr={n}"]
    machine = running_vm(*args)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    yield Console(machine, sock)
    sock.close()


@pytest.fixture
def console(running_vm: Callable[..., Machine], short_tmp: str) -> Iterator[Console]:
    yield from _console(running_vm, short_tmp, 1)


@pytest.fixture
def console2(running_vm: Callable[..., Machine], short_tmp: str) -> Iterator[Console]:
    yield from _console(running_vm, short_tmp, 2)


@clause(INIT)
def test_emergency_write_on_unconfigured_device(console: Console) -> None:
    dev = console.machine.device("console")
    if not dev.device_features() >> CONSOLE_F_EMERG_WRITE & 1:
        pytest.skip("VIRTIO_CONSOLE_F_EMERG_WRITE not offered")
    time.sleep(0.05)  # let the target accept the host connection
    for ch in b"SOS":
        dev.config_write(CONSOLE_EMERG_WR, 4, ch)
    assert console.recv(3) == b"SOS", "bytes written to emerg_wr did not reach the console's output"
    assert dev.status == 0, "the emergency write must work without any initialization"


@clause(INIT)
def test_bytes_both_ways_on_port0(console: Console) -> None:
    m = console.machine
    dev, (rx, tx) = m.ready("console", queues=(0, 1))
    console.sock.sendall(b"from-host")
    c = rx.transact([], [64])
    assert c.data[0][: c.used.length] == b"from-host"
    c = tx.transact([b"from-", b"guest"], [])
    assert c.used.length == 0, "a transmit buffer has no device-writable part"
    assert console.recv(10) == b"from-guest"


@clause(MULTIPORT)
def test_multiport_device_add_messages(console2: Console) -> None:
    m = console2.machine
    dev = m.device("console")
    if not dev.device_features() >> CONSOLE_F_MULTIPORT & 1:
        pytest.skip("VIRTIO_CONSOLE_F_MULTIPORT not offered")
    max_ports = dev.config_read(CONSOLE_MAX_NR_PORTS, 4)
    dev, (rx0, tx0, crx, ctx) = m.ready("console", want=1 << CONSOLE_F_MULTIPORT | 1 << F_VERSION_1,
                                        queues=(0, 1, 2, 3), size=32)
    for _ in range(16):
        crx.add([crx.in_buf(64)])
    crx.kick()
    ctx.transact([console_control(0, CONSOLE_DEVICE_READY, 1)], [])
    events = _collect(crx, 0.3)
    added = [port for port, event, _ in events if event == CONSOLE_DEVICE_ADD]
    assert sorted(added) == [0, 1], f"DEVICE_ADD for ports {added}, expected the two configured ports"
    assert len(set(added)) == len(added), "a port was added twice"
    assert all(p < max_ports for p in added), f"port id not below max_nr_ports {max_ports}"
    ctx.transact([console_control(0, CONSOLE_PORT_READY, 1)], [])
    events += _collect(crx, 0.2)
    removed = [port for port, event, _ in events if event == CONSOLE_DEVICE_REMOVE]
    assert set(removed) <= set(added), f"DEVICE_REMOVE for never-added ports {removed}"


def _collect(vq, wait: float) -> list[tuple[int, int, int]]:  # noqa: ANN001
    out = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        used = vq.get_used()
        if used is None:
            time.sleep(0.005)
            continue
        data = vq.read_back(used.id)[0][: used.length]
        out.append(parse_console_control(data))
        vq.add([vq.in_buf(64)])
        vq.kick()
    return out

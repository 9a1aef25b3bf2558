"""virtio-console (VIRTIO 1.2 section 5.3) as QEMU 7.2's ``virtio-serial-pci`` + ``virtconsole``.

``-device virtio-serial-pci`` (plus the transport's ``addr id bus disable-legacy disable-modern
vectors`` and the core's ``indirect_desc event_idx packed``):

===================  =======  ===================================================================
property             default  meaning
===================  =======  ===================================================================
``max_ports``        31       ``max_nr_ports``; the device has 2 * (max_ports + 1) queues
``emergency-write``  on       offer VIRTIO_CONSOLE_F_EMERG_WRITE
===================  =======  ===================================================================

``-device virtconsole`` (a port on the serial bus; :meth:`VirtioSerial.add_port`):

===========  ========  ======================================================================
property     default   meaning
===========  ========  ======================================================================
``chardev``  none      id of the ``-chardev`` the port is connected to
``name``     none      PORT_NAME sent to the driver
``nr``       0         port number (a console takes port 0, QEMU's convention)
``id``                 device id (ignored here)
===========  ========  ======================================================================

QEMU 7.2 facts (measured, ``disable-legacy=on``): features MULTIPORT | EMERG_WRITE (0x6), no SIZE;
config ``cols 0, rows 0, max_nr_ports 31, emerg_wr 0`` (12 bytes); 64 queues: port 0 receiveq and
transmitq of 128, control receiveq/transmitq of 32, every further port queue 128.

Without MULTIPORT (5.3.2) port 0 uses queues 0 (receiveq, host to guest) and 1 (transmitq) and is
open from DRIVER_OK on. With MULTIPORT (5.3.6.2) the control queues carry ``struct
virtio_console_control``: the driver's DEVICE_READY makes the device announce every port with
PORT_ADD; a PORT_READY is answered with CONSOLE_PORT (console ports), PORT_NAME and PORT_OPEN (the
host side is connected); the driver's PORT_OPEN opens the port for host input. Host input that finds
no posted receive buffer (or a closed port) is buffered up to :data:`INPUT_LIMIT` bytes, never lost
below that bound. Transmit buffers are returned with used length 0 (nothing written), as QEMU does.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from refvm.memory import GuestMemory
from refvm.migration.state import BOOL, U32, DeviceState, buffer, sfield, struct_list
from refvm.virtio.device import VirtioDevice
from refvm.virtio.devices.props import Props
from refvm.virtio.queue import Virtqueue
from refvm.virtio.state import VirtioCoreState

__all__ = ["VirtioSerial", "ConsolePort", "VirtConsole"]

log = logging.getLogger(__name__)

VIRTIO_CONSOLE_F_SIZE = 0
VIRTIO_CONSOLE_F_MULTIPORT = 1
VIRTIO_CONSOLE_F_EMERG_WRITE = 2

# 5.3.6.2 control events
DEVICE_READY = 0
DEVICE_ADD = 1
DEVICE_REMOVE = 2
PORT_READY = 3
CONSOLE_PORT = 4
RESIZE = 5
PORT_OPEN = 6
PORT_NAME = 7

_CTRL = struct.Struct("<IHH")  # id, event, value
INPUT_LIMIT = 1 << 20  # host input bytes kept per port while the guest cannot take them
TX_LIMIT = 1 << 20  # bytes of one transmit buffer taken (larger: the rest is dropped)
CTRL_PENDING_LIMIT = 1024  # control messages waiting for control receive buffers
PORT_QUEUE_SIZE = 128
CONTROL_QUEUE_SIZE = 32


@dataclass(eq=False)
class ConsolePort:
    """One port on the serial bus (a ``virtconsole`` or, with ``console=False``, a ``virtserialport``)."""

    nr: int = 0
    chardev: object | None = None
    name: str | None = None
    console: bool = True
    guest_connected: bool = False
    guest_ready: bool = False
    pending: deque[bytes] = field(default_factory=deque)
    pending_len: int = 0
    dropped: int = 0


@dataclass
class ConsolePortState(DeviceState):
    """One port: what the driver said about it (PORT_READY, PORT_OPEN) and host input it has not taken."""

    VMSD_NAME = "virtio-console-port"

    nr: int = sfield(U32, 0)
    guest_connected: bool = sfield(BOOL, False)
    guest_ready: bool = sfield(BOOL, False)
    pending: bytes = sfield(buffer(INPUT_LIMIT), b"")


@dataclass
class ControlMessageState(DeviceState):
    """One control message (5.3.6.2) waiting for a control receive buffer."""

    VMSD_NAME = "virtio-console-control"

    message: bytes = sfield(buffer(1 << 16), b"\0" * 8, lambda v: len(v) >= 8, "at least 8 bytes")


@dataclass
class ConsoleState(DeviceState):
    """Every port's state (in port order) and the control messages not yet delivered."""

    VMSD_NAME = "virtio-console-device"

    ports: tuple[ConsolePortState, ...] = sfield(struct_list(ConsolePortState, 1024), ())
    control: tuple[ControlMessageState, ...] = sfield(struct_list(ControlMessageState, CTRL_PENDING_LIMIT), ())


class VirtioSerial(VirtioDevice):
    """virtio-serial with console ports on chardevs (Chardev.write / Chardev.set_receiver)."""

    device_id = 3
    VMSD_NAME = "virtio-console"
    DEVICE_STATE = ConsoleState
    feature_names = {0: "SIZE", 1: "MULTIPORT", 2: "EMERG_WRITE"}

    def __init__(self, mem: GuestMemory, *, max_ports: int = 31, emergency_write: bool = True, **virtio: bool) -> None:
        self.max_ports = max_ports
        self.features = (1 << VIRTIO_CONSOLE_F_MULTIPORT) | ((1 << VIRTIO_CONSOLE_F_EMERG_WRITE) if emergency_write
                                                             else 0)
        sizes = [PORT_QUEUE_SIZE, PORT_QUEUE_SIZE, CONTROL_QUEUE_SIZE, CONTROL_QUEUE_SIZE]
        sizes += [PORT_QUEUE_SIZE] * (2 * (max_ports - 1))
        self.queue_max_sizes = tuple(sizes)
        self.ports: dict[int, ConsolePort] = {}
        self._ctrl_out: deque[bytes] = deque()
        self.ctrl_dropped = 0
        self.emergency_bytes = 0
        super().__init__(mem, config_size=12, **virtio)
        self.config[:12] = struct.pack("<HHII", 0, 0, max_ports, 0)

    PROPERTIES = ("max_ports", "emergency-write")

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
        type_name: str = "virtio-serial-pci",
    ) -> VirtioSerial:
        p = Props(type_name, props, cls.PROPERTIES)
        max_ports = p.number("max_ports", 31, 1, 511)
        return cls(mem, max_ports=max_ports, emergency_write=p.flag("emergency-write", True), **p.virtio_flags())

    # ------------------------------------------------------------------ ports
    def add_port(self, port: ConsolePort) -> ConsolePort:
        """Plug ``port`` (before the guest runs); its chardev's input goes to the port's receiveq."""
        if not 0 <= port.nr < self.max_ports:
            raise ValueError(f"virtio-serial: port number {port.nr} exceeds max_ports {self.max_ports}")
        if port.nr in self.ports:
            raise ValueError(f"virtio-serial: port {port.nr} already used")
        self.ports[port.nr] = port
        setter = getattr(port.chardev, "set_receiver", None)
        if setter is not None:
            setter(lambda data, _p=port: self.host_input(_p, data))
        return port

    def _multiport(self) -> bool:
        return self.negotiated(VIRTIO_CONSOLE_F_MULTIPORT)

    def _queue_indexes(self, nr: int) -> tuple[int, int]:
        """(receiveq, transmitq) of port ``nr`` (5.3.2)."""
        return (0, 1) if nr == 0 else (2 + 2 * nr, 3 + 2 * nr)

    def _port_of_queue(self, index: int) -> ConsolePort | None:
        nr = 0 if index < 2 else (index - 2) // 2
        if index in (2, 3):
            return None
        return self.ports.get(nr)

    # ------------------------------------------------------------------ lifecycle
    def driver_ok(self) -> None:
        if not self._multiport():
            port = self.ports.get(0)
            if port is not None:
                port.guest_connected = True  # 5.3.2: without MULTIPORT port 0 is simply there
        self._flush_all()

    def reset_device(self) -> None:
        self._ctrl_out.clear()
        for port in self.ports.values():
            port.guest_connected = False
            port.guest_ready = False

    # ------------------------------------------------------------------ migration
    def save_device(self) -> ConsoleState:
        ports = tuple(ConsolePortState(nr=p.nr, guest_connected=p.guest_connected, guest_ready=p.guest_ready,
                                       pending=b"".join(p.pending)) for p in sorted(self.ports.values(),
                                                                                    key=lambda p: p.nr))
        return ConsoleState(ports=ports, control=tuple(ControlMessageState(m) for m in self._ctrl_out))

    def device_problem(self, st: object, core: VirtioCoreState) -> tuple[str, str] | None:
        assert isinstance(st, ConsoleState)
        have = sorted(self.ports)
        if [p.nr for p in st.ports] != have:
            return "ports", f"ports {[p.nr for p in st.ports]}, this device has {have}"
        return None

    def load_device(self, st: object) -> None:
        assert isinstance(st, ConsoleState)
        for ps in st.ports:
            port = self.ports[ps.nr]
            port.guest_connected, port.guest_ready = ps.guest_connected, ps.guest_ready
            port.pending = deque([ps.pending] if ps.pending else [])
            port.pending_len = len(ps.pending)
        self._ctrl_out = deque(m.message for m in st.control)

    def post_load(self) -> None:
        self._flush_all()  # carried input goes into receive buffers the driver posted before the migration

    # ------------------------------------------------------------------ configuration (5.3.4)
    def write_config(self, offset: int, data: bytes) -> None:
        # 5.3.5.1: emerg_wr may be written at any time, even on an unconfigured device.
        if offset == 8 and self.features & (1 << VIRTIO_CONSOLE_F_EMERG_WRITE):
            value = int.from_bytes(data[:4], "little")
            port = self.ports.get(0)
            if value and port is not None and port.chardev is not None:
                self.emergency_bytes += 1
                port.chardev.write(bytes([value & 0xFF]))  # type: ignore[attr-defined]
            return
        super().write_config(offset, data)

    # ------------------------------------------------------------------ host -> guest
    def host_input(self, port: ConsolePort, data: bytes) -> None:
        """Bytes from the port's chardev (any thread): buffer them, deliver what fits now."""
        with self.lock:
            room = INPUT_LIMIT - port.pending_len
            if len(data) > room:
                port.dropped += len(data) - room
                data = data[:room]
            if data:
                port.pending.append(bytes(data))
                port.pending_len += len(data)
            self._flush_port(port)

    def _flush_all(self) -> None:
        self._flush_control()
        for port in self.ports.values():
            self._flush_port(port)

    def _flush_port(self, port: ConsolePort) -> None:
        if not port.pending or not port.guest_connected or not self.live:
            return
        rx_index = self._queue_indexes(port.nr)[0]
        if rx_index >= len(self.queues):
            return
        q = self.queues[rx_index]
        if not q.ready:
            return
        moved = False
        for _ in range(q.size):
            if not port.pending:
                break
            chain = q.pop()
            if chain is None:
                break
            written = 0
            while port.pending and written < chain.writable_len:
                head = port.pending[0]
                n = chain.write_into(head[: chain.writable_len - written], written)
                written += n
                port.pending_len -= n
                if n == len(head):
                    port.pending.popleft()
                else:
                    port.pending[0] = head[n:]
            q.push(chain, written)
            moved = True
        if moved:
            self.notify_used(q)

    # ------------------------------------------------------------------ control messages (5.3.6.2)
    def _send_control(self, nr: int, event: int, value: int, extra: bytes = b"") -> None:
        if len(self._ctrl_out) >= CTRL_PENDING_LIMIT:
            self.ctrl_dropped += 1
            return
        self._ctrl_out.append(_CTRL.pack(nr, event, value) + extra)

    def _flush_control(self) -> None:
        if not self._multiport() or not self._ctrl_out or not self.live:
            return
        q = self.queues[2]
        if not q.ready:
            return
        moved = False
        for _ in range(q.size):
            if not self._ctrl_out:
                break
            chain = q.pop()
            if chain is None:
                break
            msg = self._ctrl_out.popleft()
            q.push(chain, chain.write_into(msg))  # a too-small buffer gets a truncated message
            moved = True
        if moved:
            self.notify_used(q)

    def _control_message(self, msg: bytes) -> None:
        if len(msg) < _CTRL.size:
            log.info("virtio-serial: control message of %d bytes ignored", len(msg))
            return
        nr, event, value = _CTRL.unpack_from(msg)
        if event == DEVICE_READY:
            if value:
                for port in sorted(self.ports.values(), key=lambda p: p.nr):
                    self._send_control(port.nr, DEVICE_ADD, 1)
            return
        port = self.ports.get(nr)
        if port is None:
            self._violation(f"5.3.6.2: control event {event} for port {nr}, which does not exist")
            return
        if event == PORT_READY:
            port.guest_ready = bool(value)
            if not value:
                return
            if port.console:
                self._send_control(nr, CONSOLE_PORT, 1)
            if port.name:
                self._send_control(nr, PORT_NAME, 1, port.name.encode())
            if port.chardev is not None:  # the host side is connected
                self._send_control(nr, PORT_OPEN, 1)
        elif event == PORT_OPEN:
            port.guest_connected = bool(value)
            self._flush_port(port)
        # RESIZE and anything else from the driver: nothing to do (QEMU ignores them as well)

    # ------------------------------------------------------------------ queues
    def handle_queue(self, queue: Virtqueue) -> None:
        index = queue.index
        if index == 2:
            self._flush_control()
            return
        if index == 3:
            for _ in range(queue.size):
                chain = queue.pop()
                if chain is None:
                    break
                msg = chain.read(0, min(chain.readable_len, 64))
                queue.push(chain, 0)
                self._control_message(msg)
            self._flush_all()
            return
        port = self._port_of_queue(index)
        if index % 2 == 0:  # a receiveq: the driver posted buffers
            if port is not None:
                self._flush_port(port)
            return
        for _ in range(queue.size):  # a transmitq
            chain = queue.pop()
            if chain is None:
                break
            data = chain.read(0, min(chain.readable_len, TX_LIMIT))
            queue.push(chain, 0)
            if port is not None and port.chardev is not None and data:  # QEMU: needs only the host side
                port.chardev.write(data)  # type: ignore[attr-defined]


class VirtConsole:
    """``-device virtconsole``: builds the :class:`ConsolePort` for :meth:`VirtioSerial.add_port`."""

    PROPERTIES = ("chardev", "name", "nr", "id", "bus")

    @classmethod
    def create(
        cls,
        props: Mapping[str, str],
        *,
        chardevs: Mapping[str, object] | None = None,
        drives: Mapping[str, object] | None = None,
        netdevs: Mapping[str, object] | None = None,
        objects: Mapping[str, object] | None = None,
        type_name: str = "virtconsole",
    ) -> ConsolePort:
        for name in props:
            if name not in cls.PROPERTIES:
                raise ValueError(f"Property '{type_name}.{name}' not found")
        chardev = None
        cid = props.get("chardev")
        if cid is not None:
            chardev = (chardevs or {}).get(cid)
            if chardev is None:
                raise ValueError(f"Property '{type_name}.chardev' can't find value '{cid}'")
        try:
            nr = int(props.get("nr", "0"), 0)
        except ValueError:
            raise ValueError(f"Property '{type_name}.nr' doesn't take value '{props['nr']}'") from None
        if not 0 <= nr <= 0xFFFFFFFF:
            raise ValueError(f"Property '{type_name}.nr' doesn't take value {nr}")
        return ConsolePort(nr=nr, chardev=chardev, name=props.get("name"), console=True)

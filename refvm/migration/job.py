"""One machine's migration jobs: the outgoing RAM+device copy and the incoming load, with QEMU's statuses.

This first cut is stop-and-copy: the source stops the guest, sends every RAM page (zero pages as ZERO records)
and the devices that describe their state as data, then ends in `postmigrate`.  There is no dirty logging yet,
so nothing is iterated while the guest runs.  The destination reads the whole stream, validates it (stream.py,
state.py) before touching guest memory, then writes the pages and loads the devices.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from refvm.migration import kvm_sections, precopy
from refvm.migration.channel import Channel, Listener, connect
from refvm.migration.state import DeviceState
from refvm.migration.stream import StreamWriter, read_stream
from refvm.migration.wire import TARGET_PAGE_SIZE, StreamError

RAM_BLOCK = "pc.ram"  # all guest RAM regions, concatenated in address order, as one block (QEMU's name)
PAGES_PER_PART = 256
MACHINE_TYPE = "pc-i440fx-7.2"


def _devices(machine: Any) -> dict[str, Any]:
    """The port-I/O devices that can save and load their state, by bus registration name."""
    found: dict[str, Any] = {}
    for base, _length, name in machine.pio.ranges():
        rng = machine.pio.lookup(base)
        dev = rng.device if rng is not None else None
        if dev is not None and hasattr(dev, "save") and hasattr(dev, "load"):
            found[name] = dev
    return found


def _regions(machine: Any) -> list[tuple[int, int]]:
    return [(r.gpa, r.size) for r in machine.memory.regions]


class MigrationJob:
    """The latest migration of one machine (outgoing or incoming) and what query-migrate reports of it."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.status = "none"
        self.error = ""
        self.started = 0.0
        self.total_ms = 0
        self.transferred = self.duplicate = self.normal = 0
        self.dirty_syncs = 0  # pre-copy's passes over the dirty logs (query-migrate's dirty-sync-count)
        self._channel: Channel | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    # ---- reporting ---------------------------------------------------------------------------------

    def _set(self, status: str, error: str = "") -> None:
        with self._lock:
            self.status, self.error = status, error or self.error
        self.machine.emit_event("MIGRATION", {"status": status})

    def query(self) -> dict[str, Any]:
        """query-migrate's reply: {} before any migration, QEMU's member names after."""
        if self.status == "none":
            return {}
        ram_total = sum(size for _, size in _regions(self.machine))
        sent = (self.duplicate + self.normal) * TARGET_PAGE_SIZE
        out: dict[str, Any] = {"status": self.status}
        if self.status in ("active", "completed", "cancelling"):
            elapsed = self.total_ms if self.status == "completed" else int((time.monotonic() - self.started) * 1000)
            out["total-time"] = elapsed
            out["ram"] = {"transferred": self.transferred, "remaining": max(ram_total - sent, 0),
                          "total": ram_total, "duplicate": self.duplicate, "normal": self.normal,
                          "normal-bytes": self.normal * TARGET_PAGE_SIZE, "dirty-sync-count": 1,
                          "page-size": TARGET_PAGE_SIZE}
        if self.status == "failed" and self.error:
            out["error-desc"] = self.error
        return out

    @property
    def active(self) -> bool:
        return self.status in ("setup", "active", "cancelling")

    # ---- outgoing ----------------------------------------------------------------------------------

    def start_outgoing(self, uri: str) -> None:
        """QMP migrate: open the channel now (so a refused connection fails the command), copy in a thread."""
        self._cancel.clear()
        self.transferred = self.duplicate = self.normal = 0
        self.error = ""
        self.started = time.monotonic()
        self._set("setup")
        try:
            self._channel = connect(uri)
        except OSError as err:  # as QEMU: the command succeeds, the migration fails (query-migrate says why)
            self._set("failed", f"Failed to connect to '{uri.partition(':')[2]}': {err.strerror or err}")
            return
        threading.Thread(target=self._outgoing, name="migration-out", daemon=True).start()

    def cancel(self) -> None:
        if self.active:
            self._set("cancelling")
            self._cancel.set()
            if self._channel is not None:
                self._channel.abort()

    def _outgoing(self) -> None:
        machine, channel = self.machine, self._channel
        assert channel is not None
        was_running = machine.status() == "running"
        try:
            self._set("active")
            writer = StreamWriter(channel.stream)
            writer.header(MACHINE_TYPE)
            writer.ram_start({RAM_BLOCK: sum(size for _, size in _regions(machine))})
            if precopy.usable(machine):
                precopy.run(self, writer, RAM_BLOCK)  # RAM while the guest runs; returns with it stopped
            else:
                machine.pause()
                self._send_ram(writer)
            for name, dev in _devices(machine).items():
                state: DeviceState = dev.save()
                writer.device(name, 0, state.VERSION, state.encode(), state.describe())
            for name, instance, state in kvm_sections.save_sections(machine):  # vCPUs, irqchip, PIT, clock
                writer.device(name, instance, state.VERSION, state.encode(), state.describe())
            writer.finish()
            self.transferred = writer.bytes_written
            if channel.close() != 0:
                raise OSError("the migration command failed")
        except (OSError, ValueError) as err:
            channel.abort()
            channel.close()
            if self._cancel.is_set():
                self._set("cancelled")
            else:
                self._set("failed", f"Unable to write to socket: {getattr(err, 'strerror', None) or err}")
            if was_running:
                machine.resume()
            return
        self.total_ms = int((time.monotonic() - self.started) * 1000)
        machine.set_run_state("postmigrate")
        self._set("completed")

    def _send_ram(self, writer: StreamWriter) -> None:
        batch: list[tuple[str, int, bytes]] = []
        offset = 0
        for gpa, size in _regions(self.machine):
            for page in range(0, size, TARGET_PAGE_SIZE):
                if self._cancel.is_set():
                    raise OSError("cancelled")
                data = self.machine.memory.read(gpa + page, TARGET_PAGE_SIZE)
                batch.append((RAM_BLOCK, offset + page, data))
                if any(data):
                    self.normal += 1
                else:
                    self.duplicate += 1
                if len(batch) == PAGES_PER_PART:
                    writer.ram_part(batch)
                    self.transferred = writer.bytes_written
                    batch = []
            offset += size
        writer.ram_part(batch, last=True)

    # ---- incoming ----------------------------------------------------------------------------------

    def start_incoming(self, uri: str) -> None:
        """-incoming URI or migrate-incoming: listen now (errors go to the caller), load in a thread."""
        listener = Listener(uri)
        self.machine.set_run_state("inmigrate")
        self.started = time.monotonic()
        self._set("setup")
        threading.Thread(target=self._incoming, args=(listener,), name="migration-in", daemon=True).start()

    def _incoming(self, listener: Listener) -> None:
        machine = self.machine
        try:
            channel = listener.accept()
            self._set("active")
            limit = sum(size for _, size in _regions(machine)) * 2 + (16 << 20)
            data = channel.stream.read(limit + 1)
            channel.close()
            if len(data) > limit:
                raise StreamError(f"migration stream: stream: field 'length': more than {limit} bytes")
            self._load(read_stream(data))
            self.transferred = len(data)
        except (OSError, StreamError) as err:
            self._set("failed", str(err))
            machine.request_error(f"load of migration failed: {err}")
            return
        self.total_ms = int((time.monotonic() - self.started) * 1000)
        self._set("completed")
        if machine.config.start_paused:
            machine.set_run_state("paused")
        else:
            machine.resume()

    def _load(self, parsed: Any) -> None:
        """Check the stream against this machine completely, then write RAM and load devices."""
        regions = _regions(self.machine)
        total = sum(size for _, size in regions)
        if parsed.ram.blocks != {RAM_BLOCK: total}:
            raise StreamError(f"migration stream: section 'ram': field 'ram block length': blocks "
                              f"{parsed.ram.blocks} do not match this machine's {RAM_BLOCK} of {total:#x}")
        devices = _devices(self.machine)
        states = []
        kvm_states, sections = kvm_sections.take_sections(self.machine, parsed.devices())
        for sec in sections:
            dev = devices.get(sec.idstr)
            if dev is None:
                raise StreamError(f"migration stream: section '{sec.idstr}': field 'idstr': no such device here")
            state_cls = type(dev.save())
            states.append((dev, state_cls.decode(sec.payload, sec.version_id)))
        pages = parsed.ram.pages.get(RAM_BLOCK, {})
        base = 0
        for gpa, size in regions:
            for off in range(base, base + size, TARGET_PAGE_SIZE):
                data = pages.get(off)
                if data is not None:
                    self.machine.memory.write(gpa + off - base, data)
                    self.normal += 1
            base += size
        for dev, state in states:
            dev.load(state)
        kvm_sections.load_sections(self.machine, kvm_states)

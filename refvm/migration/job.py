"""One machine's migration jobs: the outgoing RAM+device copy and the incoming load, with QEMU's statuses.

The source sends every RAM page once while the guest keeps running (zero pages as ZERO records, at most
`max-bandwidth` bytes a second) and, under KVM, again the pages written meanwhile (precopy.py), stops the guest
(STOP, run state finish-migrate), waits in `pre-switchover` when that capability is on, then in `device` sends
again every page written since it was sent (dirty logs under KVM; under qtest, whose machine has no vCPU, a
digest per page compared), the devices that describe their state
as data and the run state, and ends in `postmigrate`.  MIGRATION and MIGRATION_PASS events go out only with
the `events` capability, as in QEMU.  A failed or cancelled migration restarts a guest that was running.
The destination reads the whole stream, validates it (stream.py, state.py) before touching guest memory,
then writes the pages, loads the devices and takes the source's run state.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from refvm.block.driver import BlockError
from refvm.migration import kvm_sections, precopy
from refvm.migration.channel import Channel, FdLookup, Listener, connect, prefaulted, read_all
from refvm.migration.globalstate import IDSTR as GLOBALSTATE
from refvm.migration.globalstate import GlobalState
from refvm.migration.options import MigrationOptions
from refvm.migration.outqueue import QueuedWriter
from refvm.migration.state import DeviceState
from refvm.migration.stream import StreamWriter, read_stream
from refvm.migration.wire import TARGET_PAGE_SIZE, StreamError

RAM_BLOCK = "pc.ram"  # all guest RAM regions, concatenated in address order, as one block (QEMU's name)
PAGES_PER_PART = 256
MACHINE_TYPE = "pc-i440fx-7.2"
SWITCHOVER_SWITCH_INTERVAL = 0.0005  # s; Python's default, 5 ms, is the length of a whole switchover here
ZERO_PAGE = bytes(TARGET_PAGE_SIZE)
#: Statuses in which an outgoing migration is under way (QEMU's migration_is_running()).
RUNNING_STATUSES = ("setup", "active", "pre-switchover", "device", "cancelling")
#: query-migrate's ram members that refvm has no use for yet (no postcopy, multifd, zero-copy, xbzrle).
UNUSED_RAM_COUNTERS = ("skipped", "postcopy-requests", "multifd-bytes", "postcopy-bytes",
                       "dirty-sync-missed-zero-copy")


def _devices(machine: Any) -> dict[str, Any]:
    """The devices that save and load their state, by section idstr, in device-tree order (built-ins, then
    every -device): port-I/O devices by their bus registration name (`mc146818-rtc`, `serial@0x3f8`), PCI
    functions as QEMU names them (`0000:00:04.0/virtio-blk`)."""
    return machine.devices.sections()


def thaw_devices(machine: Any) -> None:
    """Let devices frozen by a save (the migration's cut) run again: the migration failed, or the source of
    a completed one is continued with `cont` (QEMU allows it from postmigrate)."""
    for dev in _devices(machine).values():
        getattr(dev, "thaw", lambda: None)()


def _regions(machine: Any) -> list[tuple[int, int]]:
    return [(r.gpa, r.size) for r in machine.memory.regions]


def _refresh_drives(machine: Any) -> None:
    """Destination: drop what each image read at open and read it again (QEMU activates its images at the end
    of an incoming migration), since a source on shared storage wrote the file since then."""
    backends = getattr(machine, "backends", None)
    for drive in (getattr(backends, "drives", None) or {}).values():
        refresh = getattr(getattr(drive, "driver", None), "invalidate_cache", None)
        if refresh is not None and not getattr(drive, "closed", False):
            refresh()


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


class MigrationJob:
    """The latest migration of one machine (outgoing or incoming) and what query-migrate reports of it."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.options = MigrationOptions()
        self.status = "none"
        self.incoming = False
        self.error = ""
        self.started = self.stopped_at = self.pass_started = 0.0
        self.setup_ms = self.total_ms = self.downtime_ms = 0
        self.transferred = self.duplicate = self.normal = 0
        self.sync_count = 0
        self.dirty_rate = 0
        self._listening: list[dict[str, str]] = []
        self._precopy: precopy.PreCopy | None = None
        self._channel: Channel | None = None
        self._cancel = threading.Event()
        self._continue = threading.Event()
        self._lock = threading.Lock()

    # ---- reporting ---------------------------------------------------------------------------------

    def _set(self, status: str, error: str = "") -> None:
        with self._lock:
            self.status, self.error = status, error or self.error
        if self.options.cap("events"):
            self.machine.emit_event("MIGRATION", {"status": status})

    def _sync(self) -> None:
        """One dirty-bitmap sync (QEMU's pass): counted by dirty-sync-count, announced by MIGRATION_PASS."""
        self.sync_count += 1
        if self.options.cap("events"):
            self.machine.emit_event("MIGRATION_PASS", {"pass": self.sync_count})

    def query(self) -> dict[str, Any]:
        """query-migrate's reply: {} before any migration, QEMU's member names after."""
        if self.incoming:
            if self.status == "setup":  # QEMU reports only where it listens (nothing for exec: and fd:)
                return {"socket-address": self._listening} if self._listening else {}
            return {"status": self.status}
        if self.status == "none":
            return {}
        out: dict[str, Any] = {"status": self.status}
        if self.status in ("active", "pre-switchover", "device", "cancelling", "completed"):
            done = self.status == "completed"
            out["total-time"] = self.total_ms if done else _ms(self.started)
            out["setup-time"] = self.setup_ms
            if done:
                out["downtime"] = self.downtime_ms
            else:
                out["expected-downtime"] = self._expected_downtime()
            out["ram"] = self._ram_info(out["total-time"] - self.setup_ms)
        if self.status == "failed" and self.error:
            out["error-desc"] = self.error
        return out

    def _ram_info(self, active_ms: int) -> dict[str, Any]:
        ram_total = sum(size for _, size in _regions(self.machine))
        pages = self.duplicate + self.normal
        seconds = max(active_ms, 1) / 1000
        info = {"transferred": self.transferred, "remaining": self._remaining(), "total": ram_total,
                "duplicate": self.duplicate, "normal": self.normal, "normal-bytes": self.normal * TARGET_PAGE_SIZE,
                "dirty-sync-count": self.sync_count, "page-size": TARGET_PAGE_SIZE,
                "dirty-pages-rate": self.dirty_rate, "mbps": self.transferred * 8 / 1e6 / seconds,
                "pages-per-second": int(pages / seconds), "precopy-bytes": self.transferred,
                "downtime-bytes": 0}
        info.update((name, 0) for name in UNUSED_RAM_COUNTERS)
        return info

    def _remaining(self) -> int:
        ram_total = sum(size for _, size in _regions(self.machine))
        if self.status == "completed":
            return 0
        if self._precopy is not None and self._precopy.first_pass_done:
            return self._precopy.remaining * TARGET_PAGE_SIZE  # pages the last dirty-log sync found
        return max(ram_total - (self.duplicate + self.normal) * TARGET_PAGE_SIZE, 0)

    def _expected_downtime(self) -> int:
        """ms to send what is left at the bandwidth measured so far (the limit until there is a measure)."""
        elapsed = time.monotonic() - self.pass_started
        if not self.pass_started or not self.transferred or elapsed <= 0:
            return self.options.param("downtime-limit")
        return int(self._remaining() / (self.transferred / elapsed) * 1000)

    @property
    def active(self) -> bool:
        """An outgoing migration is under way (migrate and migrate-set-capabilities are refused)."""
        return not self.incoming and self.status in RUNNING_STATUSES

    # ---- outgoing ----------------------------------------------------------------------------------

    def start_outgoing(self, uri: str, lookup: FdLookup | None = None) -> None:
        """QMP migrate: open the channel now (so a refused connection fails the command), copy in a thread.

        An fd:NAME that was never passed raises KeyError after the status went failed (QEMU's order).
        """
        self._cancel.clear()
        self._continue.clear()
        self.incoming = False
        self.transferred = self.duplicate = self.normal = self.sync_count = self.dirty_rate = 0
        self.setup_ms = self.total_ms = self.downtime_ms = 0
        self.error = ""
        self.started, self.pass_started = time.monotonic(), 0.0
        self._set("setup")
        try:
            self._channel = connect(uri, lookup)
        except KeyError:
            name = uri.partition(":")[2]
            self._set("failed", f"File descriptor named '{name}' has not been found")
            raise
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

    def switchover(self, state: str) -> None:
        """migrate-continue: leave `state` (ValueError naming the actual status when it is not that)."""
        with self._lock:
            current = "none" if self.incoming else self.status
        if current != state:
            raise ValueError(f"Migration not in expected state: {current}")
        self._continue.set()

    def _stop_guest(self) -> str:
        """Stop for switchover (STOP if it ran, run state finish-migrate); returns the state it had."""
        machine = self.machine
        was = machine.status()
        machine.pause(flush=False)  # the drives are flushed once, after the device saves
        machine.set_run_state("finish-migrate")
        if was == "running":
            machine.emit_event("STOP")
        self.stopped_at = time.monotonic()
        return was

    def _outgoing(self) -> None:
        machine, channel = self.machine, self._channel
        assert channel is not None
        was = ""
        out = QueuedWriter(channel.stream)  # encoding overlaps the socket's writes
        switch_interval = sys.getswitchinterval()
        try:
            writer = StreamWriter(out)
            writer.header(MACHINE_TYPE)
            writer.ram_start({RAM_BLOCK: sum(size for _, size in _regions(machine))})
            # Under KVM RAM goes while the guest runs, pass after pass (pre-copy: KVM's log for vCPU writes,
            # GuestMemory's for device writes); under qtest one pass while it runs, then pages whose digests changed.
            self._precopy = precopy.PreCopy(self, writer, RAM_BLOCK) if precopy.usable(machine) else None
            # First-use costs of the device saves now, not while the guest is stopped; in a thread, while the first
            # pass mostly waits for max-bandwidth (joined before the stop).
            warm = threading.Thread(target=kvm_sections.warm_up, args=(machine,), name="migration-warm-up",
                                    daemon=True)
            warm.start()
            if self._precopy is not None:
                self._precopy.start()
            else:
                self._sync()
            self.setup_ms = _ms(self.started)
            self._set("active")
            self.pass_started = time.monotonic()
            digests: list[int] = []
            if self._precopy is not None:
                self._precopy.iterate()
            else:
                digests = self._send_ram(writer, [])
            warm.join()
            was = self._stop_guest()
            # From the stop on, every remaining record is queued at once, and the writing thread gets the GIL back
            # within SWITCHOVER_SWITCH_INTERVAL after each writev (not up to 5 ms later, while this thread encodes).
            out.unbounded()
            sys.setswitchinterval(SWITCHOVER_SWITCH_INTERVAL)
            if self._precopy is not None:
                self._precopy.send_prepared()
            if self.options.cap("pause-before-switchover"):
                self._set("pre-switchover")
                while not self._continue.wait(0.05):
                    if self._cancel.is_set():
                        raise OSError("cancelled")
            self._set("device")
            # Device states are taken before the last RAM pass: a save that completes work in flight writes
            # guest memory, and those pages must go too.
            states: list[tuple[str, int, DeviceState]] = [
                (name, 0, dev.save()) for name, dev in _devices(machine).items()]
            # As QEMU's vm_stop: what the guest wrote (a qcow2's cached metadata too) is in the image file
            # before the switchover, for a destination on shared storage. After the saves, whose quiesce
            # performs the last throttled requests; the devices are frozen now.
            machine.flush_drives()
            if self._precopy is not None:
                self._precopy.finish()
            else:
                self._sync()
                self._send_ram(writer, digests)
            # KVM's state is read after the last pages are queued (it writes no guest memory): its ioctls and
            # the encoding below overlap the channel's writes of those pages.
            states += kvm_sections.save_sections(machine)  # vCPUs, irqchip, PIT, clock
            glob = GlobalState(was.encode())
            sections = [(name, instance, state.VERSION, state.encode(), state.describe())
                        for name, instance, state in [*states, (GLOBALSTATE, 0, glob)]]
            writer.devices(sections)
            writer.finish()
            ended = time.monotonic()  # QEMU's end of downtime and total time: the last byte flushed, before close
            if self._precopy is not None:
                self._precopy.close()
            self.transferred = writer.bytes_written
            if channel.close() != 0:
                raise OSError("the migration command failed")
        except (OSError, ValueError) as err:
            self._fail(err, was)
            return
        finally:
            sys.setswitchinterval(switch_interval)
            out.stop()
        self.downtime_ms = int((ended - self.stopped_at) * 1000)
        self.total_ms = int((ended - self.started) * 1000)
        machine.set_run_state("postmigrate")
        self._set("completed")

    def _fail(self, err: Exception, was: str) -> None:
        """Failed or cancelled: QEMU's order is the status, then the guest restarts (RESUME) if it ran."""
        assert self._channel is not None
        if self._precopy is not None:
            self._precopy.close()
        self._channel.abort()
        self._channel.close()
        cancelled = self._cancel.is_set()
        if not cancelled:
            self._set("failed", f"Unable to write to socket: {getattr(err, 'strerror', None) or err}")
        if was == "running":
            self.machine.resume()
            self.machine.emit_event("RESUME")
        elif was:
            self.machine.set_run_state("postmigrate")  # as QEMU: a guest that was not running stays stopped
        thaw_devices(self.machine)  # saved devices froze at the cut: they go on here
        if cancelled:
            self._set("cancelled")

    def _send_ram(self, writer: StreamWriter, sent: list[int]) -> list[int]:
        """One pass over RAM.  With no digests (`sent` empty) every page goes, at most `max-bandwidth` bytes
        a second, and the pages' digests come back; with them only pages that changed go, unthrottled (the
        guest is stopped), as the section end."""
        first = not sent
        if not first and self.machine.deviations.active("migration-drop-dirty"):
            sent = [hash(data) for gpa, size in _regions(self.machine) for _, data in self._pages(gpa, size)]
        batch: list[tuple[str, int, bytes]] = []
        digests: list[int] = []
        offset = changed = 0
        pass_start, pass_bytes = time.monotonic(), writer.bytes_written
        for gpa, size in _regions(self.machine):
            for page, data in self._pages(gpa, size):
                digest = hash(data)
                if first:
                    digests.append(digest)
                elif sent[(offset + page) // TARGET_PAGE_SIZE] == digest:
                    continue
                changed += 1
                batch.append((RAM_BLOCK, offset + page, data))
                if data == ZERO_PAGE:
                    self.duplicate += 1
                else:
                    self.normal += 1
                if len(batch) == PAGES_PER_PART:
                    writer.ram_part(batch)
                    self.transferred = writer.bytes_written
                    batch = []
                    if first:
                        self._throttle(writer.bytes_written - pass_bytes, pass_start)
            offset += size
        writer.ram_part(batch, last=not first)
        self.transferred = writer.bytes_written
        if not first:
            self.dirty_rate = int(changed / max(time.monotonic() - self.pass_started, 1e-3))
        return digests

    def _pages(self, gpa: int, size: int) -> Iterator[tuple[int, bytes]]:
        """(offset in the region, page) for a region, read PAGES_PER_PART pages at a time (one bounds check and
        one copy per chunk instead of per page); stops the pass at a cancel."""
        chunk = PAGES_PER_PART * TARGET_PAGE_SIZE
        for start in range(0, size, chunk):
            if self._cancel.is_set():
                raise OSError("cancelled")
            data = self.machine.memory.read(gpa + start, min(chunk, size - start))
            for off in range(0, len(data), TARGET_PAGE_SIZE):
                yield start + off, data[off : off + TARGET_PAGE_SIZE]

    def _throttle(self, sent: int, since: float) -> None:
        """Hold the pass back to `max-bandwidth` (read each time: migrate-set-parameters applies at once)."""
        limit = self.options.param("max-bandwidth")
        if limit:
            ahead = sent / limit - (time.monotonic() - since)
            if ahead > 0:
                self._cancel.wait(ahead)

    # ---- incoming ----------------------------------------------------------------------------------

    def start_incoming(self, uri: str, lookup: FdLookup | None = None) -> None:
        """-incoming URI or migrate-incoming: listen now (errors go to the caller), load in a thread."""
        listener = Listener(uri, lookup)
        self.incoming = True
        self._listening = listener.address()
        self.machine.set_run_state("inmigrate")
        self.started = time.monotonic()
        self._set("setup")
        threading.Thread(target=self._incoming, args=(listener,), name="migration-in", daemon=True).start()

    def _incoming(self, listener: Listener) -> None:
        machine = self.machine
        try:
            limit = sum(size for _, size in _regions(machine)) * 2 + (16 << 20)
            buf = prefaulted(limit + 1)
            channel = listener.accept()
            self._set("active")
            data = read_all(channel.stream, limit + 1, buf)
            channel.close()
            if len(data) > limit:
                raise StreamError(f"migration stream: stream: field 'length': more than {limit} bytes")
            runstate = self._load(read_stream(data))
            _refresh_drives(machine)
            self.transferred = len(data)
        except (OSError, StreamError, BlockError) as err:
            self._set("failed", str(err))
            machine.request_error(f"load of migration failed: {err}")
            return
        self.total_ms = _ms(self.started)
        if runstate != "running":
            machine.set_run_state(runstate)  # a source that was stopped: so is the destination
        elif machine.config.start_paused:
            machine.set_run_state("paused")
        else:
            machine.resume()
            machine.emit_event("RESUME")
        self._set("completed")

    def _load(self, parsed: Any) -> str:
        """Check the stream against this machine completely, then write RAM and load devices; returns the
        source's run state (running when the stream does not say)."""
        regions = _regions(self.machine)
        total = sum(size for _, size in regions)
        if parsed.ram.blocks != {RAM_BLOCK: total}:
            raise StreamError(f"migration stream: section 'ram': field 'ram block length': blocks "
                              f"{parsed.ram.blocks} do not match this machine's {RAM_BLOCK} of {total:#x}")
        devices = _devices(self.machine)
        states = []
        runstate = "running"
        kvm_states, sections = kvm_sections.take_sections(self.machine, parsed.devices())
        for sec in sections:
            if sec.idstr == GLOBALSTATE:
                runstate = GlobalState.decode(sec.payload, sec.version_id).runstate.decode()
                continue
            dev = devices.get(sec.idstr)
            if dev is None:
                raise StreamError(f"migration stream: section '{sec.idstr}': field 'idstr': no such device here")
            state_cls = dev.state_class() if hasattr(dev, "state_class") else type(dev.save())
            states.append((dev, state_cls.decode(sec.payload, sec.version_id, sec.idstr)))
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
        return runstate

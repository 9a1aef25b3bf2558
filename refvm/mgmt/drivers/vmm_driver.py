"""The driver both URIs share (refvm:///, qemu:///): domains kept in memory and on disk, hypervisors run as
processes through QMP. Only the argv (``kind``) differs between refvm and QEMU.

Lifecycle events are derived from QMP events as libvirt's QEMU driver derives them: STOP -> SUSPENDED,
RESUME -> RESUMED, SHUTDOWN -> SHUTDOWN (guest/host), RESET -> REBOOT, and the monitor closing -> STOPPED
(SHUTDOWN after a SHUTDOWN event, FAILED with state reason crashed otherwise, nothing while refvmd itself
destroys the domain).
"""
from __future__ import annotations

import copy
import itertools
import os
import threading
from typing import Any

from refvm.mgmt import vir
from refvm.mgmt.argv import apply_aliases, build_argv
from refvm.mgmt.domain_format import format_domain
from refvm.mgmt.domain_model import Domain
from refvm.mgmt.domain_xml import parse_domain
from refvm.mgmt.drivers.base import DomainRef, EventSink
from refvm.mgmt.drivers.domobj import DomainObj
from refvm.mgmt.errors import (
    VIR_ERR_INTERNAL_ERROR,
    VIR_ERR_OPERATION_UNSUPPORTED,
    VIR_FROM_QEMU,
    VirError,
    internal_error,
    invalid_arg,
    no_domain,
    not_running,
    operation_failed,
)
from refvm.mgmt.qmp_client import QmpClosed, QmpError
from refvm.mgmt.state import StatePaths, StateStore
from refvm.mgmt.taps import open_tap
from refvm.mgmt.vmm import Vmm

Q = VIR_FROM_QEMU


def check_flags(flags: int, allowed: int, func: str) -> None:
    """libvirt's virCheckFlags."""
    if flags & ~allowed:
        raise invalid_arg(f"unsupported flags (0x{flags & ~allowed:x}) in function {func}")


class VmmDriverCore:
    """Domain registry, state files, hypervisor processes and events (the API methods are in VmmDriver)."""

    kind = "refvm"

    def __init__(self, mode: str = "session", state_dir: str | None = None, job_timeout: float = 30.0,
                 autostart: bool = True) -> None:
        if mode not in ("session", "system"):
            raise VirError(5, f"{self.kind}:///{mode}", domain=0)
        self.mode = mode
        self.job_timeout = job_timeout
        self.store = StateStore(StatePaths.for_uri(self.kind, mode, state_dir))
        self.lock = threading.RLock()
        self.domains: dict[str, DomainObj] = {}   # by uuid string
        self.sinks: dict[int, EventSink] = {}
        self._sink_ids = itertools.count(1)
        self._next_id = 1
        self._load()
        if autostart:
            self._autostart()

    # ---- registry ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        for name, xml in self.store.load_configs().items():
            try:
                dom = parse_domain(xml)
            except VirError:
                continue
            if dom.name != name:
                continue
            self.domains[dom.uuid] = DomainObj(dom, autostart=self.store.autostart(name))
        for name, status in self.store.load_statuses().items():
            self._reattach(name, status)

    def _reattach(self, name: str, status: dict[str, Any]) -> None:
        """A domain that ran when refvmd stopped: re-attach through its QMP socket, or mark it crashed."""
        try:
            live = parse_domain(status["xml"])
        except (VirError, KeyError):
            self.store.delete_status(name)
            return
        live.id = int(status.get("id", -1))
        apply_aliases(live)
        obj = self.domains.get(live.uuid)
        if obj is None:
            obj = DomainObj(None)
            self.domains[live.uuid] = obj
        obj.live = live
        obj.state, obj.reason = int(status.get("state", 1)), int(status.get("reason", 0))
        self._next_id = max(self._next_id, live.id + 1)
        try:
            obj.vmm = Vmm.attach(int(status["pid"]), self.store.qmp_path(name), self._on_qmp(obj))
            obj.vmm.ptys = dict(status.get("ptys", {}))
            if status.get("migration") is not None:
                self._recover_migration(obj, str(status["migration"]))
                return
            result = obj.vmm.qmp.execute("query-status")
            if result.get("running"):
                obj.state, obj.reason = vir.VIR_DOMAIN_RUNNING, obj.reason if obj.state == 1 else 0
            elif obj.state == vir.VIR_DOMAIN_RUNNING:
                obj.state, obj.reason = vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_PAUSED_UNKNOWN
        except (OSError, QmpClosed, QmpError, ProcessLookupError, KeyError, ValueError):
            self._mark_stopped(obj, vir.VIR_DOMAIN_SHUTOFF_CRASHED, vir.VIR_DOMAIN_EVENT_STOPPED_FAILED)

    def _recover_migration(self, obj: DomainObj, direction: str) -> None:
        """refvmd stopped in the middle of a migration (libvirt's recovery at daemon start): an incoming guest
        never got its Finish, so it is killed (nothing left behind); an outgoing one is cancelled and runs on."""
        if direction == "in":
            obj.stopping = True
            obj.vmm.terminate(graceful=False)
            self._mark_stopped(obj, vir.VIR_DOMAIN_SHUTOFF_FAILED, vir.VIR_DOMAIN_EVENT_STOPPED_FAILED)
            obj.stopping = False
            return
        qmp = obj.vmm.qmp
        qmp.execute("migrate_cancel")
        obj.state, obj.reason = vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED
        if not qmp.execute("query-status").get("running"):
            try:
                qmp.execute("cont")
            except QmpError:  # the destination took the disks: it may run the guest, so ours stays paused
                obj.state, obj.reason = vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_PAUSED_MIGRATION
        self._save_status(obj)

    def _autostart(self) -> None:
        for obj in list(self.domains.values()):
            if obj.autostart and not obj.active():
                try:
                    with obj.begin_job("autostart", self.job_timeout):
                        self._start(obj, 0)
                except VirError:
                    pass

    def _find(self, ref: DomainRef) -> DomainObj:
        with self.lock:
            obj = self.domains.get(ref.uuid_str)
        if obj is None:
            raise no_domain(f"no domain with matching uuid '{ref.uuid_str}' ({ref.name})")
        return obj

    def _active(self, ref: DomainRef) -> DomainObj:
        obj = self._find(ref)
        if not obj.active():
            raise not_running()
        return obj

    def _new_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id - 1

    # ---- events -----------------------------------------------------------------------------------------

    def _emit(self, obj: DomainObj, event_id: int, event: int = 0, detail: int = 0) -> None:
        ref = obj.ref()
        with self.lock:
            sinks = list(self.sinks.values())
        for sink in sinks:
            try:
                sink(ref, event_id, event, detail)
            except Exception:  # noqa: BLE001 - one broken client must not stop the others' events
                pass

    def _lifecycle(self, obj: DomainObj, event: int, detail: int) -> None:
        self._emit(obj, vir.VIR_DOMAIN_EVENT_ID_LIFECYCLE, event, detail)

    def _on_qmp(self, obj: DomainObj):  # noqa: ANN202 - returns the QMP event callback for this domain
        def handle(event: str | None, data: dict[str, Any]) -> None:
            if event is None:
                threading.Thread(target=self._monitor_eof, args=(obj,), daemon=True).start()
            elif obj.starting or obj.stopping:
                if event == "SHUTDOWN":
                    obj.got_shutdown = True
            elif obj.vmm is None:
                pass  # a late event of a VMM refvmd already stopped (_mark_stopped clears vmm, then stopping)
            elif obj.migration is not None and event in ("STOP", "RESUME"):
                self._migration_event(obj, event)
            elif event == "STOP" and obj.state == vir.VIR_DOMAIN_RUNNING:  # not after SHUTDOWN (-no-shutdown)
                reason = vir.VIR_DOMAIN_PAUSED_USER if obj.paused_by_user else vir.VIR_DOMAIN_PAUSED_UNKNOWN
                self._set_state(obj, vir.VIR_DOMAIN_PAUSED, reason)
                self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_SUSPENDED, vir.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)
            elif event == "RESUME" and obj.state == vir.VIR_DOMAIN_PAUSED:
                self._set_state(obj, vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_UNPAUSED)
                self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_RESUMED, vir.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED)
            elif event == "SHUTDOWN" and obj.got_shutdown:
                pass  # the host's own quit after a guest shutdown: libvirt ignores a repeated SHUTDOWN too
            elif event == "SHUTDOWN":
                obj.got_shutdown = True
                guest = bool(data.get("guest"))
                self._set_state(obj, vir.VIR_DOMAIN_SHUTDOWN, vir.VIR_DOMAIN_SHUTDOWN_UNKNOWN)
                self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_SHUTDOWN, vir.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST if guest
                                else vir.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)
                # -no-shutdown keeps the VMM alive: finish the poweroff, or reboot, as libvirt does
                threading.Thread(target=self._after_guest_shutdown, args=(obj,), daemon=True).start()
            elif event == "RESET":
                self._emit(obj, vir.VIR_DOMAIN_EVENT_ID_REBOOT)
            elif event == "BALLOON_CHANGE" and obj.live is not None and "actual" in data:
                obj.live.current_memory = int(data["actual"]) // 1024
        return handle

    def _migration_event(self, obj: DomainObj, event: str) -> None:
        """STOP/RESUME while migrating: an outgoing guest pauses at the switch-over (SUSPENDED MIGRATED) and
        resumes when the migration fails or is cancelled (RESUMED MIGRATED), as libvirt reports them; an
        incoming one is reported by Finish."""
        if obj.migration.direction != "out":
            return
        if event == "STOP" and obj.state == vir.VIR_DOMAIN_RUNNING:
            self._set_state(obj, vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_PAUSED_MIGRATION)
            self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_SUSPENDED, vir.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED)
        elif event == "RESUME" and obj.state == vir.VIR_DOMAIN_PAUSED:
            self._set_state(obj, vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED)
            self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_RESUMED, vir.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)

    def _after_guest_shutdown(self, obj: DomainObj) -> None:
        if obj.fake_reboot:
            self._fake_reboot(obj)
            return
        vmm = obj.vmm
        if vmm is not None:
            try:
                vmm.qmp.execute("quit", timeout=5)
            except (QmpClosed, QmpError, TimeoutError, OSError):
                vmm.terminate(graceful=False)

    def _fake_reboot(self, obj: DomainObj) -> None:
        """libvirt's fake reboot: the guest powered off after virDomainReboot; reset it and run it again."""
        try:
            with obj.begin_job("fake-reboot", 300.0):
                obj.fake_reboot = False
                vmm = obj.vmm
                if vmm is None:
                    return
                try:
                    vmm.qmp.execute("system_reset")
                    vmm.qmp.execute("cont")
                except (QmpClosed, QmpError, TimeoutError, OSError):
                    vmm.terminate(graceful=False)
                    return
                obj.got_shutdown = False
                self._set_state(obj, vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_BOOTED)
                self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_RESUMED, vir.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED)
        except VirError:
            pass

    def _monitor_eof(self, obj: DomainObj) -> None:
        """The hypervisor's monitor closed: it exited (after a shutdown) or crashed."""
        if obj.stopping or obj.vmm is None:
            return
        try:
            with obj.begin_job("monitor-eof", 300.0):
                if obj.stopping or obj.vmm is None:
                    return
                obj.vmm.wait(5.0)
                if obj.got_shutdown:
                    self._mark_stopped(obj, vir.VIR_DOMAIN_SHUTOFF_SHUTDOWN, vir.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
                else:
                    self._mark_stopped(obj, vir.VIR_DOMAIN_SHUTOFF_CRASHED, vir.VIR_DOMAIN_EVENT_STOPPED_FAILED)
        except VirError:
            pass

    # ---- state changes ----------------------------------------------------------------------------------

    def _set_state(self, obj: DomainObj, state: int, reason: int) -> None:
        obj.state, obj.reason = state, reason
        if obj.live is not None:
            self._save_status(obj)

    def _save_status(self, obj: DomainObj) -> None:
        if obj.live is None or obj.vmm is None:
            return
        self.store.save_status(obj.live.name, {
            "pid": obj.vmm.pid, "id": obj.live.id, "state": obj.state, "reason": obj.reason,
            "xml": format_domain(obj.live, live=True), "ptys": obj.vmm.ptys,
            "migration": obj.migration.direction if obj.migration is not None else None})

    def _mark_stopped(self, obj: DomainObj, reason: int, detail: int) -> None:
        """The hypervisor is gone: the domain is shut off (transient ones disappear), STOPPED is emitted."""
        name, uuid = obj.current.name, obj.current.uuid
        if obj.vmm is not None:
            obj.vmm.qmp.close()
        obj.vmm = None
        obj.state, obj.reason = vir.VIR_DOMAIN_SHUTOFF, reason
        obj.got_shutdown = obj.stopping = obj.paused_by_user = False
        self.store.delete_status(name)
        self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_STOPPED, detail)
        obj.live = None
        if obj.definition is None:
            with self.lock:
                self.domains.pop(uuid, None)

    def _resolve_volumes(self, live: Domain) -> None:
        """<disk type='volume'>: the pool must be active and hold the volume; the disk gets its path and format."""
        from refvm.mgmt.storage.driver import for_paths

        storage = for_paths(self.store.paths.config, self.store.paths.run)
        storage.in_use = self._volume_user
        for disk in live.disks:
            if disk.type == "volume":
                pool, path = storage.vol(disk.source_pool or "", disk.source or "")
                disk.resolved = path
                disk.driver_type = disk.driver_type or storage.info(path).format

    def _volume_user(self, path: str) -> str | None:
        """The running domain whose disk is ``path`` (the storage layer refuses to delete or wipe it)."""
        for obj in list(self.domains.values()):
            if obj.live is not None and any(d.source_path() == path for d in obj.live.disks):
                return obj.live.name
        return None

    def _start(self, obj: DomainObj, flags: int, transient: Domain | None = None, incoming: str | None = None) -> None:
        """Start the hypervisor for ``obj`` (job held): -S, QMP, then cont unless START_PAUSED; with ``incoming``
        it waits for a migration stream instead (paused, reason migration, STARTED MIGRATED)."""
        live = copy.deepcopy(transient or obj.definition)
        assert live is not None
        live.id = self._new_id()
        apply_aliases(live)
        fds: list[int] = []
        try:
            for i, nic in enumerate(live.interfaces):
                fds.append(open_tap(nic, i))
            self._resolve_volumes(live)
            cmd = build_argv(self.kind, live, str(self.store.qmp_path(live.name)), fds, incoming=incoming)
            obj.starting, obj.stopping, obj.got_shutdown = True, False, False
            obj.paused_by_user = bool(flags & vir.VIR_DOMAIN_START_PAUSED)
            try:
                vmm = Vmm.start(cmd, self.store.qmp_path(live.name), self.store.log_path(live.name),
                                self._on_qmp(obj))
            except (OSError, QmpClosed) as err:
                obj.starting = False
                text = (f"process exited while connecting to monitor: {_log_tail(self, live)}"
                        if isinstance(err, QmpClosed) else f"failed to start {cmd.argv[0]}: {err}")
                raise internal_error(text) from None
        finally:
            for fd in fds:
                os.close(fd)
        obj.vmm, obj.live = vmm, live
        for i, dev in enumerate(sorted(live.serials, key=lambda d: d.target_port)):
            if dev.type == "pty":
                dev.path = vmm.ptys.get(f"charserial{i}")
        if live.consoles and live.serials and live.consoles[0].type == "pty":
            live.consoles[0].path = live.serials[0].path
        try:
            if incoming is not None:
                obj.state, obj.reason = vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_PAUSED_MIGRATION
            elif flags & vir.VIR_DOMAIN_START_PAUSED:
                obj.state, obj.reason = vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_PAUSED_USER
            else:
                vmm.qmp.execute("cont")
                obj.state, obj.reason = vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_BOOTED
        except (QmpClosed, QmpError) as err:
            obj.stopping = True
            vmm.terminate(graceful=False)
            obj.vmm, obj.live, obj.starting = None, None, False
            raise internal_error(f"unable to start the guest CPUs: {err}") from None
        obj.starting = False
        self._save_status(obj)
        self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_STARTED, vir.VIR_DOMAIN_EVENT_STARTED_MIGRATED if incoming
                        else vir.VIR_DOMAIN_EVENT_STARTED_BOOTED)
        if flags & vir.VIR_DOMAIN_START_PAUSED and incoming is None:
            self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_SUSPENDED, vir.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)

    def _qmp(self, obj: DomainObj, command: str, args: dict[str, Any] | None = None) -> Any:
        """One monitor command with libvirt's errors for each failure."""
        vmm = obj.vmm
        if vmm is None:
            raise not_running()
        try:
            return vmm.qmp.execute(command, args)
        except QmpError as err:
            if err.klass == "CommandNotFound":
                raise VirError(VIR_ERR_OPERATION_UNSUPPORTED, f"{self.kind} has no QMP command '{command}'",
                               domain=Q) from None
            raise VirError(VIR_ERR_INTERNAL_ERROR, f"unable to execute QEMU command '{command}': {err.desc}",
                           domain=Q) from None
        except QmpClosed:
            raise operation_failed("domain is not running") from None
        except TimeoutError:
            raise VirError(68, f"monitor did not answer '{command}'", domain=Q) from None


def _log_tail(driver: VmmDriverCore, dom: Domain) -> str:
    try:
        lines = driver.store.log_path(dom.name).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"

"""libvirt's migration protocol v3 in the driver: Begin/Perform/Confirm on the source, Prepare/Finish on the
destination, written over QMP only (migrate, migrate-incoming with ``-incoming defer``, query-migrate,
migrate_cancel, migrate-set-parameters), so any VMM that speaks them migrates: QEMU today, refvm as its live
migration lands.

The sequence follows libvirt's QEMU driver: Begin takes the domain's job and returns its live XML; Prepare
starts the destination VMM waiting for the stream and answers the tcp URI it listens on (STARTED MIGRATED);
Perform sets bandwidth and downtime, sends ``migrate`` and polls ``query-migrate`` (the guest pauses at the
switch-over: SUSPENDED MIGRATED); Finish waits for the stream's end and resumes the guest (RESUMED MIGRATED)
or, cancelled, kills it; Confirm kills the source (STOPPED MIGRATED) or, cancelled, resumes it.
A failed Perform restores the source itself, as libvirt's does (the client then skips Confirm).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from refvm.mgmt import vir
from refvm.mgmt.domain_format import format_domain
from refvm.mgmt.domain_xml import parse_domain
from refvm.mgmt.drivers.base import DomainRef
from refvm.mgmt.drivers.domobj import DomainObj
from refvm.mgmt.drivers.migration_job import (
    MIB,
    SPEED_UNLIMITED,
    MigrationJob,
    host_uuid,
    make_cookie,
    parse_cookie,
    tcp_target,
)
from refvm.mgmt.drivers.migration_tunnel import StreamSink, TunnelIn, TunnelOut, socket_path
from refvm.mgmt.drivers.vmm_driver import Q, check_flags
from refvm.mgmt.errors import (
    VIR_ERR_ARGUMENT_UNSUPPORTED,
    VIR_ERR_INTERNAL_ERROR,
    VIR_ERR_OPERATION_ABORTED,
    VIR_ERR_OPERATION_TIMEOUT,
    VIR_ERR_OVERFLOW,
    VirError,
    invalid_arg,
    no_domain,
    not_running,
    operation_failed,
    operation_invalid,
)

#: Flags refvmd's migration accepts (others: virCheckFlags' error); some of them are then refused by name.
MIGRATE_FLAGS = (vir.VIR_MIGRATE_LIVE | vir.VIR_MIGRATE_PEER2PEER | vir.VIR_MIGRATE_TUNNELLED
                 | vir.VIR_MIGRATE_PERSIST_DEST | vir.VIR_MIGRATE_UNDEFINE_SOURCE | vir.VIR_MIGRATE_PAUSED
                 | vir.VIR_MIGRATE_NON_SHARED_DISK | vir.VIR_MIGRATE_NON_SHARED_INC
                 | vir.VIR_MIGRATE_CHANGE_PROTECTION | vir.VIR_MIGRATE_UNSAFE | vir.VIR_MIGRATE_OFFLINE
                 | vir.VIR_MIGRATE_ABORT_ON_ERROR | vir.VIR_MIGRATE_AUTO_CONVERGE)
#: Not yet: each is refused with one line naming virsh's option.
_REFUSED = ((vir.VIR_MIGRATE_NON_SHARED_DISK | vir.VIR_MIGRATE_NON_SHARED_INC,
             "refvmd does not copy storage (--copy-storage-all/--copy-storage-inc): migrate with shared storage"),
            (vir.VIR_MIGRATE_OFFLINE, "refvmd has no offline migration (--offline)"))
#: virDrvFeature: P2P (4), V3 (6), CHANGE_PROTECTION (7), XML_MIGRATABLE (11), PARAMS (13)
MIGRATION_FEATURES = frozenset({4, 6, 7, 11, 13})
#: how often Perform and Finish ask the VMM how the migration goes
POLL_S = 0.05
#: how long Finish waits for the end of the stream once the source said it completed
FINISH_TIMEOUT_S = 60.0


def check_migrate_flags(flags: int, func: str) -> None:
    check_flags(flags, MIGRATE_FLAGS, func)
    if flags & vir.VIR_MIGRATE_TUNNELLED and not flags & vir.VIR_MIGRATE_PEER2PEER:
        # libvirt's client library refuses this (VIR_ERR_INVALID_ARG) before any daemon sees it; a raw
        # client gets the same answer
        raise invalid_arg("cannot perform tunnelled migration without using peer2peer flag")
    for bits, text in _REFUSED:
        if flags & bits:
            raise VirError(VIR_ERR_ARGUMENT_UNSUPPORTED, text, domain=Q)


def migration_host() -> str:
    """The address a destination listens on and hands to the source (refvmd --migration-host)."""
    return os.environ.get("REFVMD_MIGRATION_HOST") or "127.0.0.1"


class MigrationOps:
    """The migration half of VmmDriver (mixed in; uses VmmDriverCore's registry, _start, _qmp, events)."""

    #: QEMU locks its images and must take them only at Finish; refvm takes no image locks (and refuses the
    #: capability it does not implement), so its destination needs nothing here
    late_block_activate = False

    def supports_feature(self, feature: int) -> bool:
        """Migration protocol v3 with parameters, peer-to-peer, change protection, migratable XML."""
        return feature in MIGRATION_FEATURES

    # ---- jobs -------------------------------------------------------------------------------------------

    def _begin_migration(self, obj: DomainObj, direction: str, flags: int) -> MigrationJob:
        """Take the domain's job for the whole migration (a second migration is refused, as libvirt's)."""
        if obj.migration is not None:
            raise operation_invalid(f"another migration job is already running for domain '{obj.name}'")
        if not obj.job.acquire(timeout=self.job_timeout):
            raise VirError(VIR_ERR_OPERATION_TIMEOUT, f"cannot acquire state change lock (held by "
                           f"monitor={obj.job_name})", domain=Q)
        if obj.migration is not None:
            obj.job.release()
            raise operation_invalid(f"another migration job is already running for domain '{obj.name}'")
        obj.job_name = f"migration {direction}"
        obj.migration = MigrationJob(direction, flags)
        self._save_status(obj)  # a refvmd restarted from here on recovers the migration
        return obj.migration

    def _end_migration(self, obj: DomainObj) -> None:
        if obj.migration is None:
            return
        obj.migration = None
        obj.job_name = None
        obj.job.release()
        self._save_status(obj)  # a restarted refvmd must not recover a migration that is over

    def _migrating(self, ref: DomainRef, direction: str) -> DomainObj:
        obj = self._find(ref)
        if obj.migration is None or obj.migration.direction != direction:
            raise operation_invalid(f"domain '{obj.name}' is not being migrated")
        return obj

    def migration_close_callback(self, name: str):  # noqa: ANN201 - a callable for Session.on_close
        """What to do if the client that started this domain's migration step goes away before the next step
        (libvirt's close callbacks): the destination kills its half, the source ends the job; a source that
        already sent everything stays paused, as libvirt leaves it, since the guest may run on the other side."""
        obj = next((o for o in self._all() if o.name == name and o.migration is not None), None)
        job = obj.migration if obj is not None else None

        def client_gone() -> None:
            if obj is None or obj.migration is not job:
                return
            if job.direction == "in":
                self._abandon_incoming(obj)
            elif job.phase != "perform":
                self._end_migration(obj)
        return client_gone

    def _host_uuid(self) -> str:
        if getattr(self, "_host", None) is None:
            self._host = host_uuid(self.store.paths.config)
        return self._host

    # ---- source: Begin, Perform, Confirm ----------------------------------------------------------------

    def migrate_begin(self, dom: DomainRef, xmlin: str | None, flags: int) -> tuple[bytes, str]:
        """Begin3: the live XML to recreate the domain with, and the cookie naming this host."""
        check_migrate_flags(flags, "qemuMigrationSrcBegin")
        obj = self._active(dom)
        if flags & vir.VIR_MIGRATE_CHANGE_PROTECTION:
            self._begin_migration(obj, "out", flags)
        xml = xmlin or format_domain(obj.live, live=True)
        return make_cookie(self._host_uuid(), self.hostname(), name=obj.name, uuid=obj.uuid), xml

    def migrate_perform(self, dom: DomainRef, uri: str | None, flags: int, bandwidth: int = 0,
                        stream: StreamSink | None = None) -> bytes:
        """Perform3: stream the guest to ``uri`` (native), or through ``stream`` to the peer daemon (tunnelled);
        on failure the source runs on, as before."""
        check_migrate_flags(flags, "qemuMigrationSrcPerform")
        if bool(flags & vir.VIR_MIGRATE_TUNNELLED) != (stream is not None):
            raise VirError(VIR_ERR_INTERNAL_ERROR, "tunnelled migration needs the peer's stream", domain=Q)
        obj = self._find(dom)
        job = obj.migration
        if job is None or job.direction != "out":
            if not obj.active():
                raise not_running()
            job = self._begin_migration(obj, "out", flags)
        elif job.phase != "begin":
            raise operation_invalid(f"another migration job is already running for domain '{obj.name}'")
        tunnel = None
        try:
            if stream is not None:
                tunnel = TunnelOut(socket_path(self._run_dir(), f"out-{obj.live.id}"), stream)
                target = tunnel.uri
            elif not uri:
                raise invalid_arg("migration URI is missing: the destination gave none")
            else:
                target = "tcp:{}:{}".format(*tcp_target(uri))
            job.phase = "perform"
            job.was_running = obj.state == vir.VIR_DOMAIN_RUNNING
            speed = bandwidth or obj.migrate_speed or SPEED_UNLIMITED
            self._qmp(obj, "migrate-set-parameters", {"max-bandwidth": min(speed, SPEED_UNLIMITED) * MIB})
            if not flags & vir.VIR_MIGRATE_LIVE and job.was_running:
                self._qmp(obj, "stop")  # offline copy: libvirt pauses first (SUSPENDED MIGRATED)
            self._qmp(obj, "migrate", {"uri": target})
            self._wait_migration(obj, job, "migration out")
            if tunnel is not None:
                tunnel.wait(FINISH_TIMEOUT_S)  # the stream's tail reaches the peer, which confirms it
        except VirError:
            if tunnel is not None:
                tunnel.abort()
            self._restore_source(obj)
            raise
        job.phase = "performed"
        return make_cookie(self._host_uuid(), self.hostname())

    def _wait_migration(self, obj: DomainObj, job: MigrationJob, name: str, timeout: float | None = None) -> None:
        """Poll query-migrate until the stream completed; libvirt's errors for failed and cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                job.stats = self._qmp(obj, "query-migrate") or {}
            except VirError as err:
                raise operation_failed(f"job '{name}' failed: {err.detail}") from None
            status = job.stats.get("status")
            if status == "completed":
                return
            if status == "failed":
                desc = job.stats.get("error-desc")
                raise operation_failed(f"job '{name}' failed: {desc}" if desc else f"job '{name}' unexpectedly failed")
            if status == "cancelled":
                raise VirError(VIR_ERR_OPERATION_ABORTED, f"job '{name}' canceled by client", domain=Q)
            if deadline is not None and time.monotonic() > deadline:
                raise operation_failed(f"job '{name}' did not complete within {timeout:.0f} s")
            time.sleep(POLL_S)

    def _restore_source(self, obj: DomainObj) -> None:
        """The migration failed or was cancelled: the guest runs on here (RESUMED MIGRATED) and the job ends."""
        job = obj.migration
        try:
            if job is not None and job.was_running and obj.vmm is not None:
                status = self._qmp(obj, "query-status")
                if not status.get("running"):
                    self._qmp(obj, "cont")
                self._wait_state(obj, vir.VIR_DOMAIN_RUNNING)
        except VirError:
            pass  # the VMM is gone: its monitor EOF reports the domain as crashed
        finally:
            self._end_migration(obj)

    def migrate_confirm(self, dom: DomainRef, flags: int, cancelled: bool) -> None:
        """Confirm3: the destination runs the guest (kill ours, STOPPED MIGRATED) or it failed (resume ours)."""
        check_flags(flags, MIGRATE_FLAGS, "qemuMigrationSrcConfirm")
        obj = self._migrating(dom, "out")
        if cancelled or obj.migration.phase != "performed":
            self._restore_source(obj)
            return
        if flags & vir.VIR_MIGRATE_UNDEFINE_SOURCE and obj.definition is not None:
            self.store.delete_config(obj.definition.name)  # libvirt sends no UNDEFINED event here
            obj.definition, obj.autostart = None, False
        self._kill_migrated(obj, vir.VIR_DOMAIN_SHUTOFF_MIGRATED, vir.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)

    def _kill_migrated(self, obj: DomainObj, reason: int, detail: int) -> None:
        """Kill the VMM of a migrating domain (shut off with ``reason``, STOPPED ``detail``) and end the job."""
        uuid = obj.uuid
        obj.stopping = True
        try:
            if obj.vmm is not None:
                obj.vmm.terminate(graceful=False)
                self._mark_stopped(obj, reason, detail)
            else:
                self._forget_placeholder(obj, uuid)
        finally:
            obj.stopping = False
            self._end_migration(obj)

    # ---- destination: Prepare, Finish -------------------------------------------------------------------

    def _run_dir(self) -> Path:
        return self.store.paths.run

    def migrate_prepare(self, cookie: bytes, uri_in: str | None, flags: int, dname: str | None, xml: str,
                        listen: str | None = None) -> tuple[bytes, str]:
        """Prepare3: start the VMM with ``-incoming defer`` and listen; returns the cookie and tcp URI."""
        check_migrate_flags(flags, "qemuMigrationDstPrepareDirect")
        if flags & vir.VIR_MIGRATE_TUNNELLED:
            raise VirError(VIR_ERR_INTERNAL_ERROR, "Tunnelled migration requested but invalid RPC method called",
                           domain=Q)
        host, port = tcp_target(uri_in) if uri_in else (listen or migration_host(), 0)
        obj = self._incoming(cookie, flags, dname, xml)
        try:
            self._qmp(obj, "migrate-incoming", {"uri": f"tcp:{host}:{port}"})
            if port == 0:
                port = _listening_port(self._qmp(obj, "query-migrate"))
            obj.migration.phase = "prepared"
        except VirError:
            self._abandon_incoming(obj)
            raise
        advertised = migration_host() if host in ("0.0.0.0", "::", "[::]") else host
        return make_cookie(self._host_uuid(), self.hostname()), f"tcp:{advertised}:{port}"

    def migrate_prepare_tunnel(self, cookie: bytes, flags: int, dname: str | None, xml: str) -> tuple[bytes, TunnelIn]:
        """PrepareTunnel3: the VMM waits on a unix socket of this daemon's, which the stream's packets feed."""
        check_migrate_flags(flags, "qemuMigrationDstPrepareTunnel")
        obj = self._incoming(cookie, flags, dname, xml)
        try:
            path = socket_path(self._run_dir(), f"in-{obj.live.id}")
            self._qmp(obj, "migrate-incoming", {"uri": f"unix:{path}"})
            sink = TunnelIn(path)
            obj.migration.phase = "prepared"
        except VirError:
            self._abandon_incoming(obj)
            raise
        return make_cookie(self._host_uuid(), self.hostname()), sink

    def _incoming(self, cookie: bytes, flags: int, dname: str | None, xml: str) -> DomainObj:
        """Both Prepares: the domain's VMM started with ``-incoming defer`` under an incoming migration job."""
        peer = parse_cookie(cookie)
        if peer.get("host") == self._host_uuid():
            raise VirError(VIR_ERR_INTERNAL_ERROR, f"Attempt to migrate guest to the same host {peer['host']}",
                           domain=Q)
        dom = self._parse(xml, False)
        if dname:
            dom.name = dname
        with self.lock:
            obj = self._claim(dom, live=True)
            if obj is None:
                obj = DomainObj(None)
                obj.live = dom  # placeholder: the name is taken while the VMM starts
                self.domains[dom.uuid] = obj
        try:
            self._begin_migration(obj, "in", flags)
        except VirError:
            self._forget_placeholder(obj, dom.uuid)
            raise
        try:
            obj.live = None
            self._start(obj, 0, transient=dom, incoming="defer")
            if self.late_block_activate:
                # as libvirt: the destination takes the disks only at Finish's cont, so a half-migrated guest
                # never locks the shared images away from a source that has to run on
                self._qmp(obj, "migrate-set-capabilities",
                          {"capabilities": [{"capability": "late-block-activate", "state": True}]})
        except VirError:
            self._abandon_incoming(obj)
            raise
        return obj

    def _forget_placeholder(self, obj: DomainObj, uuid: str) -> None:
        if obj.definition is None and obj.vmm is None:
            with self.lock:
                self.domains.pop(uuid, None)
        obj.live = None if obj.vmm is None else obj.live

    def _abandon_incoming(self, obj: DomainObj) -> None:
        """Nothing is left behind on the destination: kill the VMM (STOPPED FAILED), drop a transient domain."""
        self._kill_migrated(obj, vir.VIR_DOMAIN_SHUTOFF_FAILED, vir.VIR_DOMAIN_EVENT_STOPPED_FAILED)

    def migrate_finish(self, dname: str, flags: int, cancelled: bool) -> DomainRef:
        """Finish3: once the stream is in, resume the guest (RESUMED MIGRATED); cancelled, kill it."""
        check_flags(flags, MIGRATE_FLAGS, "qemuMigrationDstFinish")
        obj = next((o for o in self._all() if o.name == dname and o.migration is not None
                    and o.migration.direction == "in"), None)
        if obj is None:
            raise no_domain(f"no domain with matching name '{dname}'")
        if cancelled:
            self._abandon_incoming(obj)
            raise operation_failed(f"migration of domain '{dname}' was cancelled")
        try:
            self._wait_migration(obj, obj.migration, "migration in", FINISH_TIMEOUT_S)
            if flags & vir.VIR_MIGRATE_PERSIST_DEST:
                self._persist(obj)
            if not flags & vir.VIR_MIGRATE_PAUSED:
                self._qmp(obj, "cont")
        except VirError:
            self._abandon_incoming(obj)
            raise
        if flags & vir.VIR_MIGRATE_PAUSED:  # --suspend: left paused as if the user paused it
            obj.paused_by_user = True
            self._set_state(obj, vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_PAUSED_USER)
            self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_SUSPENDED, vir.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)
        else:
            self._set_state(obj, vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_RUNNING_MIGRATED)
            self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_RESUMED, vir.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
        self._end_migration(obj)
        return obj.ref()

    def _persist(self, obj: DomainObj) -> None:
        """--persistent: the migrated domain becomes defined here (DEFINED ADDED, or UPDATED over a definition)."""
        definition = parse_domain(format_domain(obj.live))
        updated = obj.definition is not None
        self.store.save_config(definition.name, format_domain(definition))
        obj.definition = definition
        self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_DEFINED, vir.VIR_DOMAIN_EVENT_DEFINED_UPDATED if updated
                        else vir.VIR_DOMAIN_EVENT_DEFINED_ADDED)

    # ---- while it runs: job info, abort, speed and downtime ---------------------------------------------

    def job_info(self, dom: DomainRef) -> tuple[int, int, int, int, int]:
        """(type, elapsed ms, memory total, processed, remaining); type NONE when no job runs."""
        obj = self._find(dom)
        job = obj.migration
        if job is None:
            return vir.VIR_DOMAIN_JOB_NONE, 0, 0, 0, 0
        return job.job_info()

    def abort_job(self, dom: DomainRef) -> None:
        obj = self._active(dom)
        job = obj.migration
        if job is None:
            raise operation_invalid("no job is active on the domain")
        if job.direction == "in":
            raise operation_invalid("cannot abort incoming migration; use virDomainDestroy instead")
        if job.phase != "perform":
            raise operation_invalid(f"migration of domain '{obj.name}' is not running: nothing to abort")
        self._qmp(obj, "migrate_cancel")

    def migrate_set_max_downtime(self, dom: DomainRef, downtime_ms: int, flags: int) -> None:
        check_flags(flags, 0, "qemuDomainMigrateSetMaxDowntime")
        obj = self._active(dom)
        if downtime_ms <= 0 or downtime_ms > 2000000:
            raise invalid_arg(f"migrate max downtime {downtime_ms} ms is out of range (1..2000000)")
        self._qmp(obj, "migrate-set-parameters", {"downtime-limit": downtime_ms})

    def migrate_set_max_speed(self, dom: DomainRef, mib_s: int, flags: int) -> None:
        check_flags(flags, 0, "qemuDomainMigrateSetMaxSpeed")
        obj = self._find(dom)
        if mib_s > SPEED_UNLIMITED:
            raise VirError(VIR_ERR_OVERFLOW, f"bandwidth must be less than {SPEED_UNLIMITED + 1}", domain=Q)
        if obj.active():
            self._qmp(obj, "migrate-set-parameters", {"max-bandwidth": mib_s * MIB})
        obj.migrate_speed = mib_s

    def migrate_get_max_speed(self, dom: DomainRef, flags: int) -> int:
        check_flags(flags, 0, "qemuDomainMigrateGetMaxSpeed")
        speed = self._find(dom).migrate_speed
        return SPEED_UNLIMITED if speed is None else speed



def _listening_port(answer: Any) -> int:
    """The port QEMU bound for 'tcp:HOST:0' (query-migrate's socket-address on the destination)."""
    try:
        return int(answer["socket-address"][0]["port"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise VirError(VIR_ERR_INTERNAL_ERROR, "the hypervisor did not say which port it listens on for "
                       "the migration", domain=Q) from None


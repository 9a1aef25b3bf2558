"""The ``Driver`` API on top of ``VmmDriverCore``: each libvirt call, with libvirt's QEMU-driver checks/errors."""
from __future__ import annotations

import fcntl
import os
import socket
import time

from refvm.mgmt import deviations, vir
from refvm.mgmt.domain_format import format_domain
from refvm.mgmt.domain_xml import parse_domain
from refvm.mgmt.drivers.base import (
    DomainInfo,
    DomainRef,
    Driver,
    EventSink,
    NodeInfo,
)
from refvm.mgmt.drivers.domobj import DomainObj
from refvm.mgmt.drivers.migration import MigrationOps
from refvm.mgmt.drivers.vmm_api_devices import DeviceOps
from refvm.mgmt.drivers.vmm_driver import Q, VmmDriverCore, check_flags
from refvm.mgmt.errors import (
    VIR_FROM_DOMAIN,
    VirError,
    invalid_arg,
    no_domain,
    not_running,
    operation_failed,
    operation_invalid,
)

LIST_FILTERS = vir.VIR_CONNECT_LIST_DOMAINS_ALL_FLAGS
# AUTODESTROY (destroy when the client's connection closes) is not offered: refvmd would have to tie domains
# to connections; BYPASS_CACHE and FORCE_BOOT only concern managed save, which refvmd has none of.
START_FLAGS = vir.VIR_DOMAIN_START_PAUSED | vir.VIR_DOMAIN_START_VALIDATE | vir.VIR_DOMAIN_START_BYPASS_CACHE \
    | vir.VIR_DOMAIN_START_FORCE_BOOT
UNDEFINE_FLAGS = (vir.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | vir.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                  | vir.VIR_DOMAIN_UNDEFINE_NVRAM | vir.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
                  | vir.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)


class VmmDriver(DeviceOps, MigrationOps, VmmDriverCore, Driver):
    """refvm:/// and qemu:/// (subclasses set ``kind``, ``type_name`` and the version)."""

    # ---- connection -------------------------------------------------------------------------------------

    def uri(self) -> str:
        return f"{self.kind}:///{self.mode}"

    def hostname(self) -> str:
        return socket.gethostname()

    def node_info(self) -> NodeInfo:
        cpus = os.cpu_count() or 1
        mem_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        mhz = 0
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("cpu MHz"):
                        mhz = int(float(line.split(":")[1]))
                        break
        except (OSError, ValueError):
            pass
        return NodeInfo("x86_64", mem_kib, cpus, mhz, 1, 1, cpus, 1)

    def max_vcpus(self, type_: str | None) -> int:
        """KVM's own limit (as libvirt asks /dev/kvm); QEMU's TCG limit for its 'qemu' type."""
        if self.kind == "qemu" and type_ in (None, "qemu"):
            return 255
        return kvm_max_vcpus()

    def capabilities_xml(self) -> str:
        info = self.node_info()
        domains = "".join(f"      <domain type='{t}'/>\n" for t in self._virt_types())
        return (
            "<capabilities>\n\n  <host>\n    <cpu>\n      <arch>x86_64</arch>\n"
            f"      <topology sockets='1' dies='1' cores='{info.cpus}' threads='1'/>\n    </cpu>\n"
            "    <power_management/>\n    <iommu support='no'/>\n  </host>\n\n"
            "  <guest>\n    <os_type>hvm</os_type>\n    <arch name='x86_64'>\n      <wordsize>64</wordsize>\n"
            f"      <emulator>{self._emulator()}</emulator>\n      <machine maxCpus='{self.max_vcpus(None)}'>pc"
            "</machine>\n" + domains + "    </arch>\n    <features>\n      <acpi default='on' toggle='yes'/>\n"
            "      <apic default='on' toggle='no'/>\n    </features>\n  </guest>\n\n</capabilities>\n")

    def _virt_types(self) -> tuple[str, ...]:
        return ("kvm",) if self.kind == "refvm" else ("qemu", "kvm")

    def _emulator(self) -> str:
        return "python3 -m refvm" if self.kind == "refvm" else "/usr/bin/qemu-system-x86_64"

    def close(self) -> None:
        """Detach from every hypervisor; they keep running and a later refvmd re-attaches."""
        with self.lock:
            objs = list(self.domains.values())
        for obj in objs:
            if obj.vmm is not None:
                obj.stopping = True
                obj.vmm.qmp.close()

    def add_event_sink(self, sink: EventSink) -> int:
        with self.lock:
            handle = next(self._sink_ids)
            self.sinks[handle] = sink
            return handle

    def remove_event_sink(self, handle: int) -> None:
        with self.lock:
            if self.sinks.pop(handle, None) is None:
                raise invalid_arg(f"callback ID {handle} not registered")

    # ---- lookup -----------------------------------------------------------------------------------------

    def _all(self) -> list[DomainObj]:
        with self.lock:
            return list(self.domains.values())

    def lookup_by_name(self, name: str) -> DomainRef:
        for obj in self._all():
            if obj.name == name:
                return obj.ref()
        raise no_domain(f"no domain with matching name '{name}'")

    def lookup_by_uuid(self, uuid: bytes) -> DomainRef:
        ref = DomainRef("", uuid, -1)
        with self.lock:
            obj = self.domains.get(ref.uuid_str)
        if obj is None:
            raise no_domain(f"no domain with matching uuid '{ref.uuid_str}'")
        return obj.ref()

    def lookup_by_id(self, id_: int) -> DomainRef:
        for obj in self._all():
            if obj.live is not None and obj.live.id == id_:
                return obj.ref()
        raise no_domain(f"no domain with matching id {id_}")

    def list_all(self, flags: int = 0) -> list[DomainRef]:
        check_flags(flags, LIST_FILTERS, "virConnectListAllDomains")
        out = []
        for obj in self._all():
            if _matches(obj, flags):
                out.append(obj.ref())
        return sorted(out, key=lambda r: (r.id < 0, r.id, r.name))

    # ---- definition -------------------------------------------------------------------------------------

    def _parse(self, xml: str, validate: bool) -> object:
        dom = parse_domain(xml, validate=validate)
        if dom.type not in self._virt_types():
            raise VirError(67, f"Emulator '{self._emulator()}' does not support virt type '{dom.type}'", domain=Q)
        return dom

    def _claim(self, dom, live: bool) -> DomainObj | None:  # noqa: ANN001
        """libvirt's virDomainObjListAdd checks: the same name must have the same UUID and vice versa."""
        for obj in self._all():
            if obj.uuid == dom.uuid and obj.name != dom.name:
                raise operation_failed(f"domain '{obj.name}' is already defined with uuid {obj.uuid}",
                                       domain=VIR_FROM_DOMAIN)
            if obj.name == dom.name and obj.uuid != dom.uuid:
                raise operation_failed(f"domain '{obj.name}' already exists with uuid {obj.uuid}",
                                       domain=VIR_FROM_DOMAIN)
            if obj.uuid == dom.uuid:
                if live and obj.active():
                    raise operation_invalid(f"domain '{obj.name}' is already active")
                return obj
        return None

    def define_xml(self, xml: str, flags: int = 0) -> DomainRef:
        check_flags(flags, vir.VIR_DOMAIN_DEFINE_VALIDATE, "qemuDomainDefineXMLFlags")
        dom = self._parse(xml, bool(flags & vir.VIR_DOMAIN_DEFINE_VALIDATE))
        with self.lock:
            obj = self._claim(dom, live=False)
            updated = obj is not None and obj.definition is not None
            if obj is None:
                obj = DomainObj(dom)
                self.domains[dom.uuid] = obj
            else:
                obj.definition = dom
            self.store.save_config(dom.name, format_domain(dom))
        self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_DEFINED, vir.VIR_DOMAIN_EVENT_DEFINED_UPDATED if updated
                        else vir.VIR_DOMAIN_EVENT_DEFINED_ADDED)
        return obj.ref()

    def undefine(self, dom: DomainRef, flags: int = 0) -> None:
        check_flags(flags, UNDEFINE_FLAGS, "qemuDomainUndefineFlags")
        obj = self._find(dom)
        with obj.begin_job("undefine", self.job_timeout):
            if obj.definition is None:
                raise operation_invalid("cannot undefine transient domain")
            uuid = obj.uuid
            self.store.delete_config(obj.definition.name)
            if not deviations.active("no-undefined-event"):
                self._lifecycle(obj, vir.VIR_DOMAIN_EVENT_UNDEFINED, vir.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED)
            obj.definition, obj.autostart = None, False
            if not obj.active():
                with self.lock:
                    self.domains.pop(uuid, None)

    def xml_desc(self, dom: DomainRef, flags: int = 0) -> str:
        check_flags(flags, vir.VIR_DOMAIN_XML_SECURE | vir.VIR_DOMAIN_XML_INACTIVE | vir.VIR_DOMAIN_XML_UPDATE_CPU
                    | vir.VIR_DOMAIN_XML_MIGRATABLE, "qemuDomainGetXMLDesc")
        obj = self._find(dom)
        if obj.live is not None and not (flags & vir.VIR_DOMAIN_XML_INACTIVE and obj.definition is not None):
            return format_domain(obj.live, live=True)
        return format_domain(obj.definition or obj.current)

    # ---- lifecycle --------------------------------------------------------------------------------------

    def create_xml(self, xml: str, flags: int = 0) -> DomainRef:
        check_flags(flags, START_FLAGS, "qemuDomainCreateXML")
        dom = self._parse(xml, bool(flags & vir.VIR_DOMAIN_START_VALIDATE))
        with self.lock:
            obj = self._claim(dom, live=True)
            if obj is None:
                obj = DomainObj(None)
                obj.live = dom  # placeholder so that the name is taken while the hypervisor starts
                self.domains[dom.uuid] = obj
        try:
            with obj.begin_job("create", self.job_timeout):
                obj.live = None
                self._start(obj, flags, transient=dom)
        except VirError:
            if obj.definition is None and obj.live is None:
                with self.lock:
                    self.domains.pop(dom.uuid, None)
            raise
        return obj.ref()

    def create(self, dom: DomainRef, flags: int = 0) -> DomainRef:
        check_flags(flags, START_FLAGS, "qemuDomainCreateWithFlags")
        obj = self._find(dom)
        with obj.begin_job("create", self.job_timeout):
            if obj.active():
                raise operation_invalid("domain is already running")
            self._start(obj, flags)
        return obj.ref()

    def suspend(self, dom: DomainRef) -> None:
        obj = self._active(dom)
        job = obj.migration
        if job is not None and job.direction == "out" and job.phase == "perform":
            # libvirt lets suspend run inside an outgoing migration's job (virsh migrate --timeout calls it):
            # the pre-copy then converges; reported as SUSPENDED MIGRATED, paused/migration
            self._qmp(obj, "stop")
            self._wait_state(obj, vir.VIR_DOMAIN_PAUSED)
            return
        with obj.begin_job("suspend", self.job_timeout):
            self._require_active(obj)
            if obj.state != vir.VIR_DOMAIN_PAUSED:
                obj.paused_by_user = True
                self._qmp(obj, "stop")
                self._wait_state(obj, vir.VIR_DOMAIN_PAUSED)

    def resume(self, dom: DomainRef) -> None:
        obj = self._active(dom)
        with obj.begin_job("resume", self.job_timeout):
            self._require_active(obj)
            if obj.state == vir.VIR_DOMAIN_PAUSED:
                obj.paused_by_user = False
                self._qmp(obj, "cont")
                self._wait_state(obj, vir.VIR_DOMAIN_RUNNING)

    def _wait_state(self, obj: DomainObj, state: int, timeout: float = 5.0) -> None:
        """QMP replies before its event: wait until the event handler moved the state (events stay ordered)."""
        deadline = time.monotonic() + timeout
        while obj.state != state and obj.active() and time.monotonic() < deadline:
            time.sleep(0.002)

    def _require_active(self, obj: DomainObj) -> None:
        if not obj.active():
            raise not_running()

    def shutdown(self, dom: DomainRef, flags: int = 0) -> None:
        check_flags(flags, vir.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN, "qemuDomainShutdownFlags")
        obj = self._active(dom)
        with obj.begin_job("shutdown", self.job_timeout):
            self._require_active(obj)
            self._qmp(obj, "system_powerdown")

    def reboot(self, dom: DomainRef, flags: int = 0) -> None:
        """The ACPI power button with libvirt's 'fake reboot': when the guest has powered off, reset and cont."""
        check_flags(flags, vir.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN, "qemuDomainReboot")
        obj = self._active(dom)
        with obj.begin_job("reboot", self.job_timeout):
            self._require_active(obj)
            obj.fake_reboot = True
            try:
                self._qmp(obj, "system_powerdown")
            except VirError:
                obj.fake_reboot = False
                raise

    def reset(self, dom: DomainRef, flags: int = 0) -> None:
        check_flags(flags, 0, "qemuDomainReset")
        obj = self._active(dom)
        with obj.begin_job("reset", self.job_timeout):
            self._require_active(obj)
            self._qmp(obj, "system_reset")

    def destroy(self, dom: DomainRef, flags: int = 0) -> None:
        check_flags(flags, vir.VIR_DOMAIN_DESTROY_GRACEFUL, "qemuDomainDestroyFlags")
        obj = self._active(dom)
        obj.stopping = True  # before the job: a monitor EOF racing with us is ours, not a crash
        try:
            with obj.begin_job("destroy", self.job_timeout):
                if obj.vmm is None or not obj.active():
                    raise not_running()
                if not obj.vmm.terminate(graceful=bool(flags & vir.VIR_DOMAIN_DESTROY_GRACEFUL)):
                    raise operation_failed("failed to kill qemu process with SIGTERM")
                self._mark_stopped(obj, vir.VIR_DOMAIN_SHUTOFF_DESTROYED, vir.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)
        finally:
            obj.stopping = False

    # ---- state ------------------------------------------------------------------------------------------

    def info(self, dom: DomainRef) -> DomainInfo:
        obj = self._find(dom)
        cur = obj.current
        cpu_time = _cpu_time_ns(obj.vmm.pid) if obj.vmm is not None else 0
        return DomainInfo(obj.state, cur.max_memory or cur.memory, cur.current_memory, cur.vcpus, cpu_time)

    def state(self, dom: DomainRef) -> tuple[int, int]:
        obj = self._find(dom)
        return obj.state, obj.reason

    def is_active(self, dom: DomainRef) -> bool:
        return self._find(dom).active()

    def is_persistent(self, dom: DomainRef) -> bool:
        return self._find(dom).definition is not None

    def get_autostart(self, dom: DomainRef) -> bool:
        return self._find(dom).autostart

    def set_autostart(self, dom: DomainRef, autostart: bool) -> None:
        obj = self._find(dom)
        if obj.definition is None:
            raise operation_invalid("cannot set autostart for transient domain")
        self.store.set_autostart(obj.definition.name, autostart)
        obj.autostart = autostart


def _matches(obj: DomainObj, flags: int) -> bool:
    """virConnectListAllDomains' filter groups: within a group any flag matches, every group must match."""
    f = flags

    def group(bits: tuple[tuple[int, bool], ...]) -> bool:
        wanted = [ok for bit, ok in bits if f & bit]
        return not wanted or any(wanted)

    active, persistent = obj.active(), obj.definition is not None
    state = obj.state
    other = state not in (vir.VIR_DOMAIN_RUNNING, vir.VIR_DOMAIN_PAUSED, vir.VIR_DOMAIN_SHUTOFF)
    return (group(((vir.VIR_CONNECT_LIST_DOMAINS_ACTIVE, active), (vir.VIR_CONNECT_LIST_DOMAINS_INACTIVE, not active)))
            and group(((vir.VIR_CONNECT_LIST_DOMAINS_PERSISTENT, persistent),
                       (vir.VIR_CONNECT_LIST_DOMAINS_TRANSIENT, not persistent)))
            and group(((vir.VIR_CONNECT_LIST_DOMAINS_RUNNING, state == vir.VIR_DOMAIN_RUNNING),
                       (vir.VIR_CONNECT_LIST_DOMAINS_PAUSED, state == vir.VIR_DOMAIN_PAUSED),
                       (vir.VIR_CONNECT_LIST_DOMAINS_SHUTOFF, state == vir.VIR_DOMAIN_SHUTOFF),
                       (vir.VIR_CONNECT_LIST_DOMAINS_OTHER, other)))
            and group(((vir.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE, False),
                       (vir.VIR_CONNECT_LIST_DOMAINS_NO_MANAGEDSAVE, True)))
            and (deviations.active("list-ignores-autostart")
                 or group(((vir.VIR_CONNECT_LIST_DOMAINS_AUTOSTART, obj.autostart),
                           (vir.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART, not obj.autostart))))
            and group(((vir.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT, False),
                       (vir.VIR_CONNECT_LIST_DOMAINS_NO_SNAPSHOT, True)))
            and group(((vir.VIR_CONNECT_LIST_DOMAINS_HAS_CHECKPOINT, False),
                       (vir.VIR_CONNECT_LIST_DOMAINS_NO_CHECKPOINT, True))))


def kvm_max_vcpus() -> int:
    """KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS), else KVM_CAP_NR_VCPUS, else 4 (KVM's documented default)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return 4
    try:
        for cap in (66, 9):  # KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS
            value = fcntl.ioctl(fd, 0xAE03, cap)  # KVM_CHECK_EXTENSION
            if value > 0:
                return value
        return 4
    except OSError:
        return 4
    finally:
        os.close(fd)


def _cpu_time_ns(pid: int) -> int:
    """utime + stime of the hypervisor process, as libvirt reads /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0


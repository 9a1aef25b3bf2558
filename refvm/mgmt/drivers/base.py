"""The hypervisor-driver interface that refvmd's RPC dispatch calls (one method per libvirt API it serves).

A driver serves one URI (``refvm:///session``, ``qemu:///session``, ...) and owns that URI's state directory.
The daemon keeps one driver instance per URI and shares it between all client connections that opened it.

Conventions, so that the dispatch can forward calls without knowing the driver:
- Every failure is a ``refvm.mgmt.errors.VirError`` carrying libvirt's code, domain, message and level; the
  dispatch sends it unchanged as the RPC error reply. Anything else escaping a driver is a bug in refvmd.
- Domains are passed in and returned as ``DomainRef`` (libvirt's remote_nonnull_domain: name, uuid, id).
  Drivers look the domain up by UUID first (as libvirt's QEMU driver does) and raise VIR_ERR_NO_DOMAIN when
  it is gone.
- ``flags`` are libvirt's flag words, unchanged (``refvm.mgmt.vir`` names them); a flag a driver does not know
  gives VIR_ERR_INVALID_ARG ("unsupported flags (0x..) in function ...") as libvirt's virCheckFlags does.
- Methods block (they may talk QMP to a hypervisor); each is safe to call from any thread. Operations on one
  domain are serialised by the driver (libvirt's job model); a caller that waits too long gets
  VIR_ERR_OPERATION_TIMEOUT ("cannot acquire state change lock ...").
- Event sinks are called from a driver thread; they must not block and must not call back into the driver.
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DomainRef:
    """A domain as the RPC layer names it: libvirt's remote_nonnull_domain (id is -1 while inactive)."""

    name: str
    uuid: bytes
    id: int = -1

    def __post_init__(self) -> None:
        if len(self.uuid) != 16:
            raise ValueError(f"uuid must be 16 bytes, got {len(self.uuid)}")

    @property
    def uuid_str(self) -> str:
        """The UUID in libvirt's textual form (8-4-4-4-12 lower-case hex)."""
        h = self.uuid.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class NodeInfo:
    """virNodeInfo: what ``virsh nodeinfo`` prints (memory in KiB, mhz of one CPU)."""

    model: str
    memory: int
    cpus: int
    mhz: int
    nodes: int
    sockets: int
    cores: int
    threads: int


@dataclass(frozen=True)
class DomainInfo:
    """virDomainInfo: state, max and current memory (KiB), vCPU count and CPU time used (ns)."""

    state: int
    max_mem: int
    memory: int
    nr_virt_cpu: int
    cpu_time: int


@dataclass(frozen=True)
class BlockStats:
    """virDomainBlockStats: requests and bytes read and written, errors (-1 where unknown, as libvirt)."""

    rd_req: int
    rd_bytes: int
    wr_req: int
    wr_bytes: int
    errs: int = -1


@dataclass(frozen=True)
class InterfaceStats:
    """virDomainInterfaceStats of a tap, seen from the guest (the host's rx is the guest's tx, as libvirt)."""

    rx_bytes: int
    rx_packets: int
    rx_errs: int
    rx_drop: int
    tx_bytes: int
    tx_packets: int
    tx_errs: int
    tx_drop: int


# callback(domain, event_id, event, detail): event_id is VIR_DOMAIN_EVENT_ID_LIFECYCLE (event and detail are
# virDomainEventType and its detail code) or VIR_DOMAIN_EVENT_ID_REBOOT (event and detail are 0).
EventSink = Callable[[DomainRef, int, int, int], None]


class Driver(abc.ABC):
    """One hypervisor driver serving one URI. See the module docstring for the conventions."""

    #: virConnectGetType's answer ("QEMU" for both refvm's qemu and libvirt's QEMU driver, "REFVM" for refvm)
    type_name: str = ""

    # ---- connection -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def uri(self) -> str:
        """The canonical URI this driver serves (virConnectGetURI), e.g. ``refvm:///session``."""

    @abc.abstractmethod
    def version(self) -> int:
        """The hypervisor's version as libvirt encodes it: major * 1,000,000 + minor * 1,000 + micro."""

    @abc.abstractmethod
    def hostname(self) -> str:
        """virConnectGetHostname: this host's name."""

    @abc.abstractmethod
    def capabilities_xml(self) -> str:
        """virConnectGetCapabilities: the <capabilities> document (host cpu arch, guest os type hvm, x86_64)."""

    @abc.abstractmethod
    def node_info(self) -> NodeInfo:
        """virNodeGetInfo."""

    @abc.abstractmethod
    def max_vcpus(self, type_: str | None) -> int:
        """virConnectGetMaxVcpus for the given domain type (None, "kvm", ...)."""

    def supports_feature(self, feature: int) -> bool:
        """virConnectSupportsFeature for driver features (the RPC layer answers its own, such as keepalive)."""
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching hypervisors (the daemon is exiting). Running domains keep running, as with libvirtd."""

    # ---- events -----------------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_event_sink(self, sink: EventSink) -> int:
        """Call ``sink`` for every lifecycle and reboot event of every domain; returns a handle."""

    @abc.abstractmethod
    def remove_event_sink(self, handle: int) -> None:
        """Stop calling the sink registered under ``handle`` (unknown handles: VIR_ERR_INVALID_ARG)."""

    # ---- lookup and listing -----------------------------------------------------------------------------

    @abc.abstractmethod
    def lookup_by_name(self, name: str) -> DomainRef:
        """virDomainLookupByName; VIR_ERR_NO_DOMAIN "no domain with matching name 'NAME'"."""

    @abc.abstractmethod
    def lookup_by_uuid(self, uuid: bytes) -> DomainRef:
        """virDomainLookupByUUID; VIR_ERR_NO_DOMAIN "no domain with matching uuid 'UUID'"."""

    @abc.abstractmethod
    def lookup_by_id(self, id_: int) -> DomainRef:
        """virDomainLookupByID (running domains only); VIR_ERR_NO_DOMAIN "no domain with matching id N"."""

    @abc.abstractmethod
    def list_all(self, flags: int = 0) -> list[DomainRef]:
        """virConnectListAllDomains with the VIR_CONNECT_LIST_DOMAINS_* filter flags (0: all domains).

        The legacy calls (ListDomains, NumOfDomains, ListDefinedDomains, NumOfDefinedDomains) are this with
        ACTIVE or INACTIVE.
        """

    # ---- definition -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def define_xml(self, xml: str, flags: int = 0) -> DomainRef:
        """virDomainDefineXMLFlags: make a domain persistent (new or updated); emits DEFINED ADDED|UPDATED."""

    @abc.abstractmethod
    def undefine(self, dom: DomainRef, flags: int = 0) -> None:
        """virDomainUndefineFlags: a running domain becomes transient; emits UNDEFINED REMOVED."""

    @abc.abstractmethod
    def xml_desc(self, dom: DomainRef, flags: int = 0) -> str:
        """virDomainGetXMLDesc: live XML (with ids, ptys, aliases) or, with XML_INACTIVE, the persistent one."""

    # ---- lifecycle --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def create_xml(self, xml: str, flags: int = 0) -> DomainRef:
        """virDomainCreateXML: start a transient domain; emits STARTED BOOTED (and SUSPENDED PAUSED with
        START_PAUSED). START_AUTODESTROY is refused (VIR_ERR_INVALID_ARG, unsupported flags)."""

    @abc.abstractmethod
    def create(self, dom: DomainRef, flags: int = 0) -> DomainRef:
        """virDomainCreateWithFlags: start a defined domain; returns it with its new id."""

    @abc.abstractmethod
    def suspend(self, dom: DomainRef) -> None:
        """virDomainSuspend (QMP stop): emits SUSPENDED PAUSED."""

    @abc.abstractmethod
    def resume(self, dom: DomainRef) -> None:
        """virDomainResume (QMP cont): emits RESUMED UNPAUSED."""

    @abc.abstractmethod
    def shutdown(self, dom: DomainRef, flags: int = 0) -> None:
        """virDomainShutdownFlags: ask the guest (ACPI power button, QMP system_powerdown); returns at once. When
        the guest powers off: SHUTDOWN GUEST, then STOPPED SHUTDOWN, state shut off with reason shutdown."""

    @abc.abstractmethod
    def reboot(self, dom: DomainRef, flags: int = 0) -> None:
        """virDomainReboot, libvirt's fake reboot: the ACPI power button; once the guest has powered off, the
        driver resets it and lets it run again (events SHUTDOWN GUEST, REBOOT, RESUMED UNPAUSED). A guest that
        ignores the button is not rebooted, as with libvirt."""

    @abc.abstractmethod
    def reset(self, dom: DomainRef, flags: int = 0) -> None:
        """virDomainReset (QMP system_reset): emits REBOOT."""

    @abc.abstractmethod
    def destroy(self, dom: DomainRef, flags: int = 0) -> None:
        """virDomainDestroyFlags: SIGTERM, then SIGKILL unless DESTROY_GRACEFUL; emits STOPPED DESTROYED."""

    # ---- state ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def info(self, dom: DomainRef) -> DomainInfo:
        """virDomainGetInfo."""

    @abc.abstractmethod
    def state(self, dom: DomainRef) -> tuple[int, int]:
        """virDomainGetState: (virDomainState, reason)."""

    @abc.abstractmethod
    def is_active(self, dom: DomainRef) -> bool:
        """virDomainIsActive."""

    @abc.abstractmethod
    def is_persistent(self, dom: DomainRef) -> bool:
        """virDomainIsPersistent."""

    @abc.abstractmethod
    def get_autostart(self, dom: DomainRef) -> bool:
        """virDomainGetAutostart."""

    @abc.abstractmethod
    def set_autostart(self, dom: DomainRef, autostart: bool) -> None:
        """virDomainSetAutostart (transient domains: VIR_ERR_OPERATION_INVALID)."""

    # ---- resources and statistics ----------------------------------------------------------------------

    @abc.abstractmethod
    def set_memory(self, dom: DomainRef, kib: int, flags: int = 0) -> None:
        """virDomainSetMemoryFlags: live through the balloon, config into <currentMemory> (or <memory> with
        MEM_MAXIMUM)."""

    @abc.abstractmethod
    def memory_stats(self, dom: DomainRef, nr_stats: int, flags: int = 0) -> list[tuple[int, int]]:
        """virDomainMemoryStats: (VIR_DOMAIN_MEMORY_STAT_* tag, value in KiB) pairs, at most nr_stats."""

    @abc.abstractmethod
    def block_stats(self, dom: DomainRef, path: str) -> BlockStats:
        """virDomainBlockStats of a disk named by target dev (vda) or source path."""

    @abc.abstractmethod
    def interface_stats(self, dom: DomainRef, path: str) -> InterfaceStats:
        """virDomainInterfaceStats of an interface named by target dev (tap name) or MAC."""

    @abc.abstractmethod
    def set_block_io_tune(self, dom: DomainRef, disk: str, params: dict[str, int | str], flags: int = 0) -> None:
        """virDomainSetBlockIoTune: params named as vir.BLOCK_IOTUNE_PARAMS; live through QMP
        block_set_io_throttle, config as <iotune>; validated as libvirt validates (total_* with read_*/write_*
        is VIR_ERR_INVALID_ARG, and so on)."""

    @abc.abstractmethod
    def get_block_io_tune(self, dom: DomainRef, disk: str | None, flags: int = 0) -> list[tuple[str, int, int | str]]:
        """virDomainGetBlockIoTune: (name, VIR_TYPED_PARAM_* type, value) in vir.BLOCK_IOTUNE_PARAMS order."""

    # ---- devices and console ----------------------------------------------------------------------------

    @abc.abstractmethod
    def attach_device(self, dom: DomainRef, xml: str, flags: int = 0) -> None:
        """virDomainAttachDeviceFlags: CONFIG always; LIVE where the hypervisor can hot-plug, else
        VIR_ERR_OPERATION_UNSUPPORTED as libvirt says it."""

    @abc.abstractmethod
    def detach_device(self, dom: DomainRef, xml: str, flags: int = 0) -> None:
        """virDomainDetachDeviceFlags (same rules as attach)."""

    @abc.abstractmethod
    def open_console(self, dom: DomainRef, dev_name: str | None, flags: int = 0) -> int:
        """virDomainOpenConsole: an fd (owned by the caller, non-blocking) on the serial pty; the RPC layer
        pumps it to and from the stream."""

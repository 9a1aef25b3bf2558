"""Machine: builds guest memory, buses and devices from a MachineConfig and runs it under an accelerator.

RAM, buses and devices are built once and live as long as the machine; a guest reset resets every device
in place and keeps RAM (as a real PC and QEMU do), while the KVM VM and its vCPUs are created anew: KVM
has no "reset this vCPU" call, and a fresh VM is the one way to get every register, the in-kernel irqchip
and the PIT back to power-on state exactly. A machine run ends in exactly one Outcome.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from refvm.bus import MmioBus, PioBus
from refvm.config import MachineConfig
from refvm.devices.chardev import Chardev, open_chardev
from refvm.devices.irq import IrqLine
from refvm.devices.tree import DeviceTree
from refvm.memory import GuestMemory
from refvm.platform_assembly import add_platform_devices, register_port

if TYPE_CHECKING:  # the KVM side is imported only when a KVM machine is built (qtest starts faster)
    from refvm.vcpu_runner import VcpuRunner

#: Below 4 GiB, RAM stops here; the rest goes above 4 GiB (the PCI hole, as QEMU's pc machine).
LOW_RAM_LIMIT = 0xC000_0000
#: Addresses KVM needs for its real-mode TSS and identity map on Intel; placed just below the BIOS ROM.
TSS_ADDR = 0xFFFB_D000
IDENTITY_MAP_ADDR = 0xFFFB_C000
#: Writes to this window are MSIs to the local APICs, not memory.
MSI_WINDOW = range(0xFEE0_0000, 0xFEF0_0000)

#: Exit status the CLI uses when the watchdog fires (as timeout(1)).
WATCHDOG_STATUS = 124
SIGNAL_POLL_SECONDS = 0.2  # how late a SIGTERM caught by another thread may be handled (see _wait_ended)


class MachineError(Exception):
    """A machine could not be built or run; the message is meant for the user as is."""


@dataclass
class Outcome:
    """How a machine run ended."""

    kind: str  # "shutdown" | "debug-exit" | "error" | "watchdog" | "signal"
    status: int = 0
    message: str = ""


class Machine:
    """A PC-like machine (pc: COM ports, debug-exit, reset ports) run by KVM vCPU threads."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        from refvm.block.drive import NodeNames
        from refvm.deviations import Deviations

        #: This machine's deliberate deviations and `#blockNNN` node names: its own, not the process's, so a
        #: migration's source and destination can live in one process.
        self.deviations = Deviations(config.deviations)
        self.node_names = NodeNames()
        self._kernel_image = self._read_file(config.kernel, "kernel") if config.kernel else None
        self._initrd_image = self._read_file(config.initrd, "initrd") if config.initrd else None
        self._outcome: Outcome | None = None
        self._outcome_lock = threading.Lock()
        self._ended = threading.Event()
        self._reset_requested = threading.Event()
        self._state_lock = threading.RLock()
        self._runners: list[VcpuRunner] = []
        # With -incoming the machine is in inmigrate before any monitor answers (as QEMU).
        self._state = "inmigrate" if config.incoming else "prelaunch" if config.start_paused else "running"
        self.kvm = None
        self.cpu_plan = None  # refvm.cpu.CpuPlan, made on the first VM build (vcpu_setup.setup_cpuid)
        self.vm = None
        #: KVM's dirty ring (refvm.migration.dirty_ring.KvmDirtyRing) with -accel kvm,dirty-ring-size=N, else None.
        self.dirty_ring = None
        self.qtest = None
        self.fastpath = None
        self._migration = None
        #: Set while a KVM VM is built; a destination's first VM gets no kernel (the stream brings RAM + vCPUs).
        self._vm_built = threading.Event()
        self._incoming_boot = bool(config.incoming) and config.accel == "kvm"
        #: Listeners told about run-state changes: callback(event_name, data) (the QMP monitor is one).
        self.event_listeners: list = []
        self.memory = self._build_memory()
        self.memory.drop_view_marks = self.deviations.active("migration-drop-dirty")  # virtio's marks (queue.py)
        self.pio = PioBus()
        self.mmio = MmioBus()
        #: Every device by QOM path (refvm/devices/tree.py): reset, QMP and migration walk it.
        self.devices = DeviceTree()
        self.chardevs: list[Chardev | None] = []
        self.backends = None
        # Timers (block throttling) need a clock before devices exist: virtual under qtest (the client
        # steps it), wall time under KVM (its timer thread starts with the first timer).
        from refvm.block.throttle_group import ThrottleGroups
        from refvm.clock import RealtimeClock, VirtualClock

        self.clock: VirtualClock | RealtimeClock = VirtualClock() if config.accel == "qtest" else RealtimeClock()
        self.throttle_groups = ThrottleGroups(self.clock)
        try:
            self.chardevs = [None if spec is None else open_chardev(spec) for spec in config.serials]
            self._add_platform_devices()
            self._add_pci_devices()
        except Exception:
            self._close_chardevs()
            raise

    # ---- construction -------------------------------------------------------------------------------

    @staticmethod
    def _read_file(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise MachineError(f"could not load {what} '{path}': {err.strerror}") from None

    def _build_memory(self) -> GuestMemory:
        memory = GuestMemory()
        low = min(self.config.memory_bytes, LOW_RAM_LIMIT)
        memory.add_ram(0, low)
        if self.config.memory_bytes > low:
            memory.add_ram(1 << 32, self.config.memory_bytes - low)
        return memory

    def irq_sink(self, line: int, level: int) -> None:
        """Where devices' interrupt lines end: the in-kernel irqchip, or the qtest client's intercept."""
        vm = self.vm
        if vm is not None:
            vm.irq_line(line, level)
        elif self.qtest is not None:
            self.qtest.irq_sink(line, level)

    def msi_sink(self, address: int, data: int) -> None:
        """A bus-master write of an MSI message: to the APICs inside the MSI window, else to RAM (as DMA)."""
        if address in MSI_WINDOW:
            vm = self.vm
            if vm is not None:
                vm.signal_msi(address, data)
        elif self.memory.is_ram(address, 4):
            self.memory.write_u32(address, data)

    def _irq_line(self, irq: int) -> IrqLine:
        return IrqLine(self.irq_sink, irq)

    def _register(self, base: int, length: int, device: object, name: str) -> None:
        """Claim ports for a built-in device, filed under its tree node (refvm/platform_assembly.py)."""
        register_port(self, base, length, device, name)

    def _add_platform_devices(self) -> None:
        add_platform_devices(self)

    def _add_pci_devices(self) -> None:
        """Open the backends and plug the PCI -devices, in command-line order."""
        from refvm.device_assembly import AssemblyError, open_backends, plug_pci_devices

        cfg = self.config
        serial_ids = {ident for ident, spec in cfg.chardevs.items() if any(spec is s for s in cfg.serials)}
        try:
            self.backends = open_backends(cfg, serial_ids, clock=self.clock, throttle_groups=self.throttle_groups,
                                          node_names=self.node_names)
            plug_pci_devices(self, cfg, self.backends)
        except AssemblyError as err:
            raise MachineError(str(err)) from None

    def _build_vm(self) -> None:
        """Create the KVM VM and its vCPUs in power-on state and load the kernel."""
        from refvm.kvm import Kvm, KvmError, caps

        cfg = self.config
        try:
            self.kvm = kvm = Kvm()
        except KvmError as err:
            raise MachineError(str(err)) from None
        max_vcpus = kvm.check_extension(caps.KVM_CAP_MAX_VCPUS) or kvm.check_extension(caps.KVM_CAP_NR_VCPUS)
        if max_vcpus and cfg.smp > max_vcpus:
            raise MachineError(f"Number of SMP CPUs requested ({cfg.smp}) exceeds the maximum ({max_vcpus})")
        vm = kvm.create_vm()
        vm.set_tss_addr(TSS_ADDR)
        vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2()
        if cfg.globals.get("kvm-pit", {}).get("lost_tick_policy") == "discard":  # -global kvm-pit.lost_tick_policy
            vm.set_pit_reinject(False)
        for slot, region in enumerate(self.memory.regions):
            vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address)
        self.vm = vm
        from refvm import vcpu_setup
        from refvm.migration import dirty_ring
        from refvm.vcpu_runner import VcpuRunner

        try:
            dirty_ring.enable_for(vm, cfg)  # -accel kvm,dirty-ring-size=N: before any vCPU exists
        except ValueError as err:
            vm.close()
            raise MachineError(str(err)) from None
        self._runners = [VcpuRunner(self, vm.create_vcpu(i), i) for i in range(cfg.smp)]
        self.dirty_ring = dirty_ring.rings_for(vm, cfg, self.memory, [r.vcpu for r in self._runners])
        vcpu_setup.setup_cpuid(self, kvm.supported_cpuid())
        if self._incoming_boot:
            self._incoming_boot = False  # a later reset boots the kernel as usual (QEMU: same command line)
        else:
            self._load_kernel()
        # Queue notifies through ioeventfds handled on an I/O thread, MSI-X through irqfds (off with
        # REFVM_NO_FASTPATH=1); the exit-based path stays underneath for everything else.
        from refvm.fastpath import attach

        self.fastpath = attach(self)
        self._vm_built.set()

    def _load_kernel(self) -> None:
        from refvm import vcpu_setup

        if self._kernel_image is None:
            raise MachineError("no kernel given: refvm has no firmware, use -kernel FILE")
        self.firmware.install()  # ACPI and SMBIOS tables, where a BIOS would have left them
        state = vcpu_setup.load_kernel(
            self.memory, self._kernel_image, self.config.kernel or "", self.config.append, self._initrd_image
        )
        vcpu_setup.apply_boot_state(self._runners[0].vcpu, state)

    def with_vm(self, fn: Callable[[object], None], timeout: float) -> None:
        """Run fn(vm) once the main thread has built the KVM VM and its vCPUs, with no vCPU started meanwhile
        (an incoming migration loads vCPU and irqchip state this way)."""
        if not self._vm_built.wait(timeout):
            raise MachineError(f"no KVM VM was built within {timeout:g} s")
        with self._state_lock:
            if self.vm is None:
                raise MachineError("the KVM VM went away before the migration could load into it")
            fn(self.vm)

    def _teardown_vm(self) -> None:
        self._vm_built.clear()
        if self.fastpath is not None:
            fastpath, self.fastpath = self.fastpath, None
            fastpath.detach()
        if self.dirty_ring is not None:
            ring, self.dirty_ring = self.dirty_ring, None
            ring.close()
        for runner in self._runners:
            runner.vcpu.close()
        self._runners = []
        if self.vm is not None:
            vm, self.vm = self.vm, None
            vm.close()
        if self.kvm is not None:
            kvm, self.kvm = self.kvm, None
            kvm.close()

    def _close_chardevs(self) -> None:
        """Close every host-side backend (serial chardevs, drives, taps, other chardevs)."""
        for chardev in self.chardevs:
            if chardev is not None:
                chardev.close()
        if self.backends is not None:
            self.backends.close()

    # ---- requests from devices, monitors and vCPU threads (any thread) -------------------------------

    def _halt_guest(self) -> None:
        """The CPU stops at the instruction that asked for a reset or an exit, as on hardware."""
        for runner in self._runners:
            runner.halt()

    def _end(self, outcome: Outcome) -> None:
        with self._outcome_lock:
            if self._outcome is None:
                self._outcome = outcome
        self._halt_guest()
        self._ended.set()

    def _emit(self, event: str, data: dict | None = None) -> None:
        for listener in list(self.event_listeners):
            listener(event, data)  # None: no "data" member, as QEMU sends STOP, RESUME, SUSPEND

    def request_debug_exit(self, status: int) -> None:
        self._end(Outcome("debug-exit", status))

    def request_shutdown(self, message: str = "", reason: str = "guest-shutdown") -> None:
        parking = self.config.no_shutdown and reason == "guest-shutdown"
        if parking:
            self._park("shutdown")  # -no-shutdown: stop the guest, keep the process (and its monitors)
        if not reason.startswith("host-qmp"):  # QMP-initiated events are emitted by the monitor
            self._emit("SHUTDOWN", {"guest": reason.startswith("guest"), "reason": reason})
        if parking:
            self._emit("STOP")  # as QEMU's vm_stop(RUN_STATE_SHUTDOWN)
            return
        self._end(Outcome("shutdown", 0, message))

    def _park(self, state: str) -> None:
        """Stop the vCPUs and enter run state ``state`` (shutdown, suspended); a vCPU may be the caller."""
        with self._state_lock:
            self._state = state
            runners = list(self._runners)
        # The request may come from a vCPU thread (a port write): pausing waits for each vCPU to park, so
        # it runs on a thread of its own.
        threading.Thread(target=lambda: [r.pause() for r in runners], name="park", daemon=True).start()

    def _on_sleep(self, sleep_type: int) -> None:
        """The guest wrote SLP_EN to PM1a_CNT: SLP_TYP 0 is soft-off (S5), 1 is suspend to RAM (S3)."""
        from refvm.devices.acpi.pm import SLP_TYP_S3, SLP_TYP_S5

        if sleep_type == SLP_TYP_S5:
            self.request_shutdown("guest powered off (ACPI S5)")
        elif sleep_type == SLP_TYP_S3:
            self._emit("SUSPEND")
            self._park("suspended")

    def power_down(self) -> None:
        """QMP `system_powerdown`: press the ACPI power button (the guest decides what to do)."""
        self.firmware.pm.press_power_button()

    def wakeup(self) -> bool:
        """QMP `system_wakeup`: leave S3 with WAK_STS set; False if the guest is not suspended.

        The guest continues after its SLP_EN write (QEMU instead resets into its firmware's resume vector).
        """
        with self._state_lock:
            if self._state != "suspended":
                return False
            self.firmware.pm.wake()
            self._state = "running"
            self._start_or_resume_vcpus()
        self._emit("WAKEUP")
        return True

    def request_reset(self, reason: str = "guest-reset") -> None:
        if self.config.no_reboot:
            self._emit("SHUTDOWN", {"guest": reason.startswith("guest"), "reason": reason})
            self._end(Outcome("shutdown", 0, "reset requested and -no-reboot is set"))
            return
        if not reason.startswith("host-qmp"):
            self._emit("RESET", {"guest": reason.startswith("guest"), "reason": reason})
        with self._state_lock:
            if self._state == "shutdown":
                self._state = "prelaunch"  # as QEMU: a reset after -no-shutdown's stop waits for `cont`
        self._reset_requested.set()
        self._halt_guest()
        self._ended.set()

    def request_error(self, message: str) -> None:
        self._end(Outcome("error", 1, message))

    def interrupt(self, signum: int) -> None:
        """Called from a signal handler in the main thread: end the run as QEMU does on SIGTERM."""
        self._emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
        self._end(Outcome("signal", 0, f"terminating on signal {signum}"))

    # ---- run state, as the QMP monitor sees it -------------------------------------------------------

    def status(self) -> str:
        """QEMU's RunState name: prelaunch (-S, never run), running, paused, inmigrate, postmigrate."""
        return self._state

    def set_run_state(self, state: str) -> None:
        """Set a run state that no vCPU transition implies (inmigrate, postmigrate, paused after -incoming -S)."""
        with self._state_lock:
            self._state = state

    def emit_event(self, event: str, data: dict | None = None) -> None:
        """Send a QMP event to every monitor (the migration job's MIGRATION events)."""
        self._emit(event, data)

    @property
    def migration(self):  # noqa: ANN201 - MigrationJob, imported lazily (most runs never migrate)
        """This machine's migration job (refvm/migration/job.py), created on first use."""
        if self._migration is None:
            from refvm.migration.job import MigrationJob

            self._migration = MigrationJob(self)
        return self._migration

    def _start_incoming(self) -> None:
        """-incoming: defer waits for migrate-incoming; a URI starts listening before the run begins."""
        incoming = self.config.incoming
        if not incoming:
            return
        if incoming == "defer":
            self.set_run_state("inmigrate")
            return
        try:
            self.migration.start_incoming(incoming)
        except ValueError:
            raise MachineError(f"-incoming {incoming}: unknown migration protocol: {incoming}") from None
        except OSError as err:
            raise MachineError(f"-incoming {incoming}: Failed to bind socket: {err.strerror or err}") from None

    @property
    def name(self) -> str:
        return self.config.name

    def pause(self, flush: bool = True) -> None:
        """QMP `stop` (the monitor emits STOP itself, as it does for every command it runs); as QEMU's vm_stop,
        every drive is flushed once the vCPUs are paused (``flush=False``: the caller flushes later itself)."""
        with self._state_lock:
            if self._state != "running":
                return
            for runner in self._runners:
                runner.pause()
            self._state = "paused"
        if flush:  # outside the state lock: it takes the devices' locks
            self.flush_drives()

    def flush_drives(self) -> None:
        """Every open drive's completed writes (and qcow2's cached metadata) into its image file."""
        from refvm.block.flush_all import flush_drives

        if self.backends is not None:
            flush_drives(self.backends.drives, self.devices.fronts())

    def resume(self) -> None:
        """QMP `cont`: start the vCPUs after -S, or release them after `stop`."""
        with self._state_lock:
            if self._state == "running":
                return
            self._state = "running"
            self._start_or_resume_vcpus()

    def reset(self) -> None:
        """QMP `system_reset`."""
        self.request_reset("host-qmp-system-reset")

    def quit(self) -> None:
        """QMP `quit`."""
        self._end(Outcome("shutdown", 0, "quit requested over QMP"))

    def _start_or_resume_vcpus(self) -> None:
        for runner in self._runners:
            if runner.ident is None:
                runner.start()
            else:
                runner.resume()

    # ---- running -------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Run until the machine ends, under the configured accelerator, with its QMP monitors."""
        monitors = self._start_qmp()
        if getattr(self.config.platform, "monitor_chardev", None):  # -monitor stdio|chardev:ID
            from refvm.monitor.hmp_chardev import start_human_monitor

            start_human_monitor(self)
        try:
            self._start_incoming()
            if self.config.accel == "qtest":
                return self._run_qtest()
            return self._run_kvm()
        finally:
            for server in monitors:
                server.close()
            close_clock = getattr(self.clock, "close", None)  # RealtimeClock: stop its timer thread
            if close_clock is not None:
                close_clock()

    def _start_qmp(self) -> list:
        if not self.config.qmp:
            return []  # no monitor: skip importing the command sets (a sixth of the time to first prompt)
        from refvm.fastpath import register_qmp as register_fastpath_qmp
        from refvm.monitor.block_qmp import BlockCommands
        from refvm.monitor.block_resize import BlockResizeCommands
        from refvm.monitor.cpu_qmp import CpuCommands
        from refvm.monitor.machine_qmp import DeviceCommands
        from refvm.monitor.migration_qmp import MigrationCommands
        from refvm.monitor.net_qmp import NetCommands
        from refvm.monitor.platform_qmp import register_platform_qmp
        from refvm.monitor.power_qmp import PowerCommands
        from refvm.monitor.qmp import QmpMachineCommands, QmpServer

        servers = []
        try:
            for path, listen in self.config.qmp:
                server = QmpServer(path, server=listen)
                QmpMachineCommands(server, self)
                DeviceCommands(server, self)
                NetCommands(server, self)
                PowerCommands(server, self)
                MigrationCommands(server, self)
                register_fastpath_qmp(server, self)
                drives = self.backends.drives if self.backends else {}
                BlockCommands(server, self, drives, self.throttle_groups)
                BlockResizeCommands(server, self, drives)
                register_platform_qmp(server, self)  # qom-*, fds, info, HMP, query-qmp-schema
                CpuCommands(server, self)
                server.start()
                servers.append(server)
        except OSError as err:
            for server in servers:
                server.close()
            self._close_chardevs()
            raise MachineError(f"-qmp {path}: {err.strerror or err}") from None
        for server in servers:
            self.event_listeners.append(server.emit_event)
        return servers

    def _run_qtest(self) -> Outcome:
        """No vCPUs: a qtest client drives ports, memory and the virtual clock until it goes away.

        QEMU keeps running when its qtest client disconnects; refvm ends with status 0 instead, since
        nothing can drive the machine any more (a deliberate difference, listed in the README).
        """
        from refvm.monitor.qtest import QtestServer

        try:
            self.qtest = QtestServer(
                self.config.qtest or "",
                memory=self.memory,
                pio=self.pio,
                mmio=self.mmio,
                clock=self.clock,
                on_disconnect=lambda: self.request_shutdown("qtest client disconnected", "host-qmp-quit"),
                log=self.config.qtest_log,
            )
            self.qtest.start()
        except (OSError, ValueError) as err:
            self._close_chardevs()
            raise MachineError(f"-qtest {self.config.qtest}: {err}") from None
        try:
            while True:
                self._reset_requested.clear()
                self._ended.clear()
                if self._outcome is None and not self._wait_ended(self.config.watchdog_seconds):  # ended early: no wait
                    limit = self.config.watchdog_seconds
                    self._end(Outcome("watchdog", WATCHDOG_STATUS, f"watchdog: still running after {limit:g} s"))
                if self._outcome is not None:
                    return self._outcome
                self.devices.reset()
        finally:
            self.qtest.close()
            self._close_chardevs()

    def _run_kvm(self) -> Outcome:
        """Boot and run the guest until it ends; resets rebuild the VM and keep going."""
        _install_kick_handler()
        try:
            while True:
                self._reset_requested.clear()
                self._ended.clear()
                with self._state_lock:  # a QMP `cont` must not start vCPUs that are half set up
                    self._build_vm()
                    if self._state == "running":
                        self._start_or_resume_vcpus()
                ended = self._wait_ended(self.config.watchdog_seconds)
                with self._state_lock:
                    self._stop_vcpus()
                    self._teardown_vm()
                if not ended:
                    limit = self.config.watchdog_seconds
                    self._end(Outcome("watchdog", WATCHDOG_STATUS, f"watchdog: guest still running after {limit:g} s"))
                if self._outcome is not None:
                    return self._outcome
                if self._reset_requested.is_set():
                    self.devices.reset()
        finally:
            self._teardown_vm()
            self._close_chardevs()

    def _wait_ended(self, seconds: float | None) -> bool:
        """Wait for the run to end (at most `seconds`), in short slices: Python runs a signal handler only in the
        main thread, and a SIGTERM the kernel delivers to a vCPU or I/O thread would otherwise wait until this
        wait returned (QEMU ends at once on SIGTERM; the host's `kill` must too)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            left = SIGNAL_POLL_SECONDS if deadline is None else min(SIGNAL_POLL_SECONDS, deadline - time.monotonic())
            if self._ended.wait(max(left, 0)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _stop_vcpus(self) -> None:
        for runner in self._runners:
            runner.stop()
        for runner in self._runners:
            if runner.ident is None:
                continue  # never started (-S)
            runner.join(timeout=5)
            if runner.is_alive():
                print(f"refvm: vCPU {runner.index} did not stop", file=sys.stderr)


_kick_installed = False


def _install_kick_handler() -> None:
    """vCPU threads are kicked out of KVM_RUN with a signal; it must not kill the process."""
    global _kick_installed
    if _kick_installed or threading.current_thread() is not threading.main_thread():
        return
    from refvm.vcpu_runner import VcpuRunner

    signal.signal(VcpuRunner.KICK_SIGNAL, lambda signum, frame: None)
    _kick_installed = True


__all__ = ["Machine", "MachineError", "Outcome"]

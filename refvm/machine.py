"""Machine: builds guest memory, buses and devices from a MachineConfig and runs the vCPUs.

A machine run ends in exactly one Outcome (shutdown, debug-exit status, error, watchdog). A guest reset is
done by tearing the VM down and building it again from the same config: that is the simplest way to get
every device, every vCPU register and all of RAM back to power-on state, and chardevs are kept across it
so a console session survives a reboot.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from refvm import vcpu_setup as cpu_setup
from refvm.bus import MmioBus, PioBus
from refvm.config import MachineConfig
from refvm.devices.chardev import Chardev, open_chardev
from refvm.devices.debug_exit import DebugExit
from refvm.devices.irq import IrqLine
from refvm.devices.reset import KbdReset, ResetControl
from refvm.devices.serial import Serial16550
from refvm.kvm import Kvm, KvmError, Vm
from refvm.memory import GuestMemory
from refvm.vcpu_runner import VcpuRunner

#: Legacy COM ports: (I/O base, IRQ), as every PC and QEMU's `-serial` order.
COM_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))

#: Below 4 GiB, RAM stops here; the rest goes above 4 GiB (the PCI hole, as QEMU's pc machine).
LOW_RAM_LIMIT = 0xC000_0000
#: Addresses KVM needs for its real-mode TSS and identity map on Intel; placed just below the BIOS ROM.
TSS_ADDR = 0xFFFB_D000
IDENTITY_MAP_ADDR = 0xFFFB_C000

#: Exit status the CLI uses when the watchdog fires (as timeout(1)).
WATCHDOG_STATUS = 124


class MachineError(Exception):
    """A machine could not be built or run; the message is meant for the user as is."""


@dataclass
class Outcome:
    """How a machine run ended."""

    kind: str  # "shutdown" | "debug-exit" | "reset" | "error" | "watchdog" | "signal"
    status: int = 0
    message: str = ""


class Machine:
    """A PC-like machine (pc: COM ports, debug-exit, reset ports) driven by KVM vCPU threads."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self._kernel_image = self._read_file(config.kernel, "kernel") if config.kernel else None
        self._initrd_image = self._read_file(config.initrd, "initrd") if config.initrd else None
        self.chardevs = self._open_chardevs()
        self._outcome: Outcome | None = None
        self._outcome_lock = threading.Lock()
        self._ended = threading.Event()
        self._paused = threading.Event()
        self._runners: list[VcpuRunner] = []
        self.kvm: Kvm | None = None
        self.vm: Vm | None = None
        self.memory: GuestMemory | None = None
        self.pio = PioBus()
        self.mmio = MmioBus()

    # ---- construction -------------------------------------------------------------------------------

    @staticmethod
    def _read_file(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise MachineError(f"could not load {what} '{path}': {err.strerror}") from None

    def _open_chardevs(self) -> list[Chardev | None]:
        opened: list[Chardev | None] = []
        for spec in self.config.serials:
            opened.append(None if spec is None else open_chardev(spec))
        return opened

    def _build(self) -> None:
        """Create the VM, RAM, devices and vCPUs in power-on state."""
        cfg = self.config
        try:
            self.kvm = Kvm()
        except KvmError as err:
            raise MachineError(str(err)) from None
        max_vcpus = self.kvm.check_extension(_cap("KVM_CAP_MAX_VCPUS")) or self.kvm.check_extension(
            _cap("KVM_CAP_NR_VCPUS")
        )
        if max_vcpus and cfg.smp > max_vcpus:
            raise MachineError(f"Number of SMP CPUs requested ({cfg.smp}) exceeds the maximum ({max_vcpus})")
        vm = self.kvm.create_vm()
        self.vm = vm
        vm.set_tss_addr(TSS_ADDR)
        vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2()
        self.memory = GuestMemory()
        low = min(cfg.memory_bytes, LOW_RAM_LIMIT)
        regions = [self.memory.add_ram(0, low)]
        if cfg.memory_bytes > low:
            regions.append(self.memory.add_ram(1 << 32, cfg.memory_bytes - low))
        for slot, region in enumerate(regions):
            vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address)
        self.pio = PioBus()
        self.mmio = MmioBus()
        self._add_platform_devices()
        self._runners = [VcpuRunner(self, vm.create_vcpu(i), i) for i in range(cfg.smp)]
        cpuid = self.kvm.supported_cpuid()
        for runner in self._runners:
            cpu_setup.set_cpuid(runner.vcpu, cpuid, runner.index)
        self._load_kernel()

    def _irq_line(self, irq: int) -> IrqLine:
        vm = self.vm
        assert vm is not None
        return IrqLine(lambda line, level: vm.irq_line(line, level), irq)

    def _add_platform_devices(self) -> None:
        for (base, irq), chardev in zip(COM_PORTS, self.chardevs, strict=False):
            if chardev is not None:
                self.pio.register(base, 8, Serial16550(self._irq_line(irq), chardev), f"serial@{base:#x}")
        self.pio.register(0x64, 1, KbdReset(self.request_reset), "i8042-reset")
        self.pio.register(0xCF9, 1, ResetControl(self.request_reset), "reset-control")
        for dev in self.config.devices:
            if dev.driver == "isa-debug-exit":
                base = int(dev.props.get("iobase", "0x501"), 0)
                size = int(dev.props.get("iosize", "0x02"), 0)
                self.pio.register(base, size, DebugExit(self.request_debug_exit), "isa-debug-exit")

    def _load_kernel(self) -> None:
        if self._kernel_image is None:
            raise MachineError("no kernel given: refvm has no firmware, use -kernel FILE")
        assert self.memory is not None
        state = cpu_setup.load_kernel(
            self.memory, self._kernel_image, self.config.kernel or "", self.config.append, self._initrd_image
        )
        cpu_setup.apply_boot_state(self._runners[0].vcpu, state)

    def _teardown(self) -> None:
        for runner in self._runners:
            runner.vcpu.close()
        self._runners = []
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None
        self.memory = None

    # ---- requests from devices and vCPU threads (any thread) ---------------------------------------

    def _end(self, outcome: Outcome) -> None:
        with self._outcome_lock:
            if self._outcome is None:
                self._outcome = outcome
        self._ended.set()

    def request_debug_exit(self, status: int) -> None:
        self._end(Outcome("debug-exit", status))

    def request_shutdown(self, message: str = "") -> None:
        self._end(Outcome("shutdown", 0, message))

    def request_reset(self) -> None:
        if self.config.no_reboot:
            self._end(Outcome("shutdown", 0, "guest asked for a reset and -no-reboot is set"))
        else:
            self._end(Outcome("reset"))

    def request_error(self, message: str) -> None:
        self._end(Outcome("error", 1, message))

    # ---- running -------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Boot and run the guest until it ends; resets rebuild the VM and keep going."""
        _install_kick_handler()
        try:
            while True:
                self._outcome = None
                self._ended.clear()
                self._build()
                outcome = self._run_once()
                self._teardown()
                if outcome.kind != "reset":
                    return outcome
        finally:
            self._teardown()
            for chardev in self.chardevs:
                if chardev is not None:
                    chardev.close()

    def _run_once(self) -> Outcome:
        if not self.config.start_paused:
            self.cont()
        timeout = self.config.watchdog_seconds
        if not self._ended.wait(timeout):
            self._end(Outcome("watchdog", WATCHDOG_STATUS, f"watchdog: guest still running after {timeout:g} s"))
        self._stop_vcpus()
        assert self._outcome is not None
        return self._outcome

    def cont(self) -> None:
        """Start (or, after -S, release) the vCPU threads."""
        for runner in self._runners:
            if not runner.is_alive() and runner.ident is None:
                runner.start()

    def _stop_vcpus(self) -> None:
        for runner in self._runners:
            runner.stop()
        for runner in self._runners:
            if runner.ident is None:
                continue  # never started (-S)
            runner.join(timeout=5)
            if runner.is_alive():
                print(f"refvm: vCPU {runner.index} did not stop", file=sys.stderr)

    def interrupt(self, signum: int) -> None:
        """Called from a signal handler in the main thread: end the run like QEMU does on SIGTERM."""
        self._end(Outcome("signal", 0, f"terminating on signal {signum}"))


def _cap(name: str) -> int:
    from refvm.kvm import caps

    return int(getattr(caps, name))


_kick_installed = False


def _install_kick_handler() -> None:
    """vCPU threads are kicked out of KVM_RUN with a signal; it must not kill the process."""
    global _kick_installed
    if _kick_installed or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(VcpuRunner.KICK_SIGNAL, lambda signum, frame: None)
    _kick_installed = True


__all__ = ["Machine", "MachineError", "Outcome"]

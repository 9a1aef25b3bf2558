"""The vCPU thread: KVM_RUN in a loop, each exit dispatched to the buses.

This loop is the hot path of the whole VMM (every port access of the guest passes through it), so it
binds what it needs to locals once and branches on the exit's type with identity checks.
"""

from __future__ import annotations

import signal
import threading
import traceback
from typing import TYPE_CHECKING

from refvm.kvm import exits

if TYPE_CHECKING:
    from refvm.kvm import Vcpu
    from refvm.machine import Machine


class VcpuRunner(threading.Thread):
    """Runs one vCPU until the machine ends or `stop()` is called."""

    #: Signal used to kick a thread out of KVM_RUN (its handler does nothing; EINTR is the point).
    KICK_SIGNAL = signal.SIGUSR1

    def __init__(self, machine: Machine, vcpu: Vcpu, index: int) -> None:
        super().__init__(name=f"vcpu{index}", daemon=True)
        self.machine = machine
        self.vcpu = vcpu
        self.index = index
        self._stopping = False
        self._pause_requested = False
        self._resumed = threading.Event()
        self._parked = threading.Event()

    def stop(self) -> None:
        """End the thread: make KVM_RUN return at once, and kick the thread if it sits inside it."""
        self._stopping = True
        self._resumed.set()
        self._kick()

    def halt(self) -> None:
        """Stop guest progress now, from any thread (even this vCPU's own, inside a device callback):
        a reset or exit must not let the guest run on while the main thread gets round to stopping it."""
        self._stopping = True
        self.vcpu.immediate_exit = 1

    def pause(self, timeout: float = 2.0) -> None:
        """Park the vCPU outside KVM_RUN and wait until it is (QMP `stop` is synchronous in QEMU too)."""
        self._resumed.clear()
        self._parked.clear()
        self._pause_requested = True
        self._kick()
        if self.ident is not None and self.is_alive():
            self._parked.wait(timeout)

    def resume(self) -> None:
        self._pause_requested = False
        self.vcpu.immediate_exit = 0
        self._resumed.set()

    def _kick(self) -> None:
        self.vcpu.immediate_exit = 1
        if self.ident is not None and self.is_alive():
            try:
                signal.pthread_kill(self.ident, self.KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def run(self) -> None:
        try:
            self._loop()
        except Exception as err:  # noqa: BLE001 - any failure must end the machine, not hang it
            detail = traceback.format_exc(limit=4)
            self.machine.request_error(f"vCPU {self.index}: {err}\n{detail}")

    def _loop(self) -> None:
        machine = self.machine
        pio = machine.pio
        mmio = machine.mmio
        run = self.vcpu.run
        IoExit, MmioExit, Interrupted = exits.IoExit, exits.MmioExit, exits.InterruptedExit  # noqa: N806
        while not self._stopping:
            if self._pause_requested:
                self._complete_pending()
                self._parked.set()
                self._resumed.wait()
                continue
            ex = run()
            kind = type(ex)
            if kind is IoExit:
                if ex.count == 1:
                    if ex.is_write:
                        pio.write(ex.port, ex.size, ex.value)
                    else:
                        ex.set_value(pio.read(ex.port, ex.size))
                else:
                    _string_io(pio, ex)
            elif kind is MmioExit:
                if ex.is_write:
                    mmio.write(ex.phys_addr, ex.length, int.from_bytes(ex.data[: ex.length], "little"))
                else:
                    value = mmio.read(ex.phys_addr, ex.length)
                    ex.data[: ex.length] = value.to_bytes(ex.length, "little")
            elif kind is Interrupted:
                continue
            elif kind is exits.DirtyRingFullExit and machine.dirty_ring is not None:
                machine.dirty_ring.harvest()  # a migration logs: take the ring's pages, KVM frees the entries
            else:
                self._other_exit(ex)
                return

    def _complete_pending(self) -> None:
        """KVM_RUN once with immediate_exit set: KVM finishes an instruction whose port or MMIO read we just
        answered, and runs no guest code. Without it a vCPU saved now (migration) would lose that read."""
        self.vcpu.immediate_exit = 1
        self.vcpu.run()

    def _other_exit(self, ex: object) -> None:
        """Exits that end this vCPU's run: each becomes a machine outcome."""
        machine = self.machine
        if isinstance(ex, exits.ShutdownExit):
            # A triple fault: a real PC resets; QEMU does too unless -no-reboot.
            machine.request_reset()
        elif isinstance(ex, exits.HltExit):
            machine.request_shutdown("guest halted with no interrupt controller to wake it")
        elif isinstance(ex, exits.SystemEventExit):
            if getattr(ex, "type", None) == 2:  # KVM_SYSTEM_EVENT_RESET
                machine.request_reset()
            else:
                machine.request_shutdown()
        else:
            regs = self.vcpu.get_regs()
            machine.request_error(f"vCPU {self.index}: KVM exit {ex!r} at rip={regs.rip:#x}")


def _string_io(bus: object, ex: exits.IoExit) -> None:
    """`rep ins/outs`: count items of `size` bytes in the run page's data area."""
    size = ex.size
    data = ex.data
    for i in range(ex.count):
        chunk = slice(i * size, (i + 1) * size)
        if ex.is_write:
            bus.write(ex.port, size, int.from_bytes(data[chunk], "little"))  # type: ignore[attr-defined]
        else:
            data[chunk] = bus.read(ex.port, size).to_bytes(size, "little")  # type: ignore[attr-defined]

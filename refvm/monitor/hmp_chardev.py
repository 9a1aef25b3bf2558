"""A human monitor on a character device: ``-monitor stdio`` or ``-monitor chardev:ID``.

A line-oriented subset of QEMU's HMP with its greeting and ``(qemu) `` prompt: the ``info`` commands of
:mod:`refvm.monitor.hmp` (status, pci, block, cpus, qtree), ``stop``, ``cont``/``c``, ``system_reset``,
``quit``/``q`` and ``help``. Run-state changes reach QMP clients as the same events a QMP command would send
(STOP, RESUME, RESET with reason ``host-qmp-system-reset``, SHUTDOWN with ``host-qmp-quit``: QEMU uses the
"host-qmp" causes for HMP too). Input is untrusted: lines are capped at 4 KiB and anything else is answered
``unknown command``.
"""

from __future__ import annotations

import threading
from typing import Any

from refvm.monitor.hmp import HmpCommands

__all__ = ["HumanMonitor", "start_human_monitor"]

GREETING = "QEMU 7.2.0 monitor - type 'help' for more information\r\n"
PROMPT = "(qemu) "
MAX_LINE = 4096
HELP = ("cont|c -- resume emulation\r\ninfo [status|pci|block|cpus|qtree] -- show various information\r\n"
        "quit|q -- quit the emulator\r\nstop -- stop emulation\r\nsystem_reset -- reset the system\r\n")  # fmt: skip


class HumanMonitor:
    """Reads lines from ``chardev`` and answers them (on the chardev's reader thread)."""

    def __init__(self, chardev: Any, machine: Any) -> None:
        self.chardev = chardev
        self.machine = machine
        self.info = HmpCommands(None, machine)
        self._buf = bytearray()
        self._lock = threading.Lock()
        chardev.write((GREETING + PROMPT).encode())
        chardev.set_receiver(self._received)

    def _emit(self, event: str, data: dict | None = None) -> None:
        for listener in list(self.machine.event_listeners):
            listener(event, data)

    def _received(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            while True:
                end = self._buf.find(b"\n")
                if end < 0:
                    if len(self._buf) > MAX_LINE:
                        self._buf.clear()
                        self.chardev.write(b"line too long\r\n" + PROMPT.encode())
                    return
                line = self._buf[:end].decode("utf-8", "replace").strip()
                del self._buf[: end + 1]
                out = self.execute(line)
                if out is None:  # quit: no prompt after it
                    return
                self.chardev.write((out + PROMPT).encode())

    def execute(self, line: str) -> str | None:
        """One command line's output (``\\r\\n`` line ends), as QEMU prints it; None after quit."""
        word = line.split()[0] if line.split() else ""
        m = self.machine
        if word in ("stop",):
            was_running = m.status() == "running"
            m.pause()
            if was_running:
                self._emit("STOP")
        elif word in ("cont", "c"):
            if m.status() in ("internal-error", "shutdown", "guest-panicked"):
                return "Error: Resetting the Virtual Machine is required\r\n"
            if m.status() != "running":
                m.resume()
                self._emit("RESUME")
        elif word == "system_reset":
            m.reset()
            self._emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        elif word in ("quit", "q"):
            self._emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
            m.quit()
            return None
        elif word in ("help", "?"):
            return HELP
        elif word:
            return self.info.run({"command-line": line})
        return ""


def start_human_monitor(machine: Any) -> None:
    """Attach the -monitor chardev (it closes with the machine's other chardevs)."""
    ident = machine.config.platform.monitor_chardev
    machine.human_monitor = HumanMonitor(machine.backends.chardevs[ident], machine)

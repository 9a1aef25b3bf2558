"""Interrupt lines as seen by a device.

A device only ever says "my line is high/low"; where that goes (KVM_IRQ_LINE on the in-kernel
irqchip, a qtest ``IRQ raise N`` event, a test's recorder) is the machine's business. That is
what lets the same device model run under KVM and under qtest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["IrqLine", "IrqSink"]

IrqSink = Callable[[int, int], None]
"""Called as ``sink(irq, level)`` with level 0 or 1 whenever the line changes."""


class IrqLine:
    """A level-triggered interrupt line.

    The sink is called only on a change of level: devices recompute their IRQ output after
    every register access, and forwarding each unchanged level would cost an ioctl per access.
    """

    __slots__ = ("_sink", "irq", "_level", "_lock")

    def __init__(self, sink: IrqSink, irq: int) -> None:
        self._sink = sink
        self.irq = irq
        self._level = False
        self._lock = threading.Lock()

    @property
    def level(self) -> bool:
        return self._level

    def set(self, level: bool) -> None:
        """Drive the line to ``level``; the sink hears about it if it changed."""
        level = bool(level)
        with self._lock:
            if level == self._level:
                return
            self._level = level
            self._sink(self.irq, int(level))

    def raise_(self) -> None:
        self.set(True)

    def lower(self) -> None:
        self.set(False)

    def pulse(self) -> None:
        """Raise then lower (an edge for edge-triggered consumers)."""
        self.set(True)
        self.set(False)

    def __repr__(self) -> str:
        return f"<IrqLine {self.irq} level={int(self._level)}>"

"""Counters of the KVM fast path, kept per machine across VM rebuilds (resets).

They exist to make the fast path observable from outside: a test (or a person with ``REFVM_STATS=1``, or
a QMP client running ``x-query-fastpath``) can tell whether notifications really arrived through
ioeventfds on the IoThread and interrupts through irqfds, rather than through vCPU exits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FastPathStats"]


@dataclass
class FastPathStats:
    """Plain counters; increments race benignly (they are statistics, not state)."""

    attaches: int = 0
    #: Queue notifications handled on the IoThread because an ioeventfd fired.
    ioeventfd_notifies: int = 0
    notifies_by_queue: dict[str, int] = field(default_factory=dict)
    ioeventfd_assigned: int = 0
    ioeventfd_deassigned: int = 0
    #: MSIs delivered by writing an irqfd / through the machine's sink (KVM_SIGNAL_MSI or DMA).
    irqfd_msis: int = 0
    msi_fallbacks: int = 0
    #: KVM_SET_GSI_ROUTING calls.
    route_updates: int = 0
    errors: int = 0
    #: Names of the threads that ran ioeventfd notifications (should be just the IoThread).
    notify_threads: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_notify(self, label: str) -> None:
        with self._lock:
            self.ioeventfd_notifies += 1
            self.notifies_by_queue[label] = self.notifies_by_queue.get(label, 0) + 1
            self.notify_threads.add(threading.current_thread().name)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly snapshot (QMP's ``x-query-fastpath`` returns this, plus ``attached``)."""
        with self._lock:
            return {
                "attaches": self.attaches,
                "ioeventfd-notifies": self.ioeventfd_notifies,
                "notifies-by-queue": dict(self.notifies_by_queue),
                "notify-threads": sorted(self.notify_threads),
                "ioeventfd-assigned": self.ioeventfd_assigned,
                "ioeventfd-deassigned": self.ioeventfd_deassigned,
                "irqfd-msis": self.irqfd_msis,
                "msi-fallbacks": self.msi_fallbacks,
                "route-updates": self.route_updates,
                "errors": self.errors,
            }

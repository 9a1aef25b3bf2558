"""The KVM fast path (issue 3, item 3): queue notifies through ioeventfds handled on an IoThread, MSI-X
through irqfds. Device models stay unchanged and accelerator-agnostic (DESIGN.md §1): this package only
moves *where* they are called from and *how* an MSI reaches KVM.

Lifecycle, as the machine drives it: the KVM VM is rebuilt on every guest reset, so the fast path is
attached to one VM and detached before that VM is closed::

    self.fastpath = attach(self)     # in Machine._build_vm, after the vCPUs are created
    self.fastpath.detach()           # in Machine._teardown_vm, before vm.close() (vCPUs already stopped)

Under ``-accel qtest`` nothing attaches (there is no VM); ``REFVM_NO_FASTPATH=1`` makes :func:`attach` a
no-op for A/B measurements (virtio-blk's compiled request path is a separate switch, REFVM_BLK_FASTPATH=0);
``REFVM_STATS=1`` prints the counters to stderr on every detach, and
:func:`register_qmp` adds the ``x-query-fastpath`` QMP command that returns them.

The fast path is an optimisation: if anything in it fails to set up, the error is logged and the machine
runs on the slow path (vCPU exits, KVM_SIGNAL_MSI), which is always still in place underneath.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from typing import Any

from refvm.fastpath.msi import MsiRoutes, default_irqchip_routes
from refvm.fastpath.notify import NotifyEventfds
from refvm.fastpath.stats import FastPathStats
from refvm.iothread import IoThread

__all__ = ["FastPath", "FastPathStats", "attach", "register_qmp", "stats_for", "default_irqchip_routes"]

log = logging.getLogger(__name__)

_STATS: weakref.WeakKeyDictionary[Any, FastPathStats] = weakref.WeakKeyDictionary()
_CURRENT: weakref.WeakKeyDictionary[Any, FastPath] = weakref.WeakKeyDictionary()


def stats_for(machine: Any) -> FastPathStats:
    """The machine's counters, cumulative over every VM it built (created on first use)."""
    stats = _STATS.get(machine)
    if stats is None:
        stats = _STATS[machine] = FastPathStats()
    return stats


class FastPath:
    """What :func:`attach` set up for one VM; :meth:`detach` undoes all of it (idempotent)."""

    def __init__(self, stats: FastPathStats, reason: str = "") -> None:
        self.stats = stats
        #: Why the fast path is off ("" when it is on).
        self.reason = reason
        self.iothread: IoThread | None = None
        self.notify: NotifyEventfds | None = None
        self.msi: MsiRoutes | None = None

    @property
    def enabled(self) -> bool:
        return not self.reason

    def _setup(self, machine: Any) -> None:
        from refvm.kvm import caps

        vm, bus = machine.vm, machine.pci
        if vm.check_extension(caps.KVM_CAP_IOEVENTFD):
            any_length = bool(vm.check_extension(caps.KVM_CAP_IOEVENTFD_ANY_LENGTH))
            self.iothread = IoThread("iothread")
            self.notify = NotifyEventfds(vm, bus, self.iothread, self.stats, any_length=any_length)
        if vm.check_extension(caps.KVM_CAP_IRQFD) and vm.check_extension(caps.KVM_CAP_IRQ_ROUTING):
            self.msi = MsiRoutes(vm, bus, self.stats)

    def detach(self) -> None:
        """Undo everything (call with the vCPUs stopped, before the VM is closed)."""
        notify, msi, iothread = self.notify, self.msi, self.iothread
        self.notify = self.msi = self.iothread = None
        if notify is not None:
            notify.close()
        if msi is not None:
            msi.close()
        if iothread is not None:
            if notify is not None:
                iothread.call_soon(notify.drain)  # what the guest signalled before it stopped still runs
            iothread.close()
        if notify is not None:
            notify.release()
        if self.enabled and os.environ.get("REFVM_STATS") == "1":
            print(f"refvm: fastpath: {self.stats.as_dict()}", file=sys.stderr)

    def __repr__(self) -> str:
        state = "on" if self.enabled else f"off ({self.reason})"
        return f"<FastPath {state} notifies={self.stats.ioeventfd_notifies} irqfd={self.stats.irqfd_msis}>"


def attach(machine: Any) -> FastPath:
    """Set up ioeventfds, the IoThread and irqfd routes for ``machine.vm`` (see the module docstring)."""
    stats = stats_for(machine)
    if os.environ.get("REFVM_NO_FASTPATH") == "1":
        fp = FastPath(stats, "REFVM_NO_FASTPATH=1")
    elif getattr(machine, "vm", None) is None or getattr(machine, "pci", None) is None:
        fp = FastPath(stats, "no KVM VM (qtest accelerator)")
    else:
        fp = FastPath(stats)
        try:
            fp._setup(machine)
        except Exception as err:  # noqa: BLE001 - the slow path is still there: run on it
            log.exception("fastpath: setup failed, running without it")
            fp.detach()
            fp.reason = f"setup failed: {err}"
        else:
            stats.attaches += 1
    _CURRENT[machine] = fp
    return fp


def register_qmp(server: Any, machine: Any) -> None:
    """Add ``x-query-fastpath`` (refvm's own, hence the x- prefix) to a QMP server."""

    def query(_args: dict[str, Any]) -> dict[str, Any]:
        fp = _CURRENT.get(machine)
        reply = stats_for(machine).as_dict()
        reply["attached"] = fp is not None and fp.enabled and fp.iothread is not None
        reply["reason"] = fp.reason if fp is not None else "not attached"
        # virtio-blk's compiled request path (refvm/virtio/devices/blk_fast.py): requests it completed
        pci = getattr(machine, "pci", None)
        functions = pci.devices() if pci is not None else []
        reply["blk-compiled-requests"] = sum(getattr(getattr(fn, "vdev", None), "fast_requests_served", 0)
                                             for _slot, _func, fn in functions)
        return reply

    server.register("x-query-fastpath", query)

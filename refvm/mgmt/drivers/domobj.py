"""A domain inside a driver: persistent and live definitions, state, its hypervisor, and its job lock.

Jobs follow libvirt's model: one state-changing job per domain at a time; a second waits up to ``job_timeout``
seconds and then fails with VIR_ERR_OPERATION_TIMEOUT "cannot acquire state change lock".
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from refvm.mgmt import vir
from refvm.mgmt.domain_model import Domain
from refvm.mgmt.drivers.base import DomainRef
from refvm.mgmt.errors import VIR_ERR_OPERATION_TIMEOUT, VIR_FROM_QEMU, VirError
from refvm.mgmt.vmm import Vmm


@dataclass
class DomainObj:
    definition: Domain | None            # persistent config (None: transient)
    live: Domain | None = None           # the running copy (None: inactive)
    state: int = vir.VIR_DOMAIN_SHUTOFF
    reason: int = vir.VIR_DOMAIN_SHUTOFF_UNKNOWN
    autostart: bool = False
    vmm: Vmm | None = None
    job: threading.Lock = field(default_factory=threading.Lock)
    job_name: str | None = None
    # set while refvmd itself stops the hypervisor, so its monitor closing is not taken for a crash
    stopping: bool = False
    got_shutdown: bool = False
    starting: bool = False
    paused_by_user: bool = False
    fake_reboot: bool = False            # virDomainReboot asked: the next guest shutdown becomes reset + cont
    migration: Any = None                # the MigrationJob while a migration holds the job (drivers/migration_job.py)
    migrate_speed: int | None = None     # virDomainMigrateSetMaxSpeed, MiB/s (None: unlimited)

    @property
    def current(self) -> Domain:
        dom = self.live or self.definition
        assert dom is not None
        return dom

    @property
    def name(self) -> str:
        return self.current.name

    @property
    def uuid(self) -> str:
        return self.current.uuid

    def active(self) -> bool:
        return self.live is not None

    def ref(self) -> DomainRef:
        dom = self.current
        return DomainRef(dom.name, dom.uuid_bytes(), dom.id if self.live is not None else -1)

    @contextlib.contextmanager
    def begin_job(self, name: str, timeout: float) -> Iterator[None]:
        """Hold this domain's job lock for one operation (libvirt's virDomainObjBeginJob)."""
        if not self.job.acquire(timeout=timeout):
            held = f" (held by monitor={self.job_name})" if self.job_name else ""
            raise VirError(VIR_ERR_OPERATION_TIMEOUT, f"cannot acquire state change lock{held}",
                           domain=VIR_FROM_QEMU)
        self.job_name = name
        try:
            yield
        finally:
            self.job_name = None
            self.job.release()

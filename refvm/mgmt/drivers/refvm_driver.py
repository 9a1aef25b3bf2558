"""``refvm:///session|system``: domains run as ``python -m refvm`` processes (KVM only)."""
from __future__ import annotations

from refvm.mgmt.drivers.vmm_api import VmmDriver


def _version_number(text: str) -> int:
    parts = [int(p) for p in (text.split(".") + ["0", "0"])[:3]]
    return parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]


class RefvmDriver(VmmDriver):
    kind = "refvm"
    type_name = "REFVM"

    def version(self) -> int:
        from refvm.cli import VERSION  # the CLI's constant only: refvm/mgmt never imports the machine
        return _version_number(VERSION)

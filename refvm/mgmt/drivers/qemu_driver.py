"""``qemu:///session|system`` served by refvmd: the same driver code runs a real qemu-system-x86_64."""
from __future__ import annotations

import functools
import re
import shutil
import subprocess

from refvm.mgmt.drivers.refvm_driver import _version_number
from refvm.mgmt.drivers.vmm_api import VmmDriver


@functools.lru_cache(maxsize=1)
def qemu_version() -> int:
    """QEMU's version as libvirt encodes it (7.2.0 -> 7002000), 0 when no QEMU is installed."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return 0
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"version (\d+\.\d+(\.\d+)?)", out)
    return _version_number(match.group(1)) if match else 0


class QemuDriver(VmmDriver):
    kind = "qemu"
    type_name = "QEMU"
    late_block_activate = True

    def version(self) -> int:
        return qemu_version()

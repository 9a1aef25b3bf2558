"""Guest loaders: they write an image into guest memory and describe the vCPU state to enter it.

No KVM here: the Machine applies the returned :class:`BootCpuState` to vCPU 0.
"""

from refvm.boot.cpu_state import BootCpuState, Segment
from refvm.boot.e820 import E820Entry, default_e820
from refvm.boot.errors import BootError
from refvm.boot.linux import load_linux
from refvm.boot.multiboot import load_multiboot

__all__ = [
    "BootCpuState",
    "BootError",
    "E820Entry",
    "Segment",
    "default_e820",
    "load_linux",
    "load_multiboot",
]

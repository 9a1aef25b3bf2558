"""Kvm: the /dev/kvm system handle (API version, capabilities, supported CPUID, VM creation)."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from . import ioctls as I
from ._ffi import ffi
from ._sys import ioctl_int, ioctl_ptr
from .errors import KvmError
from .types import CpuidEntry, read_cpuid2

if TYPE_CHECKING:
    from .vm import Vm

KVM_API_VERSION = 12
DEFAULT_PATH = "/dev/kvm"


class Kvm:
    """An open /dev/kvm. Cheap to create; close it (or use ``with``) when done."""

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        self.path = path
        self._fd = -1
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmError(
                f"open {path}", errno.ENOENT,
                "no KVM on this host (load kvm_intel / kvm_amd, or kvm_pvm for a software KVM)",
            ) from None  # fmt: skip
        except PermissionError as e:
            raise KvmError(
                f"open {path}", e.errno or errno.EACCES,
                "no permission: run as root or join the 'kvm' group (chgrp kvm /dev/kvm; chmod 660 /dev/kvm)",
            ) from None  # fmt: skip
        except OSError as e:
            raise KvmError(f"open {path}", e.errno or 0) from None
        self.api_version: int = ioctl_int(self._fd, I.KVM_GET_API_VERSION)
        if self.api_version != KVM_API_VERSION:
            self.close()
            raise KvmError(
                "KVM_GET_API_VERSION", errno.EINVAL,
                f"API version {self.api_version}, refvm needs {KVM_API_VERSION}",
            )  # fmt: skip
        self._mmap_size: int | None = None

    @property
    def fd(self) -> int:
        return self._fd

    def fileno(self) -> int:
        return self._fd

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 if absent, else 1 or a capability-specific value (e.g. a count)."""
        return ioctl_int(self._fd, I.KVM_CHECK_EXTENSION, cap)

    @property
    def vcpu_mmap_size(self) -> int:
        """Size of the per-vCPU mmap (kvm_run page plus PIO data and coalesced MMIO ring pages)."""
        if self._mmap_size is None:
            self._mmap_size = ioctl_int(self._fd, I.KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def supported_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer while the kernel answers E2BIG."""
        return read_cpuid2(self._fd, I.KVM_GET_SUPPORTED_CPUID)

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU (asked with room for none
        first; the kernel answers E2BIG with the count)."""
        probe = ffi.new("struct kvm_msr_list *", {"nmsrs": 0, "indices": 0})
        try:
            ioctl_ptr(self._fd, I.KVM_GET_MSR_INDEX_LIST, probe)
            return []
        except KvmError as e:
            if e.errno != errno.E2BIG:
                raise
        n = probe.nmsrs
        buf = ffi.new("struct kvm_msr_list *", {"nmsrs": n, "indices": n})
        ioctl_ptr(self._fd, I.KVM_GET_MSR_INDEX_LIST, buf)
        return [int(buf.indices[i]) for i in range(buf.nmsrs)]

    def create_vm(self, machine_type: int = 0) -> Vm:
        """KVM_CREATE_VM."""
        from .vm import Vm

        return Vm(self, ioctl_int(self._fd, I.KVM_CREATE_VM, machine_type))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

"""Topology rules the guest reads in CPUID (Intel SDM vol. 2A CPUID leaves 1, 4, 0xB; vol. 3A 8.9 "Programming
considerations for hardware multi-threading capable processors"; AMD APM vol. 3 E.4.7, E.4.15), and QEMU
7.2's choices where the manuals leave the VMM room (which caches a core's threads share)."""

from __future__ import annotations

from dataclasses import dataclass


def width(count: int) -> int:
    """Bits of an APIC id that number `count` items: ceil(log2(count)) (SDM 8.9.1)."""
    return (count - 1).bit_length() if count > 1 else 0


@dataclass(frozen=True)
class Smp:
    line: str
    cpus: int
    sockets: int
    dies: int
    cores: int
    threads: int

    @property
    def per_package(self) -> int:
        """Logical processors in one package."""
        return self.dies * self.cores * self.threads

    @property
    def smt_shift(self) -> int:
        return width(self.threads)

    @property
    def package_shift(self) -> int:
        return width(self.threads) + width(self.cores) + width(self.dies)


#: -smp lines and the topology QEMU 7.2's rules give (cores preferred over sockets for missing values).
TOPOLOGIES = (
    Smp("2,sockets=1,cores=2,threads=1", 2, 1, 1, 2, 1),
    Smp("2,sockets=1,cores=1,threads=2", 2, 1, 1, 1, 2),
    Smp("1,sockets=2,cores=3,threads=2,maxcpus=12", 1, 2, 1, 3, 2),
    Smp("2,sockets=2", 2, 2, 1, 1, 1),
)

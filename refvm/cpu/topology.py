"""-smp: QEMU 7.2's topology rules (defaults, validation texts) and the APIC ids they give.

QEMU 7.2 on the pc machine types from 6.2 on prefers cores over sockets when filling in what the user left
out; an explicit 0 is accepted with a deprecation warning and treated as "not given". APIC ids pack the
thread, core, die and socket number into fields just wide enough for each count (Intel SDM vol. 3A 8.9.1).
"""

from __future__ import annotations

from dataclasses import dataclass

#: QEMU 7.2's pc-i440fx-7.2 limit (`-smp 300` is refused with this number).
MAX_CPUS = 255
MACHINE = "pc-i440fx-7.2"
INVALID = "Invalid CPU topology: "
ZERO_WARNING = "Deprecated CPU topology (considered invalid): CPU topology parameters must be greater than zero"
KEYS = ("cpus", "sockets", "dies", "cores", "threads", "maxcpus")


class TopologyError(ValueError):
    """A -smp value QEMU refuses; the text is QEMU's."""


@dataclass(frozen=True)
class Topology:
    cpus: int = 1
    sockets: int = 1
    dies: int = 1
    cores: int = 1
    threads: int = 1
    maxcpus: int = 1

    @property
    def cores_per_package(self) -> int:
        """Cores in one socket (QEMU's nr_cores: dies x cores)."""
        return self.dies * self.cores

    @property
    def thread_width(self) -> int:
        return bit_width(self.threads)

    @property
    def core_offset(self) -> int:
        return self.thread_width

    @property
    def die_offset(self) -> int:
        return self.core_offset + bit_width(self.cores)

    @property
    def package_offset(self) -> int:
        return self.die_offset + bit_width(self.dies)

    def ids(self, index: int) -> tuple[int, int, int, int]:
        """(socket, die, core, thread) of vCPU number `index`."""
        thread = index % self.threads
        core = index // self.threads % self.cores
        die = index // (self.threads * self.cores) % self.dies
        socket = index // (self.threads * self.cores * self.dies)
        return socket, die, core, thread

    def apic_id(self, index: int) -> int:
        socket, die, core, thread = self.ids(index)
        return (socket << self.package_offset) | (die << self.die_offset) | (core << self.core_offset) | thread


def bit_width(count: int) -> int:
    """Bits needed to number `count` items (0 for one item)."""
    return (count - 1).bit_length() if count > 1 else 0


def parse_smp(props: dict[str, str]) -> tuple[Topology, list[str]]:
    """Topology from -smp's key=value pairs; returns it with QEMU's warning lines. Raises TopologyError."""
    warnings: list[str] = []
    values: dict[str, int] = {}
    for key, text in props.items():
        if key not in KEYS:
            raise TopologyError(f"Parameter 'smp.{key}' is unexpected")
        try:
            value = int(text, 10)
        except ValueError:
            raise TopologyError(f"Parameter 'smp.{key}' expects integer") from None
        if value < 0:
            raise TopologyError(f"Parameter 'smp.{key}' expects integer")
        if value == 0:
            warnings.append(ZERO_WARNING)
            continue
        values[key] = value
    cpus, maxcpus = values.get("cpus", 0), values.get("maxcpus", 0)
    sockets, dies, cores, threads = (values.get(k, 0) for k in ("sockets", "dies", "cores", "threads"))
    dies = dies or 1
    if not cpus and not maxcpus:
        sockets, cores, threads = sockets or 1, cores or 1, threads or 1
    else:
        maxcpus = maxcpus or cpus
        if not cores:  # since 6.2 the pc machines prefer cores over sockets
            sockets, threads = sockets or 1, threads or 1
            cores = maxcpus // (sockets * dies * threads)
        elif not sockets:
            threads = threads or 1
            sockets = maxcpus // (dies * cores * threads)
        threads = threads or maxcpus // (sockets * dies * cores)
    total = sockets * dies * cores * threads
    maxcpus = maxcpus or total
    cpus = cpus or maxcpus
    product = f"sockets ({sockets}) * dies ({dies}) * cores ({cores}) * threads ({threads})"
    if total != maxcpus:
        raise TopologyError(f"{INVALID}product of the hierarchy must match maxcpus: {product} != maxcpus ({maxcpus})")
    if maxcpus < cpus:
        raise TopologyError(
            f"{INVALID}maxcpus must be equal to or greater than smp: {product} == maxcpus ({maxcpus})"
            f" < smp_cpus ({cpus})"
        )
    if maxcpus > MAX_CPUS:
        raise TopologyError(f"Invalid SMP CPUs {maxcpus}. The max CPUs supported by machine '{MACHINE}' is {MAX_CPUS}")
    return Topology(cpus, sockets, dies, cores, threads, maxcpus), warnings

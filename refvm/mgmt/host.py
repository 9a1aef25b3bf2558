"""This host as libvirt describes it: virNodeInfo and the <capabilities> document, read from /proc and uname.

Drivers return these from node_info() / capabilities_xml() / hostname(); the guest part of the capabilities
(emulator, domain types, machines) is the driver's, passed in.
"""
from __future__ import annotations

import os
import platform
import socket
import uuid
from xml.sax.saxutils import escape

from refvm.mgmt.drivers.base import NodeInfo


def hostname() -> str:
    """virConnectGetHostname: the fully qualified name where there is one, as libvirt's virGetHostname."""
    name = socket.gethostname()
    if "." in name:
        return name
    try:
        fqdn = socket.getfqdn(name)
    except OSError:
        return name
    return fqdn if fqdn and not fqdn.startswith("localhost") else name


def _cpuinfo() -> list[dict[str, str]]:
    cpus: list[dict[str, str]] = [{}]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    cpus.append({})
                    continue
                key, _, value = line.partition(":")
                cpus[-1][key.strip()] = value.strip()
    except OSError:
        pass
    return [c for c in cpus if c]


def _mem_total_kib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def node_info() -> NodeInfo:
    """virNodeGetInfo as libvirt computes it on Linux: model is the machine (uname -m), memory in KiB."""
    cpus = _cpuinfo()
    count = len(cpus) or os.cpu_count() or 1
    sockets = len({c.get("physical id", "0") for c in cpus}) or 1
    cores = len({(c.get("physical id", "0"), c.get("core id", str(i))) for i, c in enumerate(cpus)}) // sockets or 1
    threads = max(1, count // (sockets * cores))
    try:
        mhz = int(float(cpus[0].get("cpu MHz", "0"))) if cpus else 0
    except ValueError:
        mhz = 0
    return NodeInfo(model=platform.machine(), memory=_mem_total_kib(), cpus=count, mhz=mhz, nodes=1,
                    sockets=sockets, cores=cores, threads=threads)


def host_uuid() -> str:
    """A stable host UUID: /etc/machine-id as libvirt falls back to, else one derived from the hostname."""
    try:
        with open("/etc/machine-id") as f:
            return str(uuid.UUID(f.read().strip()))
    except (OSError, ValueError):
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, socket.gethostname()))


def capabilities_xml(emulator: str, domain_types: tuple[str, ...] = ("kvm",),
                     machines: tuple[str, ...] = ("pc",)) -> str:
    """The <capabilities> document: the host CPU and topology, and one x86_64 hvm guest with these domain types."""
    info = node_info()
    arch = platform.machine()
    cpu_model = escape(_cpuinfo()[0].get("model name", "")) if _cpuinfo() else ""
    machine_lines = "".join(f"      <machine>{escape(m)}</machine>\n" for m in machines)
    domain_lines = "".join(f"      <domain type='{escape(t)}'/>\n" for t in domain_types)
    return (
        "<capabilities>\n\n"
        "  <host>\n"
        f"    <uuid>{host_uuid()}</uuid>\n"
        "    <cpu>\n"
        f"      <arch>{arch}</arch>\n"
        f"      <topology sockets='{info.sockets}' dies='1' cores='{info.cores}' threads='{info.threads}'/>\n"
        "    </cpu>\n"
        "    <power_management/>\n"
        "    <iommu support='no'/>\n"
        "    <migration_features>\n"
        "      <live/>\n"
        "      <uri_transports>\n"
        "        <uri_transport>tcp</uri_transport>\n"
        "      </uri_transports>\n"
        "    </migration_features>\n"
        f"    <!-- {cpu_model} -->\n"
        "  </host>\n\n"
        "  <guest>\n"
        "    <os_type>hvm</os_type>\n"
        "    <arch name='x86_64'>\n"
        "      <wordsize>64</wordsize>\n"
        f"      <emulator>{escape(emulator)}</emulator>\n"
        f"{machine_lines}{domain_lines}"
        "    </arch>\n"
        "    <features>\n"
        "      <acpi default='on' toggle='yes'/>\n"
        "      <apic default='on' toggle='no'/>\n"
        "    </features>\n"
        "  </guest>\n\n"
        "</capabilities>\n"
    )

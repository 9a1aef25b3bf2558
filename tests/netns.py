"""Hosts on one machine for the migration tests (issue 12): network namespaces joined by veth pairs to a bridge
that lives in a namespace of its own, with addresses in a private subnet that exists only inside them.

Every name carries the test process's pid, so parallel runs do not collide; ``close`` deletes the namespaces
(their veth ends and the bridge go with them). Root and iproute2 are needed.
"""
from __future__ import annotations

import os
import subprocess

SUBNET = "10.213.0"


def ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=20)


class Subnet:
    """``count`` hosts: namespace ``hosts[i]`` has address ``address(i)`` on veth ``h{i}``, bridged in ``bridge_ns``."""

    def __init__(self, count: int) -> None:
        tag = os.getpid()
        self.bridge_ns = f"rvmbr{tag}"
        self.hosts = [f"rvm{tag}h{i}" for i in range(count)]
        self._created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for ns in [self.bridge_ns, *self.hosts]:
            ip("netns", "add", ns)
            self._created.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", "br0", "type", "bridge", ns=self.bridge_ns)
        ip("link", "set", "br0", "up", ns=self.bridge_ns)
        for i, ns in enumerate(self.hosts):
            host_end, bridge_end = f"rvm{os.getpid() % 100000}a{i}", f"rvm{os.getpid() % 100000}b{i}"
            ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
            ip("link", "set", host_end, "netns", ns, "name", f"h{i}")
            ip("link", "set", bridge_end, "netns", self.bridge_ns, "name", f"p{i}")
            ip("addr", "add", f"{self.address(i)}/24", "dev", f"h{i}", ns=ns)
            ip("link", "set", f"h{i}", "up", ns=ns)
            ip("link", "set", f"p{i}", "master", "br0", "up", ns=self.bridge_ns)

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program on host ``i``."""
        return ["ip", "netns", "exec", self.hosts[i]]

    def cut(self, i: int) -> None:
        """Pull host ``i``'s cable: its bridge port goes down."""
        ip("link", "set", f"p{i}", "down", ns=self.bridge_ns)

    def close(self) -> None:
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self._created.clear()

"""QMP descriptor passing: getfd/closefd (named descriptors) and add-fd/remove-fd/query-fdsets (fd sets), with
the descriptors sent as SCM_RIGHTS ancillary data on the QMP socket (refvm.monitor.sockets collects them).

libvirt opens files and taps with its own privileges and hands the descriptors to the VMM this way (and with
-add-fd at start). Texts and reply shapes are QEMU 7.2's. The store is per machine, shared by all its monitors.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from refvm.monitor.qmp import QmpError, QmpServer

__all__ = ["FdStore", "FdCommands"]

_NO_FD = "No file descriptor supplied via SCM_RIGHTS"


class FdStore:
    """Named descriptors and fd sets of one machine (seeded with -add-fd's sets)."""

    def __init__(self, fd_sets: dict[int, list[tuple[int, str]]] | None = None) -> None:
        self.lock = threading.Lock()
        self.named: dict[str, int] = {}
        self.sets: dict[int, list[tuple[int, str]]] = {k: list(v) for k, v in (fd_sets or {}).items()}

    def close(self) -> None:
        with self.lock:
            for fd in [*self.named.values(), *(f for entries in self.sets.values() for f, _ in entries)]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.named.clear()
            self.sets.clear()


def store_of(machine: Any) -> FdStore:
    """The machine's FdStore, created on first use from its -add-fd sets."""
    store = getattr(machine, "fd_store", None)
    if store is None:
        plat = getattr(getattr(machine, "config", None), "platform", None)
        store = FdStore(getattr(plat, "fd_sets", None))
        machine.fd_store = store
    return store


class FdCommands:
    """Registers getfd, closefd, add-fd, remove-fd and query-fdsets on one server."""

    def __init__(self, server: QmpServer, store: FdStore) -> None:
        self.server = server
        self.store = store
        server.register("getfd", self.getfd, args={"fdname": str})
        server.register("closefd", self.closefd, args={"fdname": str})
        server.register("add-fd", self.add_fd, args={"*fdset-id": int, "*opaque": str})
        server.register("remove-fd", self.remove_fd, args={"fdset-id": int, "*fd": int})
        server.register("query-fdsets", self.query_fdsets)

    def _take(self) -> int:
        conn = self.server.current
        fd = conn.take_fd() if conn is not None else None
        if fd is None:
            raise QmpError(_NO_FD)
        return fd

    def getfd(self, args: dict[str, Any]) -> dict[str, Any]:
        name = args["fdname"]
        fd = self._take()
        if name[:1].isdigit():
            os.close(fd)
            raise QmpError("Parameter 'fdname' expects a name not starting with a digit")
        with self.store.lock:
            old = self.store.named.pop(name, None)
            self.store.named[name] = fd
        if old is not None:
            os.close(old)
        return {}

    def closefd(self, args: dict[str, Any]) -> dict[str, Any]:
        name = args["fdname"]
        with self.store.lock:
            fd = self.store.named.pop(name, None)
        if fd is None:
            raise QmpError(f"File descriptor named '{name}' not found")
        os.close(fd)
        return {}

    def add_fd(self, args: dict[str, Any]) -> dict[str, Any]:
        fd = self._take()
        with self.store.lock:
            fdset = args.get("fdset-id")
            if fdset is None:
                fdset = next(i for i in range(len(self.store.sets) + 1) if i not in self.store.sets)
            elif fdset < 0:
                os.close(fd)
                raise QmpError("Parameter 'fdset-id' expects a non-negative value")
            self.store.sets.setdefault(fdset, []).append((fd, args.get("opaque", "")))
        return {"fdset-id": fdset, "fd": fd}

    def remove_fd(self, args: dict[str, Any]) -> dict[str, Any]:
        fdset, which = args["fdset-id"], args.get("fd")
        with self.store.lock:
            entries = self.store.sets.get(fdset, [])
            gone = [(f, o) for f, o in entries if which is None or f == which]
            if not gone:
                name = f"fdset-id:{fdset}" if which is None else f"fdset-id:{fdset}, fd:{which}"
                raise QmpError(f"File descriptor named '{name}' not found")
            remaining = [e for e in entries if e not in gone]
            if remaining:
                self.store.sets[fdset] = remaining
            else:
                del self.store.sets[fdset]
        for f, _ in gone:
            with contextlib.suppress(OSError):
                os.close(f)
        return {}

    def query_fdsets(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        with self.store.lock:
            return [
                {"fds": [{"fd": f, **({"opaque": o} if o else {})} for f, o in entries], "fdset-id": fdset}
                for fdset, entries in sorted(self.store.sets.items())
            ]

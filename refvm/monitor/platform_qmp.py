"""Registers the management-tool QMP commands of issue 8 on one server: QOM and type introspection, descriptor
passing, accelerator/chardev/iothread queries, human-monitor-command, and query-qmp-schema (which describes
whatever the server has registered when it is asked, so it also covers commands other modules add)."""

from __future__ import annotations

from typing import Any

from refvm.monitor.fd_qmp import FdCommands, store_of
from refvm.monitor.hmp import HmpCommands
from refvm.monitor.info_qmp import InfoCommands
from refvm.monitor.qmp import QmpServer
from refvm.monitor.qom_qmp import QomQmpCommands
from refvm.monitor.schema import SchemaCommands

__all__ = ["register_platform_qmp"]


def register_platform_qmp(server: QmpServer, machine: Any) -> None:
    QomQmpCommands(server, machine)
    FdCommands(server, store_of(machine))
    InfoCommands(server, machine)
    HmpCommands(server, machine)
    SchemaCommands(server)

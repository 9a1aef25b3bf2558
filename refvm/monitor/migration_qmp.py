"""QMP migration commands with QEMU 7.2's names, arguments and error texts: migrate, migrate-incoming,
migrate_cancel, query-migrate.  The work is in refvm/migration/job.py."""
from __future__ import annotations

from typing import Any

from refvm.migration.channel import split_uri
from refvm.monitor.qmp import QmpError, QmpServer

__all__ = ["MigrationCommands"]


class MigrationCommands:
    """Registers the migration commands of one machine (its `migration` job) on a QMP server."""

    def __init__(self, server: QmpServer, machine: Any) -> None:
        self.machine = machine
        server.register("migrate", self.migrate,
                        args={"uri": str, "*blk": bool, "*inc": bool, "*detach": bool, "*resume": bool})
        server.register("migrate-incoming", self.migrate_incoming, args={"uri": str})
        server.register("migrate_cancel", self.migrate_cancel)
        server.register("query-migrate", lambda a: machine.migration.query())

    def migrate(self, args: dict[str, Any]) -> dict[str, Any]:
        job = self.machine.migration
        if args.get("blk") or args.get("inc"):
            raise QmpError("QEMU compiled without old-style (blk/-b, inc/-i) block migration")
        if args.get("resume"):
            raise QmpError("Cannot resume if there is no paused migration")
        if job.active:
            raise QmpError("There's a migration process in progress")
        if self.machine.status() == "inmigrate":
            raise QmpError("Guest is waiting for an incoming migration")
        try:
            split_uri(args["uri"])
        except ValueError:
            raise QmpError("Parameter 'uri' expects a valid migration protocol") from None
        job.start_outgoing(args["uri"])
        return {}

    def migrate_incoming(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.machine.config.incoming != "defer":
            raise QmpError("The incoming migration has already been started"
                           if self.machine.config.incoming else "'-incoming' was not specified on the command line")
        if self.machine.migration.status != "none":
            raise QmpError("The incoming migration has already been started")
        try:
            self.machine.migration.start_incoming(args["uri"])
        except ValueError:
            raise QmpError(f"unknown migration protocol: {args['uri']}") from None
        except OSError as err:
            raise QmpError(f"Failed to bind socket: {err.strerror or err}") from None
        return {}

    def migrate_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        self.machine.migration.cancel()
        return {}

"""QMP migration commands with QEMU 7.2's names, arguments and error texts: migrate, migrate-incoming,
migrate_cancel, migrate-continue, query-migrate, and the capabilities and parameters (set and query).
The work is in refvm/migration/job.py, the options' rules in refvm/migration/options.py."""
from __future__ import annotations

from typing import Any

from refvm.migration.channel import split_uri
from refvm.migration.options import PARAMETERS, STATUSES, OptionError
from refvm.monitor.fd_qmp import store_of
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
        server.register("migrate-continue", self.migrate_continue, args={"state": str})
        server.register("query-migrate", lambda a: machine.migration.query())
        server.register("migrate-set-capabilities", self.set_capabilities, args={"capabilities": list})
        server.register("query-migrate-capabilities", lambda a: machine.migration.options.query_capabilities())
        # object: the members are checked as uint64 in options.py, with QEMU's texts
        server.register("migrate-set-parameters", self.set_parameters, args={f"*{p}": object for p in PARAMETERS})
        server.register("query-migrate-parameters", lambda a: machine.migration.options.query_parameters())

    def _named_fd(self, name: str) -> int:
        """fd:NAME: the descriptor given to getfd under NAME, taken out of the store (the channel owns it)."""
        store = store_of(self.machine)
        with store.lock:
            return store.named.pop(name)

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
        if self.machine.status() == "postmigrate":
            raise QmpError("Can't migrate the vm that was paused due to previous migration")
        try:
            split_uri(args["uri"])
        except ValueError:
            raise QmpError("Parameter 'uri' expects a valid migration protocol") from None
        try:
            job.start_outgoing(args["uri"], self._named_fd)
        except KeyError:
            raise QmpError(job.error) from None
        return {}

    def migrate_incoming(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.machine.config.incoming != "defer":
            raise QmpError("The incoming migration has already been started"
                           if self.machine.config.incoming else "'-incoming' was not specified on the command line")
        if self.machine.migration.incoming:
            raise QmpError("The incoming migration has already been started")
        uri = args["uri"]
        try:
            self.machine.migration.start_incoming(uri, self._named_fd)
        except ValueError:
            raise QmpError(f"unknown migration protocol: {uri}") from None
        except KeyError:
            raise QmpError(f"File descriptor named '{uri.partition(':')[2]}' has not been found") from None
        except OSError as err:
            raise QmpError(f"Failed to bind socket: {err.strerror or err}") from None
        return {}

    def migrate_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        self.machine.migration.cancel()
        return {}

    def migrate_continue(self, args: dict[str, Any]) -> dict[str, Any]:
        state = args["state"]
        if state not in STATUSES:
            raise QmpError(f"Parameter 'state' does not accept value '{state}'")
        try:
            self.machine.migration.switchover(state)
        except ValueError as err:
            raise QmpError(str(err)) from None
        return {}

    def set_capabilities(self, args: dict[str, Any]) -> dict[str, Any]:
        job = self.machine.migration
        try:
            job.options.check_capabilities(args["capabilities"])
            if job.active:  # checked after the entries, as QEMU does
                raise QmpError("There's a migration process in progress")
            job.options.set_capabilities(args["capabilities"])
        except OptionError as err:
            raise QmpError(str(err)) from None
        return {}

    def set_parameters(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            self.machine.migration.options.set_parameters(args)
        except OptionError as err:
            raise QmpError(str(err)) from None
        return {}

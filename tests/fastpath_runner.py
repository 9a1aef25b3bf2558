"""`python tests/fastpath_runner.py ARGS...` = `python -m refvm ARGS...` with the fast path attached.

Until ``refvm/machine.py`` calls :func:`refvm.fastpath.attach` itself, the fast-path tests start refvm
through this wrapper, which adds exactly the lines the machine is meant to have (attach after the vCPUs
are created, detach before the VM is closed, ``x-query-fastpath`` on every QMP server). Once the machine
does it, the wrapper changes nothing.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refvm import fastpath  # noqa: E402
from refvm.machine import Machine  # noqa: E402
from refvm.monitor import machine_qmp  # noqa: E402


def _install() -> None:
    if "fastpath" in inspect.getsource(Machine._build_vm):
        return  # the machine wires it itself
    build, teardown = Machine._build_vm, Machine._teardown_vm
    commands_init = machine_qmp.DeviceCommands.__init__

    def _build_vm(self: Machine) -> None:
        build(self)
        self.fastpath = fastpath.attach(self)

    def _teardown_vm(self: Machine) -> None:
        fp = getattr(self, "fastpath", None)
        if fp is not None:
            self.fastpath = None
            fp.detach()
        teardown(self)

    def _commands(self, server, machine) -> None:  # type: ignore[no-untyped-def]
        commands_init(self, server, machine)
        fastpath.register_qmp(server, machine)

    Machine._build_vm = _build_vm  # type: ignore[method-assign]
    Machine._teardown_vm = _teardown_vm  # type: ignore[method-assign]
    machine_qmp.DeviceCommands.__init__ = _commands  # type: ignore[method-assign]


if __name__ == "__main__":
    _install()
    from refvm.cli import main

    sys.exit(main())

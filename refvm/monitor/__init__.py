"""refvm's monitors: the qtest text protocol and QMP, each served on a unix socket.

Both speak QEMU's wire formats exactly, so the same test clients (libqtest-style drivers,
the ``qemu.qmp`` library) drive refvm and a real QEMU.
"""

from refvm.monitor.qmp import QmpError, QmpMachineCommands, QmpServer
from refvm.monitor.qtest import QtestAddress, QtestServer, parse_qtest_address

__all__ = [
    "QmpError",
    "QmpMachineCommands",
    "QmpServer",
    "QtestAddress",
    "QtestServer",
    "parse_qtest_address",
]

"""`refvm virsh ARGS`: the distribution's own virsh, pointed at the user's refvmd socket. No virsh of ours."""
from __future__ import annotations

import os
import shutil
import sys

from refvm.mgmt.daemon import default_socket


def default_uri() -> str:
    """refvm+unix:///session?socket=... for the socket `refvmd` listens on by default (REFVMD_SOCKET wins)."""
    sock = os.environ.get("REFVMD_SOCKET") or str(default_socket())
    return f"refvm+unix:///session?socket={sock}"


def run_virsh(args: list[str]) -> int:
    """Replace this process with virsh -c URI ARGS (an explicit -c/--connect in ARGS is left to virsh)."""
    virsh = shutil.which("virsh")
    if virsh is None:
        print("refvm: virsh: not found (install libvirt-clients)", file=sys.stderr)
        return 127
    explicit = any(a in ("-c", "--connect") or a.startswith("--connect=") for a in args)
    argv = [virsh] + ([] if explicit else ["-c", default_uri()]) + args
    os.execv(virsh, argv)
    return 127  # not reached

"""CPU QOM paths against a live QEMU 7.2 ``pc``: the device tree's CPU nodes and the ``qom-path`` of
query-cpus-fast and query-hotpluggable-cpus, for -smp 1, 2 and 4.

QEMU numbers /machine/unattached as it creates objects: CPU 0, the kvmvapic of its APIC, then CPUs 1.., so
CPU K>0 is ``device[K+1]``; under ``-accel kvm`` a kvmclock follows the CPUs and shifts every later built-in.
refvm runs in this process under qtest with a real QMP server; QEMU runs ``-S`` with ``-qmp stdio``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from refvm.cli import parse_args
from refvm.devices.tree import UNATTACHED, pc_unattached_paths
from refvm.machine import Machine
from refvm.monitor.cpu_qmp import CpuCommands
from refvm.monitor.qmp import QmpServer
from tests.conftest import kvm_available, require

QEMU = shutil.which("qemu-system-x86_64")
QUERIES = ("query-cpus-fast", "query-hotpluggable-cpus")


def _qemu(accel: str, smp: int) -> tuple[dict[str, str], list[Any]]:
    """QEMU's /machine/unattached children (path -> type) and its replies to QUERIES."""
    require(QEMU is not None, "qemu-system-x86_64 is not installed")
    cmds = [{"execute": "qmp_capabilities"}, {"execute": "qom-list", "arguments": {"path": UNATTACHED}},
            *({"execute": q} for q in QUERIES), {"execute": "quit"}]  # fmt: skip
    proc = subprocess.run([QEMU, "-machine", "pc", "-accel", accel, "-smp", str(smp), "-nodefaults", "-S",
                           "-display", "none", "-qmp", "stdio"], input="".join(json.dumps(c) + "\n" for c in cmds),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    lists = [r["return"] for r in map(json.loads, proc.stdout.splitlines()) if isinstance(r.get("return"), list)]
    assert len(lists) == 3, proc.stdout + proc.stderr
    children = {f"{UNATTACHED}/{p['name']}": p["type"][len("child<"):-1]
                for p in lists[0] if p["type"].startswith("child<")}  # fmt: skip
    return children, lists[1:]


@pytest.fixture
def refvm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Machine, QmpServer]]:
    smp = request.param
    argv = ["-accel", "qtest", "-qtest", f"unix:{tmp_path}/qtest.sock", "-nodefaults", "-smp", str(smp)]
    machine = Machine(parse_args(argv).config)
    server = QmpServer(str(tmp_path / "qmp.sock"), server=True)
    CpuCommands(server, machine)
    server.start()
    yield machine, server
    server.close()
    machine._close_chardevs()


def _ask(path: str) -> list[Any]:
    async def session() -> list[Any]:
        client = QMPClient("cpu-paths")
        await client.connect(path)
        try:
            return [await client.execute(q) for q in QUERIES]
        finally:
            await client.disconnect()

    return asyncio.run(session())


def _cpus(cpus: list[dict[str, Any]]) -> list[tuple[int, str, dict[str, int]]]:
    return [(c["cpu-index"], c["qom-path"], c["props"]) for c in cpus]


@pytest.mark.qemu
@pytest.mark.parametrize("refvm", [1, 2, 4], indirect=True, ids=lambda n: f"smp{n}")
def test_cpu_qom_paths_match_qemu(refvm: tuple[Machine, QmpServer]) -> None:
    machine, server = refvm
    smp = machine.config.smp
    children, (qemu_cpus, qemu_slots) = _qemu("tcg", smp)
    cpu_paths = sorted(p for p, t in children.items() if t.endswith("-x86_64-cpu"))
    assert len(cpu_paths) == smp
    # the tree's CPU nodes are QEMU's CPU objects, with QEMU's types
    tree_cpus = {n.path: n.type_name for n in machine.devices if n.type_name.endswith("-x86_64-cpu")}
    assert tree_cpus == {p: children[p] for p in cpu_paths}
    assert children[f"{UNATTACHED}/device[1]"] == "kvmvapic"
    # and QMP names them by cpu-index as QEMU does
    cpus, slots = _ask(server.path)
    assert _cpus(cpus) == _cpus(qemu_cpus)
    assert slots == qemu_slots


@pytest.mark.qemu
@pytest.mark.kvm
def test_kvm_numbering_adds_kvmclock_after_the_cpus() -> None:
    """Under -accel kvm the CPUs keep their paths and a kvmclock shifts the chipset by one (QEMU KVM here is
    software KVM: a few seconds per QEMU start)."""
    require(kvm_available(), "/dev/kvm is missing or not accessible to this user")
    for smp in (1, 2):
        children, (cpus, _slots) = _qemu("kvm", smp)
        ours = pc_unattached_paths(smp, 0, kvm=True)
        assert [c["qom-path"] for c in sorted(cpus, key=lambda c: c["cpu-index"])] == \
            [ours[f"cpu.{k}"] for k in range(smp)]
        assert children[ours["kvmclock"]] == "kvmclock"
        for name in ("i440FX", "PIIX3", "mc146818rtc", "i8042", "piix3-ide", "PIIX4_PM"):
            assert children[ours[name]] == name, name
        assert pc_unattached_paths(smp, 0)["i440FX"] != ours["i440FX"]

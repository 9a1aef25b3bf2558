"""QMP CPU commands on refvm against QEMU 7.2, the same queries on both: query-cpus-fast,
query-hotpluggable-cpus, query-cpu-definitions and query-cpu-model-expansion (replies and error texts)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

PROBE = Path(__file__).resolve().parent.parent / "guests" / "probe" / "build" / "probe.elf"
SMP = ["-smp", "2,sockets=2,cores=2,maxcpus=4", "-cpu", "Haswell"]
CALLS: list[tuple[str, dict[str, Any] | None]] = [
    ("query-cpus-fast", None),
    ("query-hotpluggable-cpus", None),
    ("query-cpu-model-expansion", {"type": "full", "model": {"name": "Nope"}}),
    ("query-cpu-model-expansion", {"type": "bogus", "model": {"name": "Haswell"}}),
    ("query-cpu-model-expansion", {"type": "static", "model": {"name": "Haswell", "props": {"nope": True}}}),
    ("query-cpu-model-expansion", {"type": "full", "model": {"name": "Haswell", "props": {"avx": "x"}}}),
    ("query-cpu-model-expansion", {"type": "full"}),
    ("query-cpu-model-expansion", {"type": "full", "model": {"name": "Nehalem", "props": {"avx": True}}}),
    ("query-cpu-definitions", None),
]


def _ask(argv: list[str], sock: Path) -> list[Any]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()  # type: ignore[union-attr]
            time.sleep(0.02)

        async def session() -> list[Any]:
            client = QMPClient("cpu-test")
            await client.connect(str(sock))
            out: list[Any] = []
            for name, args in CALLS:
                try:
                    out.append(await client.execute(name, args))
                except ExecuteError as err:
                    out.append(("error", err.error_class, str(err)))
            await client.disconnect()
            return out

        return asyncio.run(session())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def replies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    if not PROBE.exists():
        pytest.skip("probe guest not built (make -C guests/probe)")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        if os.environ.get("CI") == "true":
            pytest.fail("qemu-system-x86_64 missing (.ci/setup installs it)")
        pytest.skip("qemu-system-x86_64 not installed")
    tmp = tmp_path_factory.mktemp("cpuqmp")
    common = ["-S", "-nodefaults", "-display", "none", *SMP]
    refvm = [sys.executable, "-m", "refvm", "-accel", "kvm", "-kernel", str(PROBE), "-watchdog-timeout", "60",
             *common, "-qmp", f"unix:{tmp / 'r.sock'},server=on,wait=off"]
    qemu_argv = [qemu, "-accel", "tcg", *common, "-qmp", f"unix:{tmp / 'q.sock'},server=on,wait=off"]
    return {"refvm": _ask(refvm, tmp / "r.sock"), "qemu": _ask(qemu_argv, tmp / "q.sock")}


@pytest.mark.kvm
def test_cpus_fast_and_hotpluggable_match_qemu(replies: dict[str, list[Any]]) -> None:
    def shape(cpus: list[dict[str, Any]]) -> list[Any]:
        return [(c["cpu-index"], c["qom-path"], c["props"], c["target"], isinstance(c["thread-id"], int))
                for c in cpus]

    assert shape(replies["refvm"][0]) == shape(replies["qemu"][0])
    assert replies["refvm"][1] == replies["qemu"][1]


@pytest.mark.kvm
def test_model_expansion_errors_match_qemu(replies: dict[str, list[Any]]) -> None:
    for i in range(2, 7):
        assert replies["refvm"][i] == replies["qemu"][i], CALLS[i]


@pytest.mark.kvm
def test_model_expansion_reports_the_model(replies: dict[str, list[Any]]) -> None:
    mine, theirs = replies["refvm"][7]["model"], replies["qemu"][7]["model"]
    assert mine["name"] == theirs["name"] == "Nehalem"
    # (x2apic differs by accelerator: QEMU turns it on for KVM only, and this QEMU runs TCG.)
    for key in ("avx", "sse4.2", "popcnt", "lm", "nx", "family", "model", "stepping", "model-id", "level"):
        assert mine["props"][key] == theirs["props"][key], key


@pytest.mark.kvm
def test_cpu_definitions_are_qemu_names(replies: dict[str, list[Any]]) -> None:
    qemu = {d["name"]: d for d in replies["qemu"][8]}
    mine = replies["refvm"][8]
    assert {"qemu64", "kvm64", "Nehalem", "SandyBridge", "Haswell", "EPYC", "host", "max"} <= {d["name"] for d in mine}
    for d in mine:
        assert d["name"] in qemu, d["name"]
        assert d.get("alias-of") == qemu[d["name"]].get("alias-of"), d["name"]
        assert d["typename"] == qemu[d["name"]]["typename"]
        assert isinstance(d["unavailable-features"], list)

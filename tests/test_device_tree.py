"""The device tree (refvm/devices/tree.py): one registry, keyed by QEMU 7.2's QOM paths, in assembly order, that
reset, QMP and migration walk; and the per-machine deviations and node names that let two machines share a process.

Machines are built in-process from a real command line under ``-accel qtest`` (nothing runs: construction is what
is judged); the QOM paths are compared with a real QEMU 7.2 (``qom-list``) where it is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from refvm.cli import parse_args
from refvm.devices.acpi.pm import AcpiPmState
from refvm.devices.fw_cfg import FwCfgDmaState, FwCfgState
from refvm.devices.tree import DeviceTree, DeviceTreeError, pc_unattached_paths
from refvm.machine import Machine, MachineError
from refvm.migration.job import _devices
from refvm.virtio.pci import VirtioPciFunction
from tests.conftest import require

QEMU = shutil.which("qemu-system-x86_64")


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(1 << 20))
    return path


def _args(disk: Path) -> list[str]:
    """A typical command line: two -serials, -devices with and without id, a drive and a netdev."""
    return ["-nodefaults", "-m", "64", "-smp", "2", "-serial", "null", "-serial", "null",
            "-drive", f"if=none,id=d0,file={disk},format=raw", "-netdev", "hubport,id=n0,hubid=0",
            "-device", "isa-debug-exit", "-device", "virtio-blk-pci,drive=d0,id=disk0",
            "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci,id=rng0,addr=0x6"]


def _machine(argv: list[str], tmp_path: Path) -> Machine:
    return Machine(parse_args(["-accel", "qtest", "-qtest", f"unix:{tmp_path}/qtest.sock", *argv]).config)


@pytest.fixture
def machine(disk: Path, tmp_path: Path) -> Iterator[Machine]:
    m = _machine(_args(disk), tmp_path)
    yield m
    m._close_chardevs()


# Built-ins under -smp 2 with two -serials (QEMU 7.2: CPU 0, kvmvapic, CPU 1, then the chipset from index 3).
BUILTINS = {
    "/machine/unattached/device[0]": "qemu64-x86_64-cpu", "/machine/unattached/device[2]": "qemu64-x86_64-cpu",
    "/machine/unattached/device[13]": "isa-serial", "/machine/unattached/device[14]": "isa-serial",
    "/machine/unattached/device[16]": "i8042", "/machine/unattached/device[4]": "PIIX3",
    "/machine/fw_cfg": "fw_cfg_io", "/machine/unattached/device[10]": "mc146818rtc",
    "/machine/unattached/device[21]": "PIIX4_PM", "/machine/i440fx": "i440FX-pcihost",
    "/machine/unattached/device[3]": "i440FX", "/machine/unattached/device[20]": "piix3-ide",
}  # fmt: skip
PERIPHERALS = {
    "/machine/peripheral-anon/device[0]": "isa-debug-exit", "/machine/peripheral/disk0": "virtio-blk-pci",
    "/machine/peripheral-anon/device[1]": "virtio-net-pci", "/machine/peripheral/rng0": "virtio-rng-pci",
}  # fmt: skip


def test_keys_and_order_are_qemus_qom_paths_in_assembly_order(machine: Machine) -> None:
    nodes = list(machine.devices)
    assert {n.path: n.type_name for n in nodes} == {**BUILTINS, **PERIPHERALS}
    # built-ins first, then every -device in command-line order
    assert [n.path for n in nodes[-4:]] == list(PERIPHERALS)
    assert [n.path for n in machine.devices.peripherals()] == list(PERIPHERALS)


def test_nodes_hold_front_end_transport_and_backend(machine: Machine) -> None:
    disk0 = machine.devices.get("/machine/peripheral/disk0")
    assert disk0 is not None and isinstance(disk0.transport, VirtioPciFunction)
    assert disk0.transport.vdev is disk0.front and disk0.backend is machine.backends.drives["d0"]
    assert disk0.device_path == "/machine/peripheral/disk0/virtio-backend"
    nic = machine.devices.get("/machine/peripheral-anon/device[1]")
    assert nic is not None and nic.backend is machine.backends.netdevs["n0"]
    serial = machine.devices.get("/machine/unattached/device[13]")
    assert serial is not None and serial.backend is machine.chardevs[0]
    assert machine.devices.node_of(disk0.transport) is disk0


def test_migration_sections_come_from_the_tree_with_the_streams_idstrs(machine: Machine) -> None:
    sections = _devices(machine)
    assert sections == machine.devices.sections()
    assert list(sections)[:2] == ["serial@0x3f8", "serial@0x2f8"]
    assert {"fw_cfg", "fw_cfg-dma", "mc146818-rtc", "piix4-pm", "pci-conf-idx", "0000:00:00.0/I440FX",
            "0000:00:01.0/PIIX3", "0000:00:01.1/ide", "0000:00:01.3/piix4_pm", "0000:00:02.0/virtio-blk",
            "0000:00:03.0/virtio-net", "0000:00:06.0/virtio-rng"} <= set(sections)  # fmt: skip


def test_reset_walks_the_tree_in_order(machine: Machine) -> None:
    calls: list[str] = []

    class Spy:
        def __init__(self, name: str) -> None:
            self.name = name

        def reset(self) -> None:
            calls.append(self.name)

    machine.devices.get("/machine/fw_cfg").resets.insert(0, Spy("fw_cfg"))  # type: ignore[union-attr]
    machine.devices.get("/machine/unattached/device[13]").resets.append(Spy("serial0"))  # type: ignore[union-attr]
    machine.devices.get("/machine/peripheral/rng0").resets.append(Spy("rng0"))  # type: ignore[union-attr]
    # Guest-visible state a reset must clear: fw_cfg selector, PM1_EN, a PCI function's command register.
    machine.pio.write(0x510, 2, 0x19)
    machine.pio.write(0x602, 2, 0x0100)
    rng = machine.devices.get("/machine/peripheral/rng0").transport  # type: ignore[union-attr]
    rng.config_write(0x04, 2, 0x0007)
    assert machine.firmware.fw_cfg.selector == 0x19 and machine.firmware.pm.en == 0x0100
    machine.devices.reset()
    assert calls == ["serial0", "fw_cfg", "rng0"]
    assert machine.firmware.fw_cfg.selector == 0 and machine.firmware.pm.en == 0
    assert rng.config_read(0x04, 2) == 0


def test_reset_is_load_of_the_default_state_where_that_is_true(machine: Machine) -> None:
    fw = machine.firmware
    machine.pio.write(0x510, 2, 0x19)
    fw.fw_cfg.read_data(3)
    fw.dma.write(0, 4, 0x12345678)
    machine.pio.write(0x602, 2, 0x0100)
    for device, state in ((fw.fw_cfg, FwCfgState()), (fw.dma, FwCfgDmaState()), (fw.pm, AcpiPmState())):
        assert device.save() != state
        device.reset()
        assert device.save() == state


def test_duplicate_device_id_is_refused_with_qemus_text(disk: Path, tmp_path: Path) -> None:
    argv = ["-nodefaults", "-device", "virtio-rng-pci,id=a", "-device", "virtio-rng-pci,id=a"]
    with pytest.raises(MachineError) as err:
        _machine(argv, tmp_path)
    assert str(err.value) == "-device virtio-rng-pci,id=a: Duplicate ID 'a' for device"
    tree = DeviceTree()
    spec = parse_args(["-accel", "qtest", "-qtest", "unix:q.sock", "-device", "isa-debug-exit,id=x"]).config.devices[0]
    tree.add_peripheral(spec)
    with pytest.raises(DeviceTreeError, match="^Duplicate ID 'x' for device$"):
        tree.add_peripheral(spec)


def test_duplicate_device_id_is_one_line_from_the_command_line(tmp_path: Path) -> None:
    argv = ["-accel", "qtest", "-qtest", f"unix:{tmp_path}/q.sock", "-nodefaults",
            "-device", "virtio-rng-pci,id=a", "-device", "isa-debug-exit,id=a"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "refvm", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["refvm: -device isa-debug-exit,id=a: Duplicate ID 'a' for device"]


def test_pci_nodes_are_every_function_on_the_host_bridges_bus(machine: Machine) -> None:
    """query-pci, info pci and info qtree walk these nodes: none of the bus's functions may be missing."""
    from refvm.devices.pci.query import query_pci, query_pci_tree

    bus = machine.devices.pci_bus()
    assert bus is machine.devices.get("/machine/i440fx").transport  # type: ignore[union-attr]
    nodes = machine.devices.pci_nodes()
    assert [n.transport for n in nodes] == [d for _s, _f, d in bus.devices()]
    assert [n.path for n in nodes] == ["/machine/unattached/device[3]", "/machine/unattached/device[4]",
                                       "/machine/unattached/device[20]", "/machine/unattached/device[21]",
                                       "/machine/peripheral/disk0", "/machine/peripheral-anon/device[1]",
                                       "/machine/peripheral/rng0"]  # fmt: skip
    assert query_pci_tree(machine.devices) == query_pci(bus)


def test_pc_unattached_paths_count_cpus_and_serials() -> None:
    one = pc_unattached_paths(1, 1)
    assert (one["i440FX"], one["isa-serial.0"], one["i8042"], one["PIIX4_PM"]) == (
        "/machine/unattached/device[2]", "/machine/unattached/device[12]", "/machine/unattached/device[14]",
        "/machine/unattached/device[19]")
    four = pc_unattached_paths(4, 0)
    assert [four[f"cpu.{k}"] for k in range(4)] == [f"/machine/unattached/device[{n}]" for n in (0, 2, 3, 4)]
    assert (four["kvmvapic"], four["i440FX"], pc_unattached_paths(4, 0, kvm=True)["i440FX"]) == (
        "/machine/unattached/device[1]", "/machine/unattached/device[5]", "/machine/unattached/device[6]")


def _qemu_children(argv: list[str], paths: list[str]) -> dict[str, str]:
    """path -> QOM type of every child QEMU lists under each of ``paths`` (qom-list over -qmp stdio)."""
    cmds = [{"execute": "qmp_capabilities"}, *({"execute": "qom-list", "arguments": {"path": p}} for p in paths),
            {"execute": "quit"}]  # fmt: skip
    assert QEMU is not None
    proc = subprocess.run([QEMU, "-accel", "tcg", "-S", "-display", "none", *argv, "-qmp", "stdio"],
                          input="".join(json.dumps(c) + "\n" for c in cmds), capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    replies = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    lists = [r["return"] for r in replies if isinstance(r.get("return"), list)]
    out = {}
    for parent, props in zip(paths, lists, strict=True):
        for prop in props:
            if prop["type"].startswith("child<"):
                out[f"{parent.rstrip('/')}/{prop['name']}"] = prop["type"][len("child<"):-1]
    return out


def test_paths_name_the_same_objects_as_qemu(disk: Path, machine: Machine) -> None:
    require(QEMU is not None, "qemu-system-x86_64 is not installed")
    qemu = _qemu_children(_args(disk), ["/machine", "/machine/unattached", "/machine/peripheral",
                                        "/machine/peripheral-anon"])
    for node in machine.devices:
        assert qemu.get(node.path) == node.type_name, node.path


def test_two_machines_in_one_process_keep_their_own_deviations_and_node_names(disk: Path, tmp_path: Path) -> None:
    second = tmp_path / "second.raw"
    second.write_bytes(bytes(1 << 16))
    drives = ["-drive", f"if=none,id=d0,file={disk},format=raw", "-drive", f"if=none,id=d1,file={second},format=raw"]
    src = _machine(["-nodefaults", "-global", "virtio-pci.x-deviation=isr-not-cleared", *drives,
                    "-device", "virtio-blk-pci,drive=d0,id=b0"], tmp_path)  # fmt: skip
    dst = _machine(["-nodefaults", *drives, "-device", "virtio-blk-pci,drive=d0,id=b0"], tmp_path)
    try:
        assert src.deviations.active("isr-not-cleared") and not dst.deviations.active("isr-not-cleared")
        src_blk, dst_blk = (m.devices.get("/machine/peripheral/b0").front for m in (src, dst))  # type: ignore[union-attr]
        assert src_blk.deviations.active("isr-not-cleared") and not dst_blk.deviations.active("isr-not-cleared")
        # Each machine numbers its nodes from the start, as a QEMU process does: #block1NN, then #block3NN.
        for m in (src, dst):
            names = [d.node_name for d in m.backends.drives.values()]
            assert [n[:7] for n in names] == ["#block1", "#block3"] and all(len(n) == 9 for n in names), names
    finally:
        src._close_chardevs()
        dst._close_chardevs()


def test_a_deviation_changes_only_its_machines_device(disk: Path, tmp_path: Path) -> None:
    """The ISR of a virtio function reads and clears on one machine, reads and stays on the other."""
    machines = [_machine(["-nodefaults", *dev, "-device", "virtio-rng-pci,id=r"], tmp_path)
                for dev in (["-global", "virtio-pci.x-deviation=isr-not-cleared"], [])]
    try:
        kept = []
        for m in machines:
            vdev = m.devices.get("/machine/peripheral/r").front  # type: ignore[union-attr]
            vdev.isr = 1
            vdev.read_isr()
            kept.append(vdev.isr)
        assert kept == [1, 0]
    finally:
        for m in machines:
            m._close_chardevs()

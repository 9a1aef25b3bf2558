"""Differential: bus 0 as a guest would enumerate it, on refvm (`-accel qtest`) and on QEMU 7.2 (`-accel tcg -S`).

Both machines get the same `-drive`/`-device` arguments and are driven by the same qtest client and PCI
enumerator (`conformance.drivers.pci`), so any difference is in the VMMs. Per function the test compares
what a driver binds to and sizes its resources by: IDs, class code, revision, subsystem IDs, header type,
interrupt pin, each BAR's kind and size (all-ones sizing; the expansion ROM BAR in a test of its own), the capability
list (IDs in order with their offsets), each virtio vendor capability's cap_len/cfg_type/bar/offset/length
(and the notify multiplier), and the MSI-X table size and table/PBA locations. Nothing here depends on
addresses a firmware would assign, so there is no reason for the two to differ.

A difference that is deliberate must be a row of the README's "Deliberate differences from QEMU" table and
be listed in ALLOWED with that row's first cell; the test checks the row still exists. There are none.

virtio-net needs a tap (root and /dev/net/tun); without one the machine is the same minus virtio-net.
Skips without QEMU or gcc/KVM-free prerequisites locally; with CI=true a missing QEMU fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.drivers.pci import (
    CAP_ID_MSIX,
    CAP_ID_VENDOR,
    EXPANSION_ROM,
    ConfigMechanism1,
    PciFunction,
    enumerate_bus,
)
from conformance.drivers.qtest import QtestSession
from conformance.targets import Target, qemu_target, refvm_target
from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]
QEMU = "qemu-system-x86_64"
VIRTIO_VENDOR = 0x1AF4
VIRTIO_PCI_CAP_NOTIFY_CFG = 2

#: (function or "*", field) -> first cell of the README row that documents the difference. Only the expansion
#: ROM: for every other field refvm matches QEMU exactly.
ALLOWED: dict[tuple[str, str], str] = {("*", "rom"): "option ROMs"}

Snapshot = dict[str, dict[str, object]]

pytestmark = [pytest.mark.qemu]


def _tun_usable() -> bool:
    """Root with /dev/net/tun: both VMMs can then create their own tap by name."""
    return os.geteuid() == 0 and os.access("/dev/net/tun", os.R_OK | os.W_OK)


def device_args(tmp: Path, tap_suffix: str | None) -> list[str]:
    """The machine under comparison: every virtio-pci model refvm has, in each of QEMU's modes."""
    for name in ("d0", "d1"):
        with open(tmp / f"{name}.raw", "wb") as f:
            f.truncate(1 << 20)
    args = [
        "-drive", f"if=none,id=d0,file={tmp / 'd0.raw'},format=raw",
        "-device", "virtio-blk-pci,drive=d0",
        "-drive", f"if=none,id=d1,file={tmp / 'd1.raw'},format=raw",
        "-device", "virtio-blk-pci,drive=d1,disable-legacy=on",
        "-device", "virtio-rng-pci,disable-modern=on",
        "-device", "virtio-serial-pci",
        "-device", "virtio-balloon-pci",
    ]  # fmt: skip
    if tap_suffix is not None:
        # Each VMM creates (and on exit removes) its own non-persistent tap; a name must not be shared.
        ifname = f"rvpci{os.getpid() % 100000}{tap_suffix}"
        args += ["-netdev", f"tap,id=n0,ifname={ifname},script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0"]
    return args


def rom_size(fn: PciFunction) -> int:
    """Size of the expansion ROM BAR (PCI 3.0 §6.2.5.2): write all ones but the enable bit, read back."""
    saved = fn.read32(EXPANSION_ROM)
    fn.write32(EXPANSION_ROM, 0xFFFFF800)
    mask = fn.read32(EXPANSION_ROM) & 0xFFFFF800
    fn.write32(EXPANSION_ROM, saved)
    return 0 if mask == 0 else (~mask & 0xFFFFFFFF) + 1


def describe(fn: PciFunction) -> dict[str, object]:
    """Everything compared for one function, as field -> printable value."""
    h = fn.header()
    out: dict[str, object] = {
        "vendor:device": f"{h.vendor_id:04x}:{h.device_id:04x}",
        "class": f"{h.class_code:06x}",
        "revision": f"{h.revision:#04x}",
        "subsystem": f"{h.subsystem_vendor_id:04x}:{h.subsystem_id:04x}",
        "header type": f"{h.header_type:#04x}",
        "interrupt pin": h.interrupt_pin,
    }
    bars = {b.index: b for b in fn.bars()} if h.layout == 0 else {}
    for i in range(6 if h.layout == 0 else 0):
        bar = bars.get(i)
        out[f"bar{i}"] = "none" if bar is None else f"{bar.kind}{' pref' if bar.prefetchable else ''} {bar.size:#x}"
    if h.layout == 0:
        out["rom"] = f"{rom_size(fn):#x}"
    caps = fn.capabilities()
    out["capabilities"] = " ".join(f"{c.cap_id:#04x}@{c.offset:#04x}" for c in caps)
    for cap in caps:
        where = f"cap {cap.cap_id:#04x}@{cap.offset:#04x}"
        if cap.cap_id == CAP_ID_VENDOR and h.vendor_id == VIRTIO_VENDOR:
            cfg_type, bar = fn.read8(cap.offset + 3), fn.read8(cap.offset + 4)
            text = (
                f"cap_len {fn.read8(cap.offset + 2):#x} cfg_type {cfg_type} bar {bar} "
                f"offset {fn.read32(cap.offset + 8):#x} length {fn.read32(cap.offset + 12):#x}"
            )
            if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
                text += f" notify_off_multiplier {fn.read32(cap.offset + 16)}"
            out[where] = text
        elif cap.cap_id == CAP_ID_MSIX:
            ctrl, table, pba = fn.read16(cap.offset + 2), fn.read32(cap.offset + 4), fn.read32(cap.offset + 8)
            out[where] = (
                f"table size {(ctrl & 0x7FF) + 1} table bar {table & 7} +{table & ~7:#x} "
                f"pba bar {pba & 7} +{pba & ~7:#x}"
            )
    return out


def snapshot(target: Target, args: list[str]) -> Snapshot:
    """Start `target` stopped under qtest and describe every function on bus 0."""
    with QtestSession(name=target.name) as qt:
        qt.start(target, args)
        cfg = ConfigMechanism1(qt)
        return {str(fn): describe(fn) for fn in enumerate_bus(cfg, 0)}


def differences(refvm: Snapshot, qemu: Snapshot, skip: frozenset[str] = frozenset()) -> list[str]:
    """One readable entry per differing field, fields in `skip` left out (a function present on one side
    only is one entry)."""
    lines: list[str] = []
    for bdf in sorted(set(refvm) | set(qemu)):
        if bdf not in refvm or bdf not in qemu:
            have = qemu.get(bdf) or refvm.get(bdf) or {}
            side = "qemu only" if bdf in qemu else "refvm only"
            if not _allowed(bdf, "function"):
                lines.append(f"{bdf}: present on {side} ({have.get('vendor:device')} class {have.get('class')})")
            continue
        r, q = refvm[bdf], qemu[bdf]
        for field in [*q, *(k for k in r if k not in q)]:
            if field in skip or _allowed(bdf, field):
                continue
            if r.get(field, "(absent)") != q.get(field, "(absent)"):
                lines.append(
                    f"{bdf} ({q['vendor:device']}) {field}:\n"
                    f"    refvm: {r.get(field, '(absent)')}\n    qemu:  {q.get(field, '(absent)')}"
                )
    return lines


def _allowed(bdf: str, field: str) -> bool:
    return (bdf, field) in ALLOWED or ("*", field) in ALLOWED


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Snapshot, Snapshot, bool]]:
    require(shutil.which(QEMU) is not None, f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    tmp = tmp_path_factory.mktemp("pci-diff")
    net = _tun_usable()
    yield (
        snapshot(refvm_target(), device_args(tmp, "r" if net else None)),
        snapshot(qemu_target(), device_args(tmp, "q" if net else None)),
        net,
    )


def test_bus0_matches_qemu(machines: tuple[Snapshot, Snapshot, bool]) -> None:
    refvm, qemu, net = machines
    # The comparison must have something to compare: the host bridge, PIIX3 and every device given.
    virtio = [bdf for bdf, f in qemu.items() if str(f["vendor:device"]).startswith("1af4:")]
    assert len(virtio) == (6 if net else 5), sorted(qemu)
    diffs = differences(refvm, qemu, skip=frozenset({"rom"}))
    assert not diffs, f"{len(diffs)} difference(s) between refvm and QEMU 7.2 on bus 0:\n" + "\n".join(diffs)
    # And the comparison saw the virtio layout, not just empty fields on both sides.
    assert "cfg_type 2 bar 4 offset 0x3000 length 0x1000 notify_off_multiplier 4" in str(qemu["00:03.0"])


def test_expansion_rom_bars_match_qemu(machines: tuple[Snapshot, Snapshot, bool]) -> None:
    """The expansion ROM BAR (offset 0x30) is a BAR a guest sizes too; kept apart from the other fields so
    that a ROM difference (QEMU's virtio-net carries iPXE's efi-virtio.rom by default) does not hide the rest."""
    refvm, qemu, _net = machines
    rom = {bdf: {"vendor:device": f["vendor:device"], "rom": f.get("rom")} for bdf, f in qemu.items()}
    rom_r = {bdf: {"vendor:device": f["vendor:device"], "rom": f.get("rom")} for bdf, f in refvm.items()}
    diffs = differences(rom_r, rom)
    assert not diffs, f"{len(diffs)} expansion ROM difference(s) between refvm and QEMU 7.2:\n" + "\n".join(diffs)


def test_allowed_differences_are_documented() -> None:
    readme = (REPO / "README.md").read_text()
    for key, row in ALLOWED.items():
        assert f"| {row} |" in readme, f"ALLOWED{key} cites README row '{row}', which is not in the table"


def test_differences_are_reported_per_field() -> None:
    """The diff names the function, the field and both values (what a failing run prints)."""
    q = {"00:02.0": {"vendor:device": "1af4:1001", "bar0": "io 0x80"}}
    r = {"00:02.0": {"vendor:device": "1af4:1001", "bar0": "io 0x40"}, "00:09.0": {"vendor:device": "1af4:1005"}}
    lines = differences(r, q)
    assert lines[0] == "00:02.0 (1af4:1001) bar0:\n    refvm: io 0x40\n    qemu:  io 0x80"
    assert lines[1].startswith("00:09.0: present on refvm only (1af4:1005")

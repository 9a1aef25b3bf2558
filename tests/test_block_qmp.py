"""query-block and block_set_io_throttle: shapes, errors, and a differential run against QEMU 7.2.

The QEMU comparison starts ``qemu-system-x86_64 -accel tcg -S -nodefaults`` with the same -drive and
-device arguments, asks the same QMP questions, and compares the replies with refvm's after
normalising the one random part (``node-name``: ``#block`` + counter + two random digits). It is
skipped only when QEMU is not installed outside CI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from refvm.block.drive import Drive, open_drive
from refvm.block.qcow2 import create_qcow2
from refvm.block.throttle_group import ThrottleGroups
from refvm.clock import VirtualClock
from refvm.config import DeviceSpec
from refvm.devices.tree import DeviceTree
from refvm.monitor.block_qmp import BlockCommands, qdev_paths
from refvm.monitor.qmp import QmpError, validate_args

QEMU = shutil.which("qemu-system-x86_64")
Z6 = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}


class FakeServer:
    """Collects registrations; ``call`` validates arguments as QmpServer does, then runs the handler."""

    def __init__(self) -> None:
        self.commands: dict[str, tuple[Any, dict]] = {}

    def register(self, name: str, handler: Any, *, args: dict | None = None, allow_oob: bool = False) -> None:
        self.commands[name] = (handler, dict(args or {}))

    def call(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        handler, schema = self.commands[name]
        try:
            return {"return": handler(validate_args(schema, dict(args or {})))}
        except QmpError as exc:
            return {"error": {"class": exc.error_class, "desc": exc.desc}}


def _spec(text: str) -> DeviceSpec:
    driver, _, rest = text.partition(",")
    props = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return DeviceSpec(driver, props, text)


def _tree(texts: list[str]) -> DeviceTree:
    """The -devices as a machine's device tree names them (no models: query-block needs only the names)."""
    tree = DeviceTree()
    for text in texts:
        tree.add_peripheral(_spec(text))
    return tree


class Refvm:
    """refvm's side: drives opened by open_drive, devices as -device specs, commands on a fake server."""

    def __init__(self, drives: list[str], devices: list[str]) -> None:
        self.clock = VirtualClock()
        self.groups = ThrottleGroups(self.clock)
        self.drives: dict[str, Drive] = {}
        for text in drives:
            props = dict(kv.split("=", 1) for kv in text.split(","))
            ident = props.pop("id")
            props.pop("if", None)
            self.drives[ident] = open_drive(ident, props, clock=self.clock, throttle_groups=self.groups)
        self.server = FakeServer()
        BlockCommands(self.server, None, self.drives, self.groups, devices=_tree(devices))

    def ask(self, cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.server.call(c["execute"], c.get("arguments")) for c in cmds]

    def close(self) -> None:
        for d in self.drives.values():
            d.close()


def ask_qemu(tmp: Path, drives: list[str], devices: list[str], cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sock = tmp / "qmp.sock"
    argv = [QEMU or "qemu-system-x86_64", "-accel", "tcg", "-S", "-display", "none", "-nodefaults"]
    for d in drives:
        argv += ["-drive", d]
    for d in devices:
        argv += ["-device", d]
    argv += ["-qmp", f"unix:{sock},server=on,wait=off"]
    proc = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        with socket.socket(socket.AF_UNIX) as s:
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "QEMU did not open its QMP socket"
                try:
                    s.connect(str(sock))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    time.sleep(0.02)
            f = s.makefile("rw")
            f.readline()
            out = []
            for cmd in [{"execute": "qmp_capabilities"}, *cmds]:
                f.write(json.dumps(cmd) + "\n")
                f.flush()
                while True:
                    msg = json.loads(f.readline())
                    if "event" not in msg:
                        break
                out.append(msg)
            return out[1:]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def normalise(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = json.dumps(replies, sort_keys=True)
    data = json.loads(text)
    for r in data:
        for info in r.get("return", []) if isinstance(r.get("return"), list) else []:
            ins = info.get("inserted")
            if ins and str(ins.get("node-name", "")).startswith("#block"):
                ins["node-name"] = "#block"
    return data


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("a.raw", "b.raw", "c.raw"):  # one image per drive: QEMU locks images against sharing
        with open(tmp_path / name, "wb") as f:
            f.truncate(64 << 20)
    create_qcow2(str(tmp_path / "base.qcow2"), 32 << 20)
    create_qcow2(str(tmp_path / "e.qcow2"), 16 << 20, compat="0.10")
    create_qcow2(str(tmp_path / "top.qcow2"), 32 << 20, backing_file="base.qcow2", backing_format="qcow2")
    return tmp_path


DRIVES = [
    "if=none,id=d0,file=a.raw,format=raw",
    "if=none,id=d1,file=top.qcow2,format=qcow2,cache=none,throttling.iops-total=100,"
    "throttling.bps-read=1000,throttling.bps-read-max=2000",
    "if=none,id=d2,file=b.raw,format=raw,cache=unsafe,readonly=on",
    "if=none,id=d3,file=e.qcow2,format=qcow2,cache=directsync",
    "if=none,id=d4,file=c.raw,format=raw,cache=writethrough,throttling.iops-total=5,throttling.group=g",
]
DEVICES = [
    "isa-debug-exit",
    "virtio-blk-pci,drive=d0",
    "virtio-blk-pci,drive=d1,id=vb1",
    "virtio-blk-pci,drive=d2",
    "virtio-blk-pci,drive=d4,id=x",
]
COMMANDS: list[dict[str, Any]] = [
    {"execute": "query-block"},
    {"execute": "block_set_io_throttle", "arguments": {"device": "nope", **Z6}},
    {"execute": "block_set_io_throttle", "arguments": {"id": "nope", **Z6}},
    {"execute": "block_set_io_throttle", "arguments": {**Z6}},
    {"execute": "block_set_io_throttle", "arguments": {"device": "d0", "id": "x", **Z6}},
    {"execute": "block_set_io_throttle", "arguments": {"device": "nope", "bps": 1}},
    {"execute": "block_set_io_throttle", "arguments": {"device": "nope", **Z6, "bogus": 1}},
    {"execute": "block_set_io_throttle", "arguments": {"device": "nope", **Z6, "bps_max": 5}},
    {"execute": "block_set_io_throttle", "arguments": {"device": "d0", **Z6, "bps_max": 5}},
    {"execute": "block_set_io_throttle", "arguments": {"id": "x", **Z6}},
    {"execute": "block_set_io_throttle", "arguments": {"id": "/machine/peripheral/x", **Z6}},
    {"execute": "block_set_io_throttle", "arguments": {"id": "/machine/peripheral-anon", **Z6}},
    {"execute": "block_set_io_throttle", "arguments": {"id": "/machine/peripheral-anon/device[0]", **Z6}},
    {"execute": "block_set_io_throttle",
     "arguments": {"id": "/machine/peripheral-anon/device[1]/virtio-backend", **Z6, "iops": 10, "group": "g"}},
    {"execute": "block_set_io_throttle",
     "arguments": {"id": "x/virtio-backend", **Z6, "bps_wr": 4096, "bps_wr_max": 8192, "bps_wr_max_length": 3}},
    {"execute": "block_set_io_throttle", "arguments": {"device": "d3", **Z6, "iops": 7, "iops_size": 4096}},
    {"execute": "block_set_io_throttle", "arguments": {"device": "d1", **Z6}},
    {"execute": "query-block"},
]


def test_qdev_paths_count_every_anonymous_device() -> None:
    by_drive, objects = qdev_paths(_tree(DEVICES))
    assert by_drive == {
        "d0": "/machine/peripheral-anon/device[1]/virtio-backend",
        "d1": "/machine/peripheral/vb1/virtio-backend",
        "d2": "/machine/peripheral-anon/device[2]/virtio-backend",
        "d4": "/machine/peripheral/x/virtio-backend",
    }
    assert objects["machine/peripheral-anon/device[0]"] is None


def test_query_block_shapes(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(images)
    r = Refvm(DRIVES, DEVICES)
    try:
        blocks = r.ask([{"execute": "query-block"}])[0]["return"]
        assert [b["device"] for b in blocks] == ["d0", "d1", "d2", "d3", "d4"]
        d1 = blocks[1]
        assert d1["qdev"] == "/machine/peripheral/vb1/virtio-backend" and d1["io-status"] == "ok"
        ins = d1["inserted"]
        assert ins["cache"] == {"writeback": True, "direct": True, "no-flush": False}
        assert (ins["iops"], ins["bps_rd"], ins["bps_rd_max"], ins["bps_rd_max_length"], ins["group"]) == (
            100, 1000, 2000, 1, "d1")
        assert ins["backing_file"] == "base.qcow2" and ins["backing_file_depth"] == 1
        assert ins["image"]["backing-image"]["filename"] == "base.qcow2"
        d3 = blocks[3]
        assert "qdev" not in d3 and "io-status" not in d3 and d3["removable"] is True
        assert blocks[2]["inserted"]["ro"] is True and blocks[2]["inserted"]["cache"]["no-flush"] is True
        # the live WCE shows in query-block after the guest toggles it
        r.drives["d4"].set_write_cache(True)
        assert r.ask([{"execute": "query-block"}])[0]["return"][4]["inserted"]["cache"]["writeback"] is True
    finally:
        r.close()


def test_block_set_io_throttle_applies_to_the_group(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(images)
    r = Refvm(DRIVES, DEVICES)
    try:
        replies = r.ask(COMMANDS)
        assert replies[1] == {"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}
        assert replies[3]["error"]["desc"] == "Need exactly one of 'device' and 'id'"
        assert replies[5]["error"]["desc"] == "Parameter 'bps_rd' is missing"
        assert replies[7]["error"]["class"] == "DeviceNotFound"  # lookup before limit validation
        assert replies[8]["error"]["desc"] == "bps_max/iops_max require corresponding bps/iops values"
        assert replies[9]["error"]["desc"] == "Device does not have a block device backend"
        assert replies[11]["error"]["desc"] == "/machine/peripheral-anon is not a hotpluggable device"
        assert replies[13] == {"return": {}}
        d0, d4 = r.drives["d0"], r.drives["d4"]
        assert d0.throttle.group is d4.throttle.group and d0.throttle.group.name == "g"
        assert r.drives["d1"].throttle.group is None
    finally:
        r.close()


@pytest.mark.skipif(QEMU is None and not os.environ.get("CI"), reason="qemu-system-x86_64 not installed")
def test_replies_match_qemu(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qemu = normalise(ask_qemu(images, DRIVES, DEVICES, COMMANDS))
    monkeypatch.chdir(images)
    r = Refvm(DRIVES, DEVICES)
    try:
        ours = normalise(r.ask(COMMANDS))
    finally:
        r.close()
    for i, (a, b) in enumerate(zip(ours, qemu, strict=True)):
        assert a == b, f"reply {i} to {COMMANDS[i]} differs:\nrefvm {json.dumps(a)}\nqemu  {json.dumps(b)}"

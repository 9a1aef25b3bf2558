"""The management-tool QMP of issue 8 on a real refvm process, compared command by command with a real QEMU 7.2
(``-accel tcg``) started with the same devices: reply shapes, values where both must agree, error classes and
texts, events, descriptor passing with SCM_RIGHTS, and query-qmp-schema against QEMU's own schema."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from refvm.monitor.qom_qmp import REFVM_EXTENSION_PROPS
from refvm.monitor.schema import EVENTS
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "guests" / "probe" / "build" / "probe.elf"
QEMU = shutil.which("qemu-system-x86_64")


class Client:
    """A raw QMP client: one request at a time, events kept aside, descriptors sent with SCM_RIGHTS."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(15)
        self.sock.connect(path)
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.greeting = self.read_message()
        assert self.cmd("qmp_capabilities") == {"return": {}}

    def read_message(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name: str, fds: tuple[int, ...] = (), **args: Any) -> dict[str, Any]:
        data = json.dumps({"execute": name, **({"arguments": args} if args else {})}).encode()
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)
        while True:
            msg = self.read_message()
            if "event" in msg:
                self.events.append({k: v for k, v in msg.items() if k != "timestamp"})
            else:
                return msg

    def close(self) -> None:
        self.sock.close()


def _start(argv: list[str], sock: str) -> tuple[subprocess.Popen[bytes], Client]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        try:
            return proc, Client(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"{argv[0]} did not start: {err}") from None
            time.sleep(0.05)


def _devices(tmp: Path) -> list[str]:
    for name in ("d0.qcow2", "d1.qcow2"):
        if not (tmp / name).exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / name), "1M"], check=True)
    return ["-drive", f"file={tmp / 'd0.qcow2'},if=none,id=d0,format=qcow2,cache=none",
            "-device", "virtio-blk-pci,drive=d0,id=disk0",
            "-drive", f"file={tmp / 'd1.qcow2'},if=none,id=d1,format=qcow2,readonly=on",
            "-S", "-nodefaults", "-m", "32", "-kernel", str(PROBE), "-device", "virtio-rng-pci,id=rng0",
            "-device", "virtio-balloon-pci,id=balloon0", "-chardev", f"file,id=cs0,path={tmp / 'c.log'}",
            "-device", "isa-serial,chardev=cs0,id=serial0", "-boot", "order=cd,strict=on,menu=off",
            "-netdev", "hubport,id=h0,hubid=0", "-device", "virtio-net-pci,netdev=h0,id=net0,bootindex=3"]  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Client]]:
    """(refvm, QEMU), both paused in prelaunch with the same devices."""
    require(PROBE.exists(), "probe guest not built (make -C guests/probe)")
    require(QEMU is not None, "qemu-system-x86_64 not installed")
    tmp = tmp_path_factory.mktemp("qmpdiff")
    procs = []
    clients = []
    try:
        for name, prefix in (("refvm", [sys.executable, "-m", "refvm", "-watchdog-timeout", "120"]),
                             ("qemu", [QEMU, "-accel", "tcg", "-display", "none"])):  # fmt: skip
            sock = str(tmp / f"{name}.sock")
            proc, client = _start([*prefix, *_devices(tmp), "-qmp", f"unix:{sock},server=on,wait=off"], sock)
            procs.append(proc)
            clients.append(client)
        yield clients[0], clients[1]
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.kill()
            p.wait(timeout=10)


def both(pair: tuple[Client, Client], name: str, **args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return pair[0].cmd(name, **args), pair[1].cmd(name, **args)


#: Commands whose whole reply (success or error, class and text) must be identical.
SAME_REPLY = [
    ("query-iothreads", {}),
    ("qom-get", {"path": "/machine", "property": "type"}),
    ("qom-get", {"path": "/machine/peripheral/rng0", "property": "type"}),
    ("qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval"}),
    ("qom-get", {"path": "/machine", "property": "boot"}),
    ("qom-get", {"path": "/machine/peripheral/net0", "property": "bootindex"}),
    ("qom-get", {"path": "/machine/peripheral/net0/virtio-backend", "property": "bootindex"}),
    ("qom-get", {"path": "/machine/peripheral/rng0", "property": "bootindex"}),
    ("qom-list", {"path": "/nope"}),
    ("qom-set", {"path": "/machine", "property": "nope", "value": 1}),
    ("qom-set", {"path": "/machine", "property": "type", "value": "x"}),
    ("qom-set", {"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval", "value": -1}),
    ("qom-set", {"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval",
                 "value": 1 << 33}),  # fmt: skip
    ("qom-list-types", {"implements": "virtio-net-pci"}),
    ("qom-list-types", {"implements": "isa-serial"}),
    ("qom-list-types", {"implements": "pc-i440fx-7.2-machine", "abstract": True}),
    ("qom-list-types", {"implements": "no-such-type"}),
    ("device-list-properties", {"typename": "nope"}),
    ("device-list-properties", {"typename": "pc-i440fx-7.2-machine"}),
    ("getfd", {"fdname": "x"}),
    ("closefd", {"fdname": "x"}),
    ("add-fd", {}),
    ("remove-fd", {"fdset-id": 1}),
    ("remove-fd", {"fdset-id": 1, "fd": 99}),
    ("query-fdsets", {}),
    ("human-monitor-command", {"command-line": "info status"}),
    ("human-monitor-command", {"command-line": "info nope"}),
    ("human-monitor-command", {"command-line": "frob"}),
    ("human-monitor-command", {"command-line": ""}),
    ("human-monitor-command", {}),
    ("qom-get", {"path": "/machine"}),
    ("query-kvm", {"bogus": 1}),
]


@pytest.mark.parametrize("name,args", SAME_REPLY, ids=[f"{n} {json.dumps(a)}" for n, a in SAME_REPLY])
def test_same_reply_as_qemu(pair: tuple[Client, Client], name: str, args: dict[str, Any]) -> None:
    got, expected = both(pair, name, **args)
    assert got == expected


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def test_query_kvm_and_chardev_shapes(pair: tuple[Client, Client]) -> None:
    got, expected = both(pair, "query-kvm")
    assert _shape(got) == _shape(expected)
    assert got["return"] == {"enabled": True, "present": True}  # refvm runs on /dev/kvm; QEMU here on tcg
    got, expected = both(pair, "query-chardev")
    assert {c["label"]: c for c in got["return"]}["cs0"] == {c["label"]: c for c in expected["return"]}["cs0"]


def test_query_machines_entries_match_qemu(pair: tuple[Client, Client]) -> None:
    got, expected = both(pair, "query-machines")
    qemu = {m["name"]: m for m in expected["return"]}
    refvm = {m["name"]: m for m in got["return"]}
    for name in ("pc-i440fx-7.2", "pc-i440fx-2.0", "pc-i440fx-5.1"):
        assert set(refvm[name]) == set(qemu[name]), name
        for key in ("name", "alias", "is-default", "default-cpu-type", "default-ram-id", "cpu-max", "deprecated"):
            assert refvm[name].get(key) == qemu[name].get(key), (name, key)
    assert "pc-i440fx-trusty" in refvm  # a distribution alias QEMU upstream lacks


def test_device_list_properties_agree_with_qemu(pair: tuple[Client, Client]) -> None:
    for typename in ("isa-serial", "virtio-rng-pci", "virtio-net-pci", "virtio-blk-pci"):
        got, expected = both(pair, "device-list-properties", typename=typename)
        qemu = {p["name"]: p["type"] for p in expected["return"]}
        mine = {p["name"]: p["type"] for p in got["return"]}
        extensions = set(mine) - set(qemu)
        assert extensions <= REFVM_EXTENSION_PROPS, (typename, extensions - REFVM_EXTENSION_PROPS)
        assert all(name.startswith("x-") for name in extensions)  # refvm's own switches are experimental ones
        shared = {n: t for n, t in mine.items() if t != "str" and n in qemu}
        assert shared == {n: qemu[n] for n in shared}


def test_info_pci_lists_the_same_functions(pair: tuple[Client, Client]) -> None:
    got, expected = both(pair, "human-monitor-command", **{"command-line": "info pci"})

    def functions(text: str) -> list[tuple[str, str]]:
        ids = re.findall(r"PCI device ([0-9a-f]{4}:[0-9a-f]{4})\r\n\s+PCI subsystem ([0-9a-f:]+)", text)
        return [i for i in ids if i[0].startswith("1af4")]

    assert functions(got["return"]) == functions(expected["return"])
    assert 'id "rng0"' in got["return"] and "BAR1: 32 bit memory at" in got["return"]


def test_info_block_matches_qemu(pair: tuple[Client, Client]) -> None:
    got, expected = both(pair, "human-monitor-command", **{"command-line": "info block"})
    mask = re.compile(r" \(#block\d+\)")
    assert mask.sub("", got["return"]) == mask.sub("", expected["return"])
    assert "Cache mode:       writeback, direct" in got["return"]


def test_getfd_and_add_fd_take_descriptors_over_scm_rights(pair: tuple[Client, Client]) -> None:
    r, w = os.pipe()
    try:
        for client in pair:
            assert client.cmd("getfd", fds=(r,), fdname="pipe0") == {"return": {}}
            assert client.cmd("closefd", fdname="pipe0") == {"return": {}}
            added = client.cmd("add-fd", fds=(w,), **{"fdset-id": 7, "opaque": "w"})["return"]
            assert added["fdset-id"] == 7 and isinstance(added["fd"], int)
            sets = client.cmd("query-fdsets")["return"]
            assert sets == [{"fds": [{"fd": added["fd"], "opaque": "w"}], "fdset-id": 7}]
            assert client.cmd("remove-fd", **{"fdset-id": 7}) == {"return": {}}
        # refvm closes a removed descriptor at once; QEMU 7.2 keeps listing it while any monitor is connected
        # (monitor_fdset_cleanup waits for mon_refcount 0) -- a documented difference.
        assert pair[0].cmd("query-fdsets") == {"return": []}
    finally:
        os.close(r)
        os.close(w)


def test_schema_is_refvms_registry_and_agrees_with_qemu(pair: tuple[Client, Client]) -> None:
    got, expected = both(pair, "query-qmp-schema")
    commands = {c["name"] for c in pair[0].cmd("query-commands")["return"]}
    mine = {e["name"]: e for e in got["return"]}
    qemu = {e["name"]: e for e in expected["return"]}
    assert {n for n, e in mine.items() if e["meta-type"] == "command"} == commands
    assert {n for n, e in mine.items() if e["meta-type"] == "event"} == set(EVENTS)
    for name in sorted(commands):
        if name not in qemu:
            assert name.startswith(("x-", "refvm-")) or "refvm" in name, f"{name}: not a QEMU command"
            continue
        my_args = {m["name"]: "default" in m for m in mine[mine[name]["arg-type"]]["members"]}
        qemu_args = {m["name"]: "default" in m for m in qemu[qemu[name]["arg-type"]]["members"]}
        assert my_args == qemu_args, name
    for event in EVENTS:
        my_members = [m["name"] for m in mine[mine[event]["arg-type"]]["members"]]
        assert my_members == [m["name"] for m in qemu[qemu[event]["arg-type"]]["members"]], event


def test_run_state_events_match_qemu(pair: tuple[Client, Client]) -> None:
    for client in pair:
        client.events.clear()
        for name in ("cont", "stop", "system_reset", "cont", "cont", "stop"):
            assert client.cmd(name) == {"return": {}}
        time.sleep(0.3)
        client.cmd("query-status")
    assert pair[0].events == pair[1].events
    assert [e["event"] for e in pair[0].events] == ["RESUME", "STOP", "RESET", "RESUME", "STOP"]


def test_every_emitted_event_is_in_the_schema() -> None:
    """The schema's event table covers every event name refvm's source emits."""
    names = set()
    for path in (ROOT / "refvm").rglob("*.py"):
        names |= set(re.findall(r"""(?:emit_event|_emit)\(\s*["']([A-Z_]+)["']""", path.read_text()))
    assert names and names <= set(EVENTS), names - set(EVENTS)


@pytest.mark.parametrize("no_reboot", [False, True], ids=["reset", "no-reboot"])
def test_guest_reset_events_match_qemu(tmp_path: Path, no_reboot: bool) -> None:
    """The guest writes 0x06 to the reset control register (0xcf9): both VMMs send the same event, RESET (or
    SHUTDOWN under -no-reboot) with guest=true and reason guest-reset."""
    import pexpect

    require(PROBE.exists(), "probe guest not built (make -C guests/probe)")
    require(QEMU is not None, "qemu-system-x86_64 not installed")
    seen = []
    for name, prefix in (("refvm", [sys.executable, "-m", "refvm", "-watchdog-timeout", "120"]),
                         ("qemu", [QEMU, "-accel", "tcg"])):  # fmt: skip
        sock = str(tmp_path / f"{name}.sock")
        argv = [*prefix, "-display", "none", "-nodefaults", "-serial", "stdio", "-m", "32", "-kernel", str(PROBE),
                "-qmp", f"unix:{sock},server=on,wait=off", *(["-no-reboot"] if no_reboot else [])]  # fmt: skip
        child = pexpect.spawn(argv[0], argv[1:], timeout=60)
        try:
            child.expect_exact("probe> ")
            client = Client(sock)
            child.sendline("outb 0xcf9 0x6")
            msg = client.read_message()  # the event arrives unasked (the socket's 15 s timeout bounds the wait)
            seen.append([{k: v for k, v in msg.items() if k != "timestamp"}])
            client.close()
        finally:
            child.close(force=True)
    event = "SHUTDOWN" if no_reboot else "RESET"
    assert seen[0] == seen[1] == [{"event": event, "data": {"guest": True, "reason": "guest-reset"}}]

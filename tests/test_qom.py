"""QMP qom-get: QOM path resolution, QEMU 7.2's errors, and the balloon's guest-stats (VIRTIO 1.2 5.5.6.3)."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

from test_block_qmp import FakeServer
from test_virtio_helpers import SplitDriver
from virtio_pci_rig import Rig, tree_of

from refvm.monitor.qom import STAT_ABSENT, QomCommands
from refvm.virtio import features as F
from refvm.virtio.devices.balloon import VirtioBalloon
from refvm.virtio.pci import VirtioPciFunction

STATS_VQ = 1


def _setup() -> tuple[Rig, FakeServer]:
    mem = Rig().mem
    rig = Rig(VirtioBalloon(mem), type_name="virtio-balloon-pci")
    rig.fn.qdev_id = "bal0"  # the rig names its function vdev0
    server = FakeServer()
    QomCommands(server, SimpleNamespace(devices=tree_of(("virtio-balloon-pci", {"id": "bal0"}, rig.vdev, rig.fn))))
    return rig, server


def _get(server: FakeServer, path: str, prop: str) -> dict[str, Any]:
    return server.call("qom-get", {"path": path, "property": prop})


def test_unknown_path_and_property_errors() -> None:
    _, server = _setup()
    assert _get(server, "/machine/peripheral/nope", "guest-stats") == {
        "error": {"class": "DeviceNotFound", "desc": "Device '/machine/peripheral/nope' not found"}}
    assert _get(server, "nope", "x") == {"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}
    assert _get(server, "/machine/peripheral/bal0", "nope") == {
        "error": {"class": "GenericError", "desc": "Property 'virtio-balloon-pci.nope' not found"}}
    assert _get(server, "/machine/peripheral/bal0/virtio-backend", "nope")["error"]["desc"] == (
        "Property 'virtio-balloon-device.nope' not found")
    assert server.call("qom-get", {"path": "/machine/peripheral/bal0"}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'property' is missing"}}


def test_guest_stats_before_any_report() -> None:
    _, server = _setup()
    got = _get(server, "/machine/peripheral/bal0", "guest-stats")["return"]
    assert got["last-update"] == 0
    assert len(got["stats"]) == 10 and set(got["stats"].values()) == {STAT_ABSENT}
    assert _get(server, "bal0", "guest-stats")["return"] == got  # partial path
    assert _get(server, "peripheral/bal0/virtio-backend", "type") == {"return": "virtio-balloon-device"}
    assert _get(server, "/machine/peripheral", "type") == {"return": "container"}


def test_guest_stats_after_the_driver_posts_a_buffer() -> None:
    rig, server = _setup()
    assert isinstance(rig.fn, VirtioPciFunction)
    queues = {i: SplitDriver(rig.mem, 8, 0x10000 * (i + 1)) for i in range(3)}
    rig.init_driver(1 << F.VIRTIO_F_VERSION_1 | 1 << STATS_VQ, queues)
    entries = [(0x7777, 99), (5, 0x12345000), (0x0100, 7), (4, 0x2000), (0, 11)]
    payload = b"".join(struct.pack("<HQ", t, v) for t, v in entries)
    rig.mem.write(0x90000, payload)
    queues[2].publish(queues[2].chain(0, [(0x90000, len(payload), False)]))
    rig.notify(2)
    got = _get(server, "/machine/peripheral/bal0", "guest-stats")["return"]
    assert got["last-update"] > 0
    stats = got["stats"]
    assert stats["stat-total-memory"] == 0x12345000
    assert stats["stat-free-memory"] == 0x2000
    assert stats["stat-swap-in"] == 11
    assert stats["stat-swap-out"] == STAT_ABSENT
    assert "stat-256" not in stats and len(stats) == 10

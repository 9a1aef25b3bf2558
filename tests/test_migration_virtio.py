"""PCI and virtio device state as data: a virtio-blk function stopped mid-ring is saved, carried through a real
stream section, loaded into a second function on other RAM, and completes there exactly once; hostile values
in every layer of the state are refused with one line naming the field.

In-process (two real PciBuses, two GuestMemory, one real disk file, as shared storage would be); the
two-process run under -accel qtest is tests/test_migration_virtio_qtest.py.
"""
from __future__ import annotations

import dataclasses
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_virtio_console import MemChardev
from test_virtio_helpers import MODERN, RAM_SIZE, PackedDriver, SplitDriver, make_mem
from test_virtio_net import FEATS as NET_FEATS_BASE
from test_virtio_net import GUEST_MAC, HOST_MAC
from test_virtio_net import frame as eth_frame
from virtio_pci_rig import MODERN_BASE, C, EchoRng, Rig

from refvm.block import RawFile
from refvm.block.drive import open_drive
from refvm.block.throttle_group import ThrottleGroups
from refvm.clock import VirtualClock
from refvm.devices.pci.host import HostBridge
from refvm.devices.pci.piix import Piix3IsaBridge
from refvm.migration.state import DeviceState, StateError
from refvm.migration.stream import StreamWriter, read_stream
from refvm.virtio import features as F
from refvm.virtio import status as S
from refvm.virtio.devices import balloon as BL
from refvm.virtio.devices import blk as B
from refvm.virtio.devices import net as NET
from refvm.virtio.devices.balloon import VirtioBalloon
from refvm.virtio.devices.blk import VirtioBlk
from refvm.virtio.devices.console import VirtConsole, VirtioSerial
from refvm.virtio.devices.net import VirtioNet
from refvm.virtio.devices.rng import VirtioRng
from refvm.virtio.devices.tap import Tap
from refvm.virtio.state import QueueState, VirtioCoreState
from tests.conftest import require

HDR, DATA, STATUS = 0x1000, 0x2000, 0x9000
NET_FEATS = NET_FEATS_BASE | 1 << NET.F_CTRL_MAC_ADDR
FEATS = MODERN | F.bit(F.VIRTIO_F_RING_EVENT_IDX) | (1 << B.VIRTIO_BLK_F_FLUSH)
IDSTR = "0000:00:02.0/virtio-blk"
LIVE = S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(1 << 20))
    return path


def blk_rig(disk: Path, *, enable: bool = True, **props: str) -> Rig:
    mem = make_mem()
    dev = VirtioBlk.create(mem, {"drive": "d0", **props}, drives={"d0": RawFile(str(disk))})
    return Rig(dev, enable=enable)


def through_stream(state: DeviceState, idstr: str = IDSTR) -> DeviceState:
    """One full section of a real stream, read back and decoded as the destination does."""
    out = io.BytesIO()
    w = StreamWriter(out)
    w.header("pc-i440fx-7.2")
    w.device(idstr, 0, state.VERSION, state.encode(), state.describe())
    w.finish()
    (sec,) = read_stream(out.getvalue()).devices()
    return type(state).decode(sec.payload, sec.version_id, sec.idstr)


def migrate(src: Rig, dst: Rig) -> DeviceState:
    """Save the source function, copy RAM, load the destination function; returns the state carried."""
    state = through_stream(src.fn.save())
    dst.mem.write(0, src.mem.read(0, RAM_SIZE))
    dst.fn.load(state)
    return state


def post_write(rig: Rig, drv: SplitDriver, sector: int, data: bytes, head: int = 0) -> None:
    """A virtio-blk OUT request made available (not notified)."""
    rig.mem.write(HDR, struct.pack("<IIQ", B.T_OUT, 0, sector))
    rig.mem.write(DATA, data)
    rig.mem.write_u8(STATUS, 0xEE)
    drv.chain(head, [(HDR, 16, False), (DATA, len(data), False), (STATUS, 1, True)])
    drv.publish(head)


def test_blk_request_made_available_before_save_completes_once_on_destination(disk: Path) -> None:
    src = blk_rig(disk)
    drv = SplitDriver(src.mem, 8)
    src.enable_msix()
    src.init_driver(FEATS, {0: drv}, vectors={0: 1}, config_vector=0)
    post_write(src, drv, 3, b"A" * 512)
    src.notify(0)  # one request completed on the source
    assert drv.used_idx() == 1
    post_write(src, drv, 5, b"migrated" * 64, head=3)  # made available, the source never notified
    dst = blk_rig(disk, enable=False)  # BARs unprogrammed: the state places them
    state = migrate(src, dst)
    q = state.virtio.queues[0]  # type: ignore[attr-defined]
    assert (q.last_avail_idx, q.used_idx, q.size) == (1, 1, 8)
    dst_drv = SplitDriver.__new__(SplitDriver)
    dst_drv.__dict__.update(drv.__dict__, mem=dst.mem)
    assert dst.rd(C.STATUS, 1) == LIVE and dst.rd(C.QSEL, 2) == 0 and dst.rd(C.QDESC, 4) == drv.desc
    assert dst.fn.bar_address(4) == MODERN_BASE and dst.fn.msix is not None and dst.fn.msix.enabled
    dst.notify(0)
    assert dst_drv.used_idx() == 2, "the carried request completes once on the destination"
    assert dst_drv.used_elem(1) == (3, 1) and dst.mem.read_u8(STATUS) == B.S_OK
    # EVENT_IDX state came along: used_event 0 was passed by the source's interrupt for used idx 1 ...
    assert src.msis == [(0xFEE00000, 0x41)] and dst.msis == []
    dst.notify(0)
    assert dst_drv.used_idx() == 2, "a second notification finds nothing new"
    dst_drv.set_used_event(2)  # ... and the next one goes to the queue's vector, as programmed on the source
    post_write(dst, dst_drv, 6, b"x" * 512, head=6)
    dst.notify(0)
    assert dst_drv.used_idx() == 3 and dst.msis == [(0xFEE00000, 0x41)]
    with open(disk, "rb") as f:
        f.seek(5 * 512)
        assert f.read(512) == b"migrated" * 64
    assert drv.used_idx() == 1, "the source's RAM never saw the destination's completion"


def test_throttled_request_is_drained_at_save_not_repeated(disk: Path, tmp_path: Path) -> None:
    """A request held by the throttle at save is performed and completed on the source (before RAM is
    copied), so the destination's ring already shows it and a notification there does not repeat it."""
    clock = VirtualClock()
    drive = open_drive("d0", {"file": str(disk), "format": "raw", "throttling.iops-total": "1"}, clock=clock,
                       throttle_groups=ThrottleGroups(clock))
    src = Rig(VirtioBlk.create(make_mem(), {"drive": "d0"}, drives={"d0": drive}))
    drv = SplitDriver(src.mem, 8)
    src.init_driver(FEATS, {0: drv})
    for head, sector in ((0, 1), (3, 2)):
        post_write(src, drv, sector, bytes([sector]) * 512, head)
        src.notify(0)
    assert src.vdev.throttled_pending >= 1 and drv.used_idx() < 2  # type: ignore[attr-defined]
    dst = blk_rig(disk, enable=False)
    state = migrate(src, dst)
    assert src.vdev.throttled_pending == 0 and drv.used_idx() == 2  # type: ignore[attr-defined]
    assert state.virtio.queues[0].used_idx == 2  # type: ignore[attr-defined]
    clock.step(10**10)  # the throttle's timer fires on the source: the request is already done
    assert drv.used_idx() == 2
    dst.notify(0)
    assert dst.mem.read_u16(drv.used + 2) == 2


def test_packed_queue_cursors_and_wrap_counters_carry_over() -> None:
    src = Rig(EchoRng(make_mem(), sizes=(4, 4)))
    drv = PackedDriver(src.mem, 4)
    drv.avail, drv.used = drv.driver_area, drv.device_area  # what Rig.init_driver programs
    src.init_driver(MODERN | F.bit(F.VIRTIO_F_RING_PACKED), {0: drv})
    for i in range(3):  # 2 slots each: the 4-slot ring wraps once
        src.mem.write(0x20000, bytes([0x30 + i]) * 8)
        drv.add([(0x20000, 8, False), (0x21000, 8, True)], buf_id=i)
        src.notify(0)
        assert drv.get_used() == (i, 8, 0x0002 | (0x8080 if i < 2 else 0))
    dst = Rig(EchoRng(make_mem(), sizes=(4, 4)), enable=False)
    qs = migrate(src, dst).virtio.queues[0]  # type: ignore[attr-defined]
    assert (qs.last_avail_idx, qs.avail_wrap, qs.used_idx, qs.used_wrap) == (2, False, 2, False)
    dq = dst.vdev.queues[0]
    assert type(dq).__name__ == "PackedQueue" and (dq.next_avail, dq.avail_wrap, dq.next_used, dq.used_wrap) == \
        (2, 0, 2, 0)
    dst_drv = PackedDriver.__new__(PackedDriver)
    dst_drv.__dict__.update(drv.__dict__, mem=dst.mem)
    dst.mem.write(0x20000, b"after!!!")
    dst_drv.add([(0x20000, 8, False), (0x21000, 8, True)], buf_id=9)
    dst.notify(0)
    assert dst_drv.get_used() == (9, 8, 0x0002) and dst.mem.read(0x21000, 8) == b"after!!!"


def test_host_bridge_round_trip_and_a_function_refuses_another_functions_state() -> None:
    bridge = HostBridge(64 << 20)
    bridge.config_write(0x04, 2, 0x0107)
    state = through_stream(bridge.save(), "0000:00:00.0/I440FX")
    other = HostBridge(64 << 20)
    other.load(state)  # type: ignore[arg-type]
    assert other.config.snapshot() == bridge.config.snapshot()
    with pytest.raises(StateError, match=r"section '0000:00:00.0/PIIX3': field 'config': byte 0x02 is 0x37, but this "
                                         r"PIIX3's read-only bits 0xff hold 0x00"):
        Piix3IsaBridge().load(state)  # type: ignore[arg-type]


def _drivers(rig: Rig, count: int) -> dict[int, SplitDriver]:
    return {i: SplitDriver(rig.mem, 8, base=0x10000 + 0x1000 * i) for i in range(count)}


def _post(rig: Rig, drv: SplitDriver, index: int, addr: int, length: int, writable: bool, head: int = 0) -> None:
    drv.chain(head, [(addr, length, writable)])
    drv.publish(head)
    rig.notify(index)


def _twin(drv: SplitDriver, rig: Rig) -> SplitDriver:
    """The same driver state, looking at the destination's RAM."""
    twin = SplitDriver.__new__(SplitDriver)
    twin.__dict__.update(drv.__dict__, mem=rig.mem)
    return twin


def test_console_input_the_guest_has_not_taken_is_delivered_on_the_destination() -> None:
    def serial() -> tuple[VirtioSerial, MemChardev]:
        chardev = MemChardev()
        dev = VirtioSerial.create(make_mem(), {})
        dev.add_port(VirtConsole.create({"chardev": "c0"}, chardevs={"c0": chardev}))
        return dev, chardev

    dev, chardev = serial()
    src = Rig(dev)
    drvs = _drivers(src, 2)
    src.init_driver(MODERN, drvs)
    chardev.type_in(b"typed before the migration")  # the guest has posted no receive buffer yet
    dst_dev, dst_chardev = serial()
    dst = Rig(dst_dev, enable=False)
    state = migrate(src, dst)
    assert state.device.ports[0].pending == b"typed before the migration"  # type: ignore[attr-defined]
    rx = _twin(drvs[0], dst)
    _post(dst, rx, 0, 0x30000, 64, True)
    assert rx.used_elem(0) == (0, 26) and dst.mem.read(0x30000, 26) == b"typed before the migration"
    tx = _twin(drvs[1], dst)
    dst.mem.write(0x31000, b"out")
    _post(dst, tx, 1, 0x31000, 3, False)
    assert dst_chardev.out == b"out" and chardev.out == b""


def test_balloon_target_and_held_stats_buffer_carry_over() -> None:
    src = Rig(VirtioBalloon.create(make_mem(), {}))
    drvs = _drivers(src, 3)
    src.init_driver(MODERN | 1 << BL.VIRTIO_BALLOON_F_STATS_VQ, drvs)
    src.mem.write(0x30000, struct.pack("<HQ", 4, 12345))
    _post(src, drvs[2], 2, 0x30000, 10, False)  # the driver's stats buffer: the device holds it
    src.vdev.set_target_pages(100)  # type: ignore[attr-defined]
    dst = Rig(VirtioBalloon.create(make_mem(), {}), enable=False)
    state = migrate(src, dst)
    assert state.virtio.queues[2].last_avail_idx == 0  # type: ignore[attr-defined]  # given back
    balloon: VirtioBalloon = dst.vdev  # type: ignore[assignment]
    assert (balloon.target_pages, dst.rd(0x2000, 4)) == (100, 100)  # num_pages in the device config
    assert balloon.stats == {BL.STAT_NAMES[4]: 12345}  # the held buffer was popped again and read
    assert balloon.request_stats() and _twin(drvs[2], dst).used_idx() == 1, "the held buffer is returned once"
    assert not balloon.request_stats()


def test_rng_request_left_by_a_spent_rate_limit_is_served_on_the_destination() -> None:
    src = Rig(VirtioRng.create(make_mem(), {"max-bytes": "16", "period": "60000"}))
    drvs = _drivers(src, 1)
    src.init_driver(MODERN, drvs)
    _post(src, drvs[0], 0, 0x30000, 16, True)
    _post(src, drvs[0], 0, 0x31000, 16, True, head=1)  # the quota is spent: it waits in the ring
    assert drvs[0].used_idx() == 1
    dst = Rig(VirtioRng.create(make_mem(), {"max-bytes": "16", "period": "60000"}), enable=False)
    migrate(src, dst)
    src.vdev.close()  # type: ignore[attr-defined]  # (its window timer must not fire later)
    rx = _twin(drvs[0], dst)
    assert rx.used_idx() == 2 and rx.used_elem(1) == (1, 16), "served once, at load, without a new notification"


@pytest.fixture
def taps() -> Iterator[list[Tap]]:
    require(os.geteuid() == 0 and os.path.exists("/dev/net/tun"), "needs root and /dev/net/tun for tap devices")
    made = [Tap(f"rvm{os.getpid() % 100000}x{i}") for i in range(2)]
    yield made
    for t in made:
        t.close()


def _frame(dst: bytes, payload: bytes) -> bytes:
    return eth_frame(dst, GUEST_MAC, payload)


def test_net_filter_mac_and_held_receive_buffer_carry_over(taps: list[Tap]) -> None:
    def nic(tap: Tap) -> VirtioNet:
        return VirtioNet.create(make_mem(), {"netdev": "n0"}, netdevs={"n0": tap})

    src = Rig(nic(taps[0]))
    drvs = _drivers(src, 3)
    src.init_driver(NET_FEATS, drvs)
    for n, (cls, cmd, data) in enumerate(((NET.CLASS_RX, 0, b"\x00"), (NET.CLASS_MAC, 1, HOST_MAC))):
        src.mem.write(0x37000, bytes([cls, cmd]) + data)
        drvs[2].chain(2 * n, [(0x37000, 2 + len(data), False), (0x37800, 1, True)])
        drvs[2].publish(2 * n)
        src.notify(2)
        assert src.mem.read_u8(0x37800) == NET.OK
    _post(src, drvs[0], 0, 0x30000, 512, True)
    src.vdev.receive(_frame(HOST_MAC, bytes(1000)))  # type: ignore[attr-defined]  # needs more than one buffer
    assert drvs[0].used_idx() == 0 and src.vdev.queues[0].in_flight == 1  # popped and held
    dst = Rig(nic(taps[1]), enable=False)
    state = migrate(src, dst)
    assert state.virtio.queues[0].last_avail_idx == 0  # type: ignore[attr-defined]  # the held buffer given back
    net: VirtioNet = dst.vdev  # type: ignore[assignment]
    assert net.mac == HOST_MAC and not net.promisc and dst.rd(0x2000, 4) == int.from_bytes(HOST_MAC[:4], "little")
    net.receive(_frame(GUEST_MAC, bytes(46)))  # not the NIC's address any more: filtered, as on the source
    small = _frame(HOST_MAC, b"after the migration".ljust(46, b"."))
    net.receive(small)
    rx = _twin(drvs[0], dst)
    assert net.rx_filtered == 1 and rx.used_idx() == 1 and rx.used_elem(0) == (0, 12 + len(small))
    assert dst.mem.read(0x3000C, len(small)) == small
    src.vdev.close()  # type: ignore[attr-defined]
    net.close()


def test_legacy_driver_through_bar0_carries_over() -> None:
    """A transitional function driven the legacy way (features without VERSION_1, queue by page frame)."""
    src = Rig(EchoRng(make_mem(), sizes=(8, 8)))
    drv = SplitDriver(src.mem, 8, base=0x20000)
    drv.used = 0x21000  # the legacy layout: used ring on the next 4096-byte boundary
    src.mem.fill(0x20000, 0x2000)
    src.out(0x12, 1, S.ACKNOWLEDGE | S.DRIVER)
    src.out(0x04, 4, 0)
    src.out(0x0E, 2, 0)
    src.out(0x08, 4, 0x20000 >> 12)
    src.out(0x12, 1, S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK)
    src.mem.write(0x30000, b"legacy")
    drv.chain(0, [(0x30000, 6, False), (0x31000, 6, True)])
    drv.publish(0)
    src.out(0x10, 2, 0)
    assert drv.used_idx() == 1
    drv.chain(2, [(0x30000, 6, False), (0x32000, 6, True)])
    drv.publish(2)  # not notified
    dst = Rig(EchoRng(make_mem(), sizes=(8, 8)), enable=False)
    state = migrate(src, dst)
    assert state.transport.legacy_negotiated and not state.virtio.negotiated_features >> 32  # type: ignore[attr-defined]
    assert dst.inp(0x08, 4) == 0x20 and dst.inp(0x12, 1) == S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK
    dst.out(0x10, 2, 0)
    twin = _twin(drv, dst)
    assert twin.used_idx() == 2 and twin.used_elem(1) == (2, 6) and dst.mem.read(0x32000, 6) == b"legacy"


def test_saved_device_is_frozen_until_thawed(disk: Path) -> None:
    """After the cut nothing reaches the rings (the RAM copied next must match the state); a failed migration
    thaws the device and what arrived meanwhile is processed then."""
    src = blk_rig(disk)
    drv = SplitDriver(src.mem, 8)
    src.init_driver(FEATS, {0: drv})
    state = src.fn.save()
    post_write(src, drv, 4, b"late" * 128)
    src.notify(0)
    assert drv.used_idx() == 0 and src.fn.save().virtio == state.virtio  # type: ignore[attr-defined]
    src.fn.thaw()
    assert drv.used_idx() == 1 and src.mem.read_u8(STATUS) == B.S_OK


# ---------------------------------------------------------------- hostile values, one line naming the field

def _saved(disk: Path) -> tuple[Rig, DeviceState]:
    src = blk_rig(disk)
    drv = SplitDriver(src.mem, 8)
    src.enable_msix()
    src.init_driver(FEATS, {0: drv}, vectors={0: 1})
    return src, src.fn.save()


def _with(state: DeviceState, part: str, **changes: object) -> DeviceState:
    return dataclasses.replace(state, **{part: dataclasses.replace(getattr(state, part), **changes)})


def _with_queue(state: DeviceState, **changes: object) -> DeviceState:
    virtio: VirtioCoreState = state.virtio  # type: ignore[attr-defined]
    queues = (dataclasses.replace(virtio.queues[0], **changes), *virtio.queues[1:])
    return _with(state, "virtio", queues=queues)


@pytest.mark.parametrize("mutate,field", [
    (lambda s: _with(s, "pci", config=b"\x86\x80" + s.pci.config[2:]), "pci.config"),  # vendor ID is read-only
    (lambda s: _with(s, "pci", msix_table=s.pci.msix_table[:16]), "pci.msix_table"),
    (lambda s: _with(s, "virtio", negotiated_features=s.virtio.negotiated_features | 1 << 50),
     "virtio.negotiated_features"),
    (lambda s: _with(s, "virtio", queues=()), "virtio.queues"),
    (lambda s: _with(s, "virtio", features_locked=False, negotiated_features=0), "virtio.status"),
    (lambda s: _with(s, "virtio", config_msix_vector=7), "virtio.config_msix_vector"),
    (lambda s: _with_queue(s, size=4096), "virtio.queues[0].size"),
    (lambda s: _with_queue(s, last_avail_idx=9, used_idx=0), "virtio.queues[0].last_avail_idx"),
    (lambda s: _with_queue(s, notify_off=5), "virtio.queues[0].notify_off"),
    (lambda s: _with_queue(s, msix_vector=300), "virtio.queues[0].msix_vector"),
    (lambda s: _with(s, "transport", queue_regs=(dataclasses.replace(s.transport.queue_regs[0], msix_vector=9),)),
     "transport.queue_regs[0].msix_vector"),
])
def test_state_that_does_not_fit_the_destination_is_refused_by_field(disk: Path, mutate, field: str) -> None:
    src, state = _saved(disk)
    dst = blk_rig(disk, enable=False)
    before = dst.fn.config.snapshot()
    with pytest.raises(StateError) as err:
        dst.fn.load(through_stream(mutate(state)))
    assert str(err.value).startswith(f"migration stream: section '{IDSTR}': field '{field}': "), err.value
    assert "\n" not in str(err.value)
    assert dst.fn.config.snapshot() == before and dst.vdev.status == 0, "nothing was loaded"


@pytest.mark.parametrize("changes,field", [
    ({"avail_event": 0x10000}, "avail_event"),
    ({"size": 40000}, "size"),
    ({"used_wrap": 2}, "used_wrap"),
])
def test_queue_schema_refuses_out_of_range_values(changes: dict, field: str) -> None:
    with pytest.raises(StateError, match=rf"field 'queues\[0\].{field}'"):
        _core_with(QueueState(**{"size": 8, **changes})).validate(f"section '{IDSTR}'")


def _core_with(q: QueueState) -> VirtioCoreState:
    return VirtioCoreState(queues=(q,))


def test_truncated_and_oversized_sections_name_the_field(disk: Path) -> None:
    _, state = _saved(disk)
    payload = state.encode()
    with pytest.raises(StateError, match=rf"section '{IDSTR}': field 'virtio.queues\[0\].suppressed'"):
        type(state).decode(payload[: -len(state.device.encode_fields()) - 1], 1, IDSTR)  # type: ignore[attr-defined]
    core = VirtioCoreState().encode()
    huge = core[:-4] + (5000).to_bytes(4, "big")
    with pytest.raises(StateError, match=r"field 'queues': 5000 entries, at most 1024 allowed"):
        VirtioCoreState.decode(huge, 1)
    with pytest.raises(StateError, match=r"field 'pci.config': 257 bytes, at most 256"):
        type(state).decode(b"\0\0\x01\x01" + payload[4:], 1, IDSTR)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_never_escapes_as_anything_but_state_error(disk: Path, data: st.DataObject) -> None:
    """Flipped bytes anywhere in a real section: decode and load either accept or give one StateError."""
    src, state = _saved(disk)
    payload = bytearray(state.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    dst = blk_rig(disk, enable=False)
    try:
        dst.fn.load(type(state).decode(bytes(payload), 1, IDSTR))
    except StateError as err:
        assert "\n" not in str(err)
        return
    dst.notify(0)  # a state that loaded must survive use: driver errors become DEVICE_NEEDS_RESET, not crashes


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packed=st.booleans(), size=st.sampled_from([1, 3, 8, 256, 1024]),
       area=st.sampled_from([0, 0x10000, RAM_SIZE - 16, RAM_SIZE, 0xFFFF_FFFF_FFFF_F000, 7]),
       last_avail=st.integers(0, 0xFFFF), ahead=st.sampled_from([0, 1, 7, 300, 0x8000]),
       wraps=st.tuples(st.booleans(), st.booleans()), avail_event=st.sampled_from([0, 5, 0xFFFF, 0xFFFFFFFF]),
       counters=st.tuples(st.integers(0, 2048), st.integers(0, 9)),
       ring=st.binary(min_size=64, max_size=64))
def test_hostile_ring_state_is_refused_or_only_ever_fails_the_device(
        disk: Path, packed: bool, size: int, area: int, last_avail: int, ahead: int, wraps: tuple[bool, bool],
        avail_event: int, counters: tuple[int, int], ring: bytes) -> None:
    """Any ring state the schema allows either does not fit (one StateError) or loads; then a notification
    and a completion never crash the model: what the driver wrote badly is DEVICE_NEEDS_RESET (2.1.2)."""
    src = blk_rig(disk, packed="on")
    drv = SplitDriver(src.mem, 8)
    src.init_driver(FEATS | (F.bit(F.VIRTIO_F_RING_PACKED) if packed else 0), {0: drv})
    state = src.fn.save()
    top = (1 << 64) - 1
    state = _with_queue(state, size=size, desc_addr=area, driver_addr=min(area + 0x1000, top) if area > 7 else area,
                        device_addr=min(area + 0x2000, top) if area > 7 else area, last_avail_idx=last_avail,
                        used_idx=(last_avail - ahead) & 0xFFFF, avail_wrap=wraps[0], used_wrap=wraps[1],
                        avail_event=avail_event, signalled_used=counters[0], pushed=counters[1])
    dst = blk_rig(disk, enable=False, packed="on")
    dst.mem.write(0x10000, ring * 64)  # whatever a driver left in the areas
    try:
        dst.fn.load(through_stream(state))
    except StateError as err:
        assert "\n" not in str(err)
        event("refused")
        return
    event("loaded")
    dst.vdev.queue_notify(0)
    assert not [f for f in dst.vdev.failures if f.startswith("device error")], dst.vdev.failures  # no model bug

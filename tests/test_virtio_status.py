"""Device status machine, feature negotiation, config space and reset (VIRTIO 1.2 2.1, 2.2, 2.4, 2.5, 3.1)."""

from __future__ import annotations

from test_virtio_helpers import EVENT_IDX, INDIRECT, MODERN, PACKED, EchoDevice, SplitDriver, bring_up, make_mem

from refvm.virtio import features as F
from refvm.virtio import status as S
from refvm.virtio.packed_queue import PackedQueue
from refvm.virtio.queue import NO_VECTOR
from refvm.virtio.split_queue import SplitQueue

ACK_DRV = S.ACKNOWLEDGE | S.DRIVER


def test_offered_features_include_core_bits() -> None:
    dev = EchoDevice(make_mem())
    offered = dev.device_features
    for b in (F.VIRTIO_F_VERSION_1, F.VIRTIO_F_RING_INDIRECT_DESC, F.VIRTIO_F_RING_EVENT_IDX, 0):
        assert F.has(offered, b)
    assert F.has(offered, F.VIRTIO_F_RING_PACKED)
    assert dev.device_feature_word(0) == offered & 0xFFFFFFFF
    assert dev.device_feature_word(1) == offered >> 32
    assert dev.device_feature_word(2) == 0 and dev.device_feature_word(99) == 0
    no_packed = EchoDevice(make_mem(), packed=False)
    assert not F.has(no_packed.device_features, F.VIRTIO_F_RING_PACKED)
    assert "VERSION_1" in F.describe(offered, dev.feature_names)


def test_normal_initialisation_sequence() -> None:
    dev = EchoDevice(make_mem())
    assert dev.status == 0
    assert bring_up(dev, MODERN | INDIRECT | EVENT_IDX)
    assert dev.status == ACK_DRV | S.FEATURES_OK | S.DRIVER_OK
    assert dev.live
    assert dev.negotiated_features == MODERN | INDIRECT | EVENT_IDX
    assert all(isinstance(q, SplitQueue) and q.event_idx and q.indirect for q in dev.queues)
    assert dev.violations == []
    assert S.describe(dev.status) == "0x0f (ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK)"


def test_packed_negotiation_switches_ring_format() -> None:
    dev = EchoDevice(make_mem())
    assert bring_up(dev, MODERN | PACKED)
    assert all(isinstance(q, PackedQueue) for q in dev.queues)
    dev.write_status(0)
    assert all(isinstance(q, SplitQueue) for q in dev.queues)


def test_features_ok_refused_for_features_not_offered() -> None:
    dev = EchoDevice(make_mem(), packed=False)
    assert not bring_up(dev, MODERN | PACKED)
    assert dev.status == ACK_DRV  # 3.1.1 step 6: FEATURES_OK reads back clear
    assert "not offered" in dev.feature_refusals[-1]


def test_features_ok_refused_without_version_1() -> None:
    dev = EchoDevice(make_mem())
    assert not bring_up(dev, INDIRECT)
    assert dev.status == ACK_DRV
    assert "VERSION_1" in dev.feature_refusals[-1]


def test_features_ok_refused_by_device_specific_dependency() -> None:
    dev = EchoDevice(make_mem())
    assert not bring_up(dev, MODERN | 1)  # ECHO_UPPER without INDIRECT_DESC
    assert "requires" in dev.feature_refusals[-1]
    assert bring_up(dev, MODERN | 1 | INDIRECT)


def test_refused_features_can_be_retried_then_locked() -> None:
    dev = EchoDevice(make_mem())
    dev.write_status(S.ACKNOWLEDGE)
    dev.write_status(ACK_DRV)
    dev.set_driver_feature_word(0, 1 << 31)  # bit 31: not offered
    dev.write_status(ACK_DRV | S.FEATURES_OK)
    assert dev.status == ACK_DRV
    dev.set_driver_feature_word(0, 0)
    dev.set_driver_feature_word(1, 1)  # VERSION_1
    dev.write_status(ACK_DRV | S.FEATURES_OK)
    assert dev.status & S.FEATURES_OK
    # After FEATURES_OK, feature writes are ignored (3.1.1 step 5).
    dev.set_driver_feature_word(0, INDIRECT)
    assert dev.driver_feature_word(0) == 0
    assert dev.negotiated_features == MODERN
    assert any("after FEATURES_OK" in v for v in dev.violations)


def test_driver_feature_windows() -> None:
    dev = EchoDevice(make_mem())
    dev.set_driver_feature_word(1, 0xDEADBEEF)
    dev.set_driver_feature_word(0, 0x1234)
    assert dev.driver_feature_word(1) == 0xDEADBEEF
    assert dev.driver_feature_word(0) == 0x1234
    assert dev.driver_features == (0xDEADBEEF << 32) | 0x1234
    dev.set_driver_feature_word(7, 1)
    assert dev.driver_feature_word(7) == 0


def test_driver_ok_without_features_ok_fails_the_device() -> None:
    dev = EchoDevice(make_mem())
    calls = []
    dev.on_config_change = lambda: calls.append("config")
    dev.write_status(S.ACKNOWLEDGE)
    dev.write_status(ACK_DRV)
    dev.write_status(ACK_DRV | S.DRIVER_OK)
    assert dev.status & S.DEVICE_NEEDS_RESET
    assert "FEATURES_OK" in (dev.error or "")
    assert calls == ["config"]
    assert not dev.live


def test_clearing_status_bits_is_tolerated_and_recorded() -> None:
    dev = EchoDevice(make_mem())
    assert bring_up(dev)
    dev.write_status(ACK_DRV | S.FEATURES_OK)  # clears DRIVER_OK
    assert dev.status == ACK_DRV | S.FEATURES_OK
    assert not dev.live
    assert any("cleared" in v for v in dev.violations)


def test_driver_cannot_set_or_clear_needs_reset() -> None:
    dev = EchoDevice(make_mem())
    assert bring_up(dev)
    dev.write_status(dev.status | S.DEVICE_NEEDS_RESET)
    assert not dev.status & S.DEVICE_NEEDS_RESET
    dev.fail("test")
    dev.write_status(ACK_DRV | S.FEATURES_OK | S.DRIVER_OK)
    assert dev.status & S.DEVICE_NEEDS_RESET


def test_fail_notifies_once_and_only_reset_recovers() -> None:
    dev = EchoDevice(make_mem())
    calls = []
    dev.on_config_change = lambda: calls.append(1)
    assert bring_up(dev)
    dev.fail("first")
    dev.fail("second")
    assert calls == [1]
    assert dev.error == "first" and dev.failures == ["first", "second"]
    assert dev.read_isr() == 2 and dev.read_isr() == 0
    dev.write_status(0)
    assert dev.status == 0 and dev.error is None
    assert bring_up(dev)
    assert dev.live


def test_fail_before_driver_ok_does_not_notify() -> None:
    dev = EchoDevice(make_mem())
    calls = []
    dev.on_config_change = lambda: calls.append(1)
    dev.write_status(S.ACKNOWLEDGE)
    dev.fail("early")
    assert dev.status == S.ACKNOWLEDGE | S.DEVICE_NEEDS_RESET
    assert calls == []


def test_reset_clears_everything() -> None:
    mem = make_mem()
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, MODERN | EVENT_IDX, configure=drv.configure)
    q = dev.queues[0]
    q.msix_vector = 3
    dev.config_msix_vector = 1
    dev.config_changed()
    assert dev.isr
    dev.write_status(0)
    assert dev.status == 0
    assert dev.driver_features == 0 and dev.negotiated_features == 0
    assert dev.isr == 0
    assert dev.config_msix_vector == NO_VECTOR
    for i, q in enumerate(dev.queues):
        assert not q.enabled
        assert q.size == dev.queue_max_sizes[i]
        assert (q.desc_addr, q.driver_addr, q.device_addr) == (0, 0, 0)
        assert q.msix_vector == NO_VECTOR
        assert not q.event_idx


def test_config_space_and_generation() -> None:
    dev = EchoDevice(make_mem())
    g0 = dev.config_generation
    assert dev.config_read(0, 4) == 0x12345678
    assert dev.config_read(2, 2) == 0x1234
    assert dev.config_read(6, 4) == 0  # past the end reads 0
    dev.config_write(0, 4, 0xFFFFFFFF)  # read-only part
    assert dev.config_read(0, 4) == 0x12345678
    dev.config_write(4, 2, 0xBEEF)
    assert dev.config_read(4, 2) == 0xBEEF
    dev.config_write(7, 4, 1)  # out of bounds: ignored
    assert dev.config_generation == g0
    # Several device-side changes between two driver looks: one increment (4.1.4.3.1 note).
    dev.config_changed()
    dev.config_changed()
    g1 = dev.config_generation
    assert g1 == (g0 + 1) & 0xFF
    assert dev.config_generation == g1
    # A driver read racing a change sees a new generation afterwards (2.5).
    before = dev.config_generation
    dev.config_changed()
    dev.config_read(0, 4)
    assert dev.config_generation != before


def test_config_change_interrupt_only_when_driver_ok() -> None:
    dev = EchoDevice(make_mem())
    calls = []
    dev.on_config_change = lambda: calls.append(1)
    dev.config_changed()
    assert calls == [] and dev.isr == 0
    assert bring_up(dev)
    dev.config_changed()
    assert calls == [1] and dev.read_isr() == 2


def test_notifications_before_driver_ok_are_ignored() -> None:
    mem = make_mem()
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, configure=drv.configure, driver_ok=False)
    mem.write(0x1000, b"hello")
    drv.publish(drv.chain(0, [(0x1000, 5, False), (0x2000, 5, True)]))
    dev.queue_notify(0)
    assert dev.ignored_notifications == 1
    assert drv.used_idx() == 0 and dev.handled == 0  # 2.1.2: no buffer consumed before DRIVER_OK
    dev.write_status(dev.status | S.DRIVER_OK)
    dev.queue_notify(0)
    assert drv.used_idx() == 1 and mem.read(0x2000, 5) == b"hello"


def test_spurious_and_unknown_queue_notifications() -> None:
    mem = make_mem()
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, configure=drv.configure)
    dev.queue_notify(0)  # nothing available
    dev.queue_notify(1)  # not enabled
    dev.queue_notify(5)  # no such queue
    assert not dev.status & S.DEVICE_NEEDS_RESET
    assert any("does not exist" in v for v in dev.violations)


def test_status_names() -> None:
    assert S.status_names(S.FAILED | 0x10) == ["FAILED", "bit4"]
    assert S.describe(0) == "0x00 (RESET)"
    assert F.feature_names(F.bit(34) | F.bit(3)) == ["bit3", "RING_PACKED"]

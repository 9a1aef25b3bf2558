"""Virtio over PCI bus (VIRTIO 1.2 §4.1): discovery, capability layout, common configuration, notification,
ISR/INTx, MSI-X vectors and the PCI configuration access window."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from conformance.drivers.pci import REVISION_ID, STATUS, STATUS_INTERRUPT, SUBSYSTEM_ID, PciFunction
from conformance.drivers.virtio import (
    CAP_COMMON,
    CAP_DEVICE,
    CAP_ISR,
    CAP_NOTIFY,
    CAP_PCI_CFG,
    COMMON_CFG_MIN_LEN,
    CONFIG_GENERATION,
    DEVICE_FEATURE,
    DEVICE_ID,
    DEVICE_STATUS,
    F_RING_RESET,
    NO_VECTOR,
    NUM_QUEUES,
    QUEUE_DESC,
    QUEUE_ENABLE,
    QUEUE_NOTIFY_OFF,
    QUEUE_RESET,
    QUEUE_SELECT,
    QUEUE_SIZE,
    TRANSITIONAL_ID,
    VIRTIO_VENDOR,
    VirtioPciDevice,
)
from conformance.drivers.virtqueue import DESC_F_NEXT
from conformance.virtio.conftest import Machine, clause
from conformance.virtio.devices import BLK_CAPACITY, S_OK, SECTOR, T_IN, blk_header
from conformance.virtio.test_basic import ALL_DEVICES

PCI = "Virtio Transport Options / Virtio Over PCI Bus"
DISCOVERY = f"{PCI} / PCI Device Discovery"
LAYOUT = f"{PCI} / PCI Device Layout"
CAPS = f"{PCI} / Virtio Structure PCI Capabilities"
COMMON = f"{LAYOUT} / Common configuration structure layout"
NOTIFY = f"{LAYOUT} / Notification capability"
ISR = f"{LAYOUT} / ISR status capability"
DEVCFG = f"{LAYOUT} / Device-specific configuration"
PCICFG = f"{LAYOUT} / PCI configuration access capability"
OPS = f"{PCI} / PCI-specific Initialization And Device Operation"
MSIX = f"{OPS} / Device Initialization / MSI-X Vector Configuration"
USED_NOTIF = f"{OPS} / Used Buffer Notifications"
CONFIG_NOTIF = f"{OPS} / Notification of Device Configuration Changes"


@pytest.fixture(params=sorted(ALL_DEVICES))
def each(request: pytest.FixtureRequest, shared_vm: Callable[..., Machine], tmp_path_factory) -> VirtioPciDevice:  # noqa: ANN001
    """Every device type in turn, BARs mapped, on a module-shared machine (these tests only read)."""
    disk = tmp_path_factory.getbasetemp() / "pci-disk.raw"
    if not disk.exists():
        disk.write_bytes(bytes(SECTOR * 64))
    tap = lambda: request.getfixturevalue("module_tap")  # noqa: E731
    args = [a for kind in sorted(ALL_DEVICES) for a in ALL_DEVICES[kind](str(disk), tap)]
    machine = shared_vm(*args)
    dev = machine.device(request.param)
    dev.kind = request.param  # type: ignore[attr-defined]
    return dev


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# ---- discovery and layout ------------------------------------------------------------------------------


@clause(DISCOVERY)
def test_modern_ids(each: VirtioPciDevice) -> None:
    func: PciFunction = each.func
    ident = func.read32(0)
    assert ident & 0xFFFF == VIRTIO_VENDOR
    assert ident >> 16 == 0x1040 + DEVICE_ID[each.kind], f"device ID {ident >> 16:#x}"  # type: ignore[attr-defined]
    assert 0x1040 <= ident >> 16 <= 0x107F
    assert func.read8(REVISION_ID) >= 1, "non-transitional devices SHOULD have revision >= 1"
    assert func.read16(SUBSYSTEM_ID) >= 0x40, "non-transitional devices SHOULD have subsystem ID >= 0x40"


@clause(DISCOVERY)
def test_transitional_blk_id(vm: Callable[..., Machine], disk: str) -> None:
    machine = vm("-drive", f"if=none,id=d0,file={disk},format=raw", "-device", "virtio-blk-pci,drive=d0")
    ident = machine.func("blk").read32(0)
    assert ident & 0xFFFF == VIRTIO_VENDOR
    assert ident >> 16 in (TRANSITIONAL_ID["blk"], 0x1040 + DEVICE_ID["blk"]), f"{ident >> 16:#x}"


@clause(PCI, CAPS, COMMON, NOTIFY, ISR, DEVCFG, PCICFG)
def test_structure_capabilities(each: VirtioPciDevice) -> None:
    """Each required structure is present, its cap_len covers its fields, it lies inside its BAR, and the
    alignments of §4.1.4.3-§4.1.4.6 hold. The capability walk itself applies the PCI rules."""
    bars = {b.index: b for b in each.func.bars()}
    for cfg_type, min_cap_len in ((CAP_COMMON, 16), (CAP_NOTIFY, 20), (CAP_ISR, 16), (CAP_DEVICE, 16),
                                  (CAP_PCI_CFG, 20)):
        found = each.caps_of(cfg_type)
        assert found, f"no structure of cfg_type {cfg_type}"
        for cap in found:
            assert cap.cap_len >= min_cap_len, f"cfg_type {cfg_type}: cap_len {cap.cap_len} < {min_cap_len}"
            if cfg_type == CAP_PCI_CFG or cap.bar > 5:
                continue
            assert cap.bar in bars, f"cfg_type {cfg_type} names unimplemented BAR{cap.bar}"
            assert cap.offset + cap.length <= bars[cap.bar].size, f"cfg_type {cfg_type} overruns its BAR"
    common, devcfg, notify = each.cap(CAP_COMMON), each.cap(CAP_DEVICE), each.cap(CAP_NOTIFY)
    assert common.offset % 4 == 0 and common.length >= COMMON_CFG_MIN_LEN
    assert devcfg.offset % 4 == 0
    assert notify.offset % 2 == 0, "notify cap.offset must be 2-byte aligned"
    mult = notify.extra
    assert mult == 0 or (_pow2(mult) and mult % 2 == 0), f"notify_off_multiplier {mult}"
    assert notify.length >= 2
    for q in range(each.num_queues):
        each.select_queue(q)
        assert notify.length >= each.common_read(QUEUE_NOTIFY_OFF) * mult + 2, f"queue {q} notifies past cap"


# ---- common configuration ------------------------------------------------------------------------------


@clause(COMMON)
def test_read_only_fields_ignore_writes(blk: Machine) -> None:
    dev = blk.device("blk")
    for off in (NUM_QUEUES, QUEUE_NOTIFY_OFF, CONFIG_GENERATION, DEVICE_FEATURE):
        dev.select_queue(0)
        before = dev.common_read(off)
        dev.common_write(off, ~before & ((1 << (8 * (4 if off == DEVICE_FEATURE else 2 if off != 0x15 else 1))) - 1))
        dev.select_queue(0)
        assert dev.common_read(off) == before, f"read-only field at {off:#x} changed"


@clause(COMMON)
def test_device_feature_windows(each: VirtioPciDevice) -> None:
    low, high = each.device_feature_word(0), each.device_feature_word(1)
    assert (low, high) == (each.device_feature_word(0), each.device_feature_word(1)), "windows not stable"
    for select in (2, 3, 7, 0xFFFFFFFF):
        assert each.device_feature_word(select) == 0, f"device_feature window {select} is not 0"


@clause(COMMON)
def test_driver_feature_reads_back_valid_bits(blk: Machine) -> None:
    dev = blk.device("blk")
    offered = dev.device_features()
    dev.acknowledge()
    for subset in (offered, offered & 0xFFFFFFFF00000000, offered & ~0x3000_0000):
        dev.write_driver_features(subset)
        assert dev.driver_features() == subset


@clause(COMMON)
def test_queue_size_rules(blk: Machine) -> None:
    dev = blk.device("blk")
    n = dev.num_queues
    assert n >= 1
    for q in range(n):
        size = dev.queue_max_size(q)
        assert size == 0 or _pow2(size), f"queue {q}: size {size} is not a power of 2"
    assert dev.queue_max_size(n) == 0, "queue_size of a queue index past num_queues must be 0"
    dev.acknowledge()
    assert dev.negotiate(dev.device_features() & (1 << 32))
    dev.select_queue(0)
    max_size = dev.common_read(QUEUE_SIZE)
    for smaller in (max_size // 2, 4, 2):
        dev.common_write(QUEUE_SIZE, smaller)
        assert dev.common_read(QUEUE_SIZE) == smaller


@clause(LAYOUT, COMMON)
def test_64bit_fields_have_independent_halves(blk: Machine, disk: str) -> None:
    dev = blk.device("blk")
    base = dev.region(CAP_DEVICE)
    high, low = blk.qt.readl(base + BLK_CAPACITY + 4), blk.qt.readl(base + BLK_CAPACITY)
    assert (high << 32 | low) * SECTOR == 2048 * SECTOR
    dev.acknowledge()
    assert dev.negotiate(1 << 32)
    dev.select_queue(0)
    common = dev.region(CAP_COMMON)
    blk.qt.writel(common + QUEUE_DESC, 0x0012_3000)
    blk.qt.writel(common + QUEUE_DESC + 4, 0x1)
    assert blk.qt.readl(common + QUEUE_DESC) == 0x0012_3000
    blk.qt.writel(common + QUEUE_DESC + 4, 0)
    assert blk.qt.readl(common + QUEUE_DESC) == 0x0012_3000, "writing the high half changed the low half"
    assert dev.common_read(QUEUE_DESC) == 0x0012_3000


@clause(COMMON)
def test_queue_reset(blk: Machine) -> None:
    """With RING_RESET: queue_reset reads 0 after enable; writing 1 resets the queue, which ends with 0 in
    both queue_reset and queue_enable; the queue can then be set up again and works; 0 again after a reset."""
    dev = blk.device("blk")
    if not dev.device_features() >> F_RING_RESET & 1:
        pytest.skip("VIRTIO_F_RING_RESET not offered")
    dev, (vq,) = blk.ready("blk", want=1 << F_RING_RESET)
    vq.transact([blk_header(T_IN, 1)], [SECTOR, 1])
    dev.select_queue(0)
    assert dev.common_read(QUEUE_RESET) == 0, "queue_reset not 0 after the queue was enabled"
    dev.common_write(QUEUE_RESET, 1)
    deadline = time.monotonic() + 2
    while dev.common_read(QUEUE_RESET) != 0:
        assert time.monotonic() < deadline, "queue reset never completed"
    assert dev.common_read(QUEUE_ENABLE) == 0, "queue_enable not 0 once the queue reset completed"
    vq2 = blk.split(dev, 0, 8)
    c = vq2.transact([blk_header(T_IN, 2)], [SECTOR, 1])
    assert c.data[1] == bytes([S_OK]) and c.data[0][:8] == b"sect0002", "queue unusable after re-enable"
    dev.select_queue(0)
    assert dev.common_read(QUEUE_RESET) == 0
    dev.reset()
    dev.select_queue(0)
    assert dev.common_read(QUEUE_RESET) == 0, "queue_reset not 0 after a device reset"


# ---- notification and interrupts -----------------------------------------------------------------------


@clause(NOTIFY)
def test_notify_at_computed_address(blk: Machine) -> None:
    """The kick goes to BAR + cap.offset + queue_notify_off * multiplier and the device acts on it."""
    dev, (vq,) = blk.ready("blk")
    assert vq.notify_addr == dev.region(CAP_NOTIFY) + dev.cap(CAP_NOTIFY).extra * dev.common_read(QUEUE_NOTIFY_OFF)
    c = vq.transact([blk_header(T_IN, 2)], [SECTOR, 1])
    assert c.data[1] == bytes([S_OK]) and c.data[0][:8] == b"sect0002"


def _route_intx(machine: Machine, irq: int = 11) -> None:
    """Route PIIX PIRQA-D to one ISA IRQ (what firmware does) and intercept the IOAPIC's inputs."""
    from conformance.drivers.pci import ConfigMechanism1

    cfg = ConfigMechanism1(machine.qt)
    for pirq in range(4):
        cfg.write(0, 1, 0, 0x60 + pirq, 1, irq)
    machine.qt.irq_intercept_in("ioapic")


@clause(ISR, USED_NOTIF)
def test_isr_queue_bit_intx_and_read_to_clear(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk")
    _route_intx(blk)
    assert dev.func.read16(STATUS) & STATUS_INTERRUPT == 0
    vq.transact([blk_header(T_IN, 1)], [SECTOR, 1])
    assert dev.func.read16(STATUS) & STATUS_INTERRUPT, "PCI Interrupt Status not set with ISR bits pending"
    assert blk.qt.irq_level.get(11) or any(e.line == 11 and e.raised for e in blk.qt.poll_irqs(0.5)), (
        "INTx not asserted at the IOAPIC")
    assert dev.isr() & 1, "Queue Interrupt bit not set in ISR status"
    assert dev.isr() == 0, "ISR status not reset to 0 by the read"
    assert dev.func.read16(STATUS) & STATUS_INTERRUPT == 0, "PCI Interrupt Status still set after ISR read"
    blk.qt.poll_irqs(0.05)
    assert blk.qt.irq_level.get(11) is False, "INTx still asserted after the ISR read"


def _break_device(vq) -> None:  # noqa: ANN001
    """Post a chain whose `next` leaves the table: devices treat it as an error needing reset."""
    hdr = vq.out_buf(blk_header(T_IN, 0))
    vq.write_desc(vq.desc_addr, 0, hdr, DESC_F_NEXT, vq.size + 3)
    vq.post_head([0])
    vq.kick()


@clause(ISR, CONFIG_NOTIF)
def test_isr_config_bit_on_configuration_change(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", size=8)
    _break_device(vq)
    for _ in range(200):
        if dev.func.read16(STATUS) & STATUS_INTERRUPT:
            break
    assert dev.func.read16(STATUS) & STATUS_INTERRUPT, "no INTx after the configuration change (NEEDS_RESET)"
    assert dev.isr() & 2, "Device Configuration Interrupt bit not set"


@clause(MSIX)
def test_msix_table_size(each: VirtioPciDevice) -> None:
    info = each.msix()
    if info is None:
        pytest.skip("device has no MSI-X capability")
    assert 2 <= info.table_size <= 0x800


@clause(MSIX)
def test_msix_vector_mapping(blk: Machine) -> None:
    dev = blk.device("blk")
    info = dev.msix()
    assert info is not None
    dev.msix_enable()
    for vector in range(info.table_size):
        assert dev.set_config_vector(vector) == vector
        assert dev.set_queue_vector(0, vector) == vector
    assert dev.set_config_vector(NO_VECTOR) == NO_VECTOR, "unmapping the config event failed"
    assert dev.set_queue_vector(0, NO_VECTOR) == NO_VECTOR, "unmapping the queue event failed"
    assert dev.set_queue_vector(0, info.table_size) == NO_VECTOR, "a failed mapping must read back NO_VECTOR"
    assert dev.set_config_vector(info.table_size + 7) == NO_VECTOR


@clause(MSIX, USED_NOTIF)
def test_msix_queue_interrupt_lands_on_its_vector(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", msix=True)
    vq.transact([blk_header(T_IN, 1)], [SECTOR, 1])
    assert dev.wait_msix(1), "no MSI-X message for the queue's vector"
    assert not dev.msix_fired(0), "the configuration vector fired for a used buffer"


@clause(USED_NOTIF)
def test_no_interrupt_for_queue_without_vector(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", msix=True)
    assert dev.set_queue_vector(0, NO_VECTOR) == NO_VECTOR
    vq.transact([blk_header(T_IN, 1)], [SECTOR, 1])
    vq.assert_idle(0.05)
    assert not dev.msix_fired(1) and not dev.msix_fired(0), "an MSI-X message was sent for NO_VECTOR"
    assert dev.func.read16(STATUS) & STATUS_INTERRUPT == 0, "INTx asserted while MSI-X is enabled"


@clause(CONFIG_NOTIF)
def test_no_interrupt_for_config_without_vector(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", msix=True, size=8)
    assert dev.set_config_vector(NO_VECTOR) == NO_VECTOR
    _break_device(vq)
    vq.assert_idle(0.1)
    assert not dev.msix_fired(0) and not dev.msix_fired(1), "interrupt for a config change with NO_VECTOR"
    assert dev.func.read16(STATUS) & STATUS_INTERRUPT == 0, "INTx asserted while MSI-X is enabled"


# ---- PCI configuration access capability -----------------------------------------------------------------


@clause(PCICFG)
def test_pci_cfg_window_reads_and_writes_bars(blk: Machine) -> None:
    dev = blk.device("blk")
    common = dev.cap(CAP_COMMON)
    assert dev.pci_cfg_read(common.bar, common.offset + NUM_QUEUES, 2) == dev.num_queues
    assert dev.pci_cfg_read(common.bar, common.offset + DEVICE_FEATURE, 4) == dev.device_feature_word(0)
    devcfg = dev.cap(CAP_DEVICE)
    assert dev.pci_cfg_read(devcfg.bar, devcfg.offset + BLK_CAPACITY, 4) == 2048
    dev.pci_cfg_write(common.bar, common.offset + DEVICE_STATUS, 1, 1)
    assert dev.status == 1, "a write through pci_cfg_data did not reach device_status"
    dev.pci_cfg_write(common.bar, common.offset + QUEUE_SELECT, 2, 0)
    assert dev.common_read(QUEUE_SELECT) == 0
    assert dev.pci_cfg_read(common.bar, common.offset + DEVICE_STATUS, 1) == 1

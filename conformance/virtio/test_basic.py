"""Basic facilities of a virtio device (VIRTIO 1.2 §2.1-§2.6, §3.1, §6), judged through virtio-pci.

The device under test is mostly virtio-blk: its requests have an observable side (a host file the test reads
directly), which makes "consumed" and "not consumed" unambiguous.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from conformance.drivers.virtio import (
    ACKNOWLEDGE,
    CONFIG_GENERATION,
    CONFIG_MSIX_VECTOR,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    F_IN_ORDER,
    F_SR_IOV,
    F_VERSION_1,
    FEATURES_OK,
    NO_VECTOR,
    QUEUE_ENABLE,
    QUEUE_MSIX_VECTOR,
    QUEUE_SIZE,
)
from conformance.drivers.virtqueue import DESC_F_NEXT, Seg
from conformance.targets import Target
from conformance.verdicts import clause_check, expect, known
from conformance.virtio.conftest import (
    BALLOON_ARGS,
    RNG_ARGS,
    Machine,
    blk_args,
    clause,
    net_args,
)
from conformance.virtio.devices import BLK_CAPACITY, S_OK, SECTOR, T_IN, T_OUT, blk_header
from conformance.virtio.known import BEFORE_DRIVER_OK, BUFFER_OUTSIDE_RAM, FEATURES_OK_UNOFFERED_BIT

STATUS = "Basic Facilities of a Virtio Device / Device Status Field"
FEATURES = "Basic Facilities of a Virtio Device / Feature Bits"
RESET = "Basic Facilities of a Virtio Device / Device Reset"
CONFIG = "Basic Facilities of a Virtio Device / Device Configuration Space"
FRAMING = "Basic Facilities of a Virtio Device / Message Framing"
RESERVED = "Reserved Feature Bits"
COMMON = "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / Common configuration structure layout"
MSIX_CFG = ("Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device Operation / "
            "Device Initialization / MSI-X Vector Configuration")

#: (kind, argv) of every device type the suite knows, for facility checks that apply to all of them.
#: kind -> argv from (disk image, a callable giving a tap name), for checks that apply to every device type.
ALL_DEVICES: dict[str, Callable[[str, Callable[[], str]], list[str]]] = {
    "blk": lambda disk, tap: blk_args(disk),
    "rng": lambda disk, tap: RNG_ARGS,
    "balloon": lambda disk, tap: BALLOON_ARGS,
    "console": lambda disk, tap: ["-device", "virtio-serial-pci,disable-legacy=on"],
    "net": lambda disk, tap: net_args(tap()),
}


@pytest.fixture(params=sorted(ALL_DEVICES))
def any_device(request: pytest.FixtureRequest, vm: Callable[..., Machine], disk: str):  # noqa: ANN201
    """(machine, kind) for each device type in turn."""
    return vm(*ALL_DEVICES[request.param](disk, lambda: request.getfixturevalue("tap"))), request.param


def _read_sector(dev, vq, sector: int) -> tuple[int, bytes]:  # noqa: ANN001
    c = vq.transact([blk_header(T_IN, sector)], [SECTOR, 1])
    return c.data[1][0], c.data[0]


# ---- device status -------------------------------------------------------------------------------------


@clause(STATUS, RESET, COMMON)
def test_status_steps_read_back_and_reset_to_zero(blk: Machine) -> None:
    dev = blk.device("blk")
    assert dev.status == 0, "a device that was never touched starts with status 0"
    dev.status = ACKNOWLEDGE
    assert dev.status == ACKNOWLEDGE
    dev.status = ACKNOWLEDGE | DRIVER
    assert dev.status == ACKNOWLEDGE | DRIVER
    assert dev.negotiate(1 << F_VERSION_1)
    dev.driver_ok()
    assert dev.status == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    dev.status = 0
    assert dev.status == 0, "device_status must read 0 once the reset written as 0 is done"


@clause(STATUS)
def test_no_buffer_consumed_before_driver_ok(blk: Machine, disk: str, target: Target, request) -> None:  # noqa: ANN001
    """A request made available and notified before DRIVER_OK must neither execute nor be used."""
    dev = blk.device("blk")
    dev.initialize(driver_ok=False)
    dev.msix_enable()
    dev.set_config_vector(0)
    vq = blk.split(dev, 0, 8, vector=1)
    vq.add([vq.out_buf(blk_header(T_OUT, 3)), vq.out_buf(b"E" * SECTOR), vq.in_buf(1)])
    vq.kick()
    known(request, target, BEFORE_DRIVER_OK)
    try:
        with clause_check():
            vq.assert_idle(0.2)
            assert not dev.msix_fired(1), "used buffer notification sent before DRIVER_OK"
    finally:
        with open(disk, "rb") as f:
            f.seek(3 * SECTOR)
            written = f.read(8) == b"EEEEEEEE"
    expect(not written, "the request was executed before DRIVER_OK")


@clause(STATUS, "Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device "
        "Operation / Notification of Device Configuration Changes")
def test_needs_reset_after_bad_descriptor_with_config_notification(blk: Machine) -> None:
    """A chain whose `next` points past the descriptor table is an error state: the device SHOULD set
    DEVICE_NEEDS_RESET and, as DRIVER_OK is set, MUST send a configuration change notification."""
    dev, (vq,) = blk.ready("blk", msix=True, size=8)
    hdr = vq.out_buf(blk_header(T_IN, 0))
    vq.write_desc(vq.desc_addr, 0, hdr, DESC_F_NEXT, vq.size + 5)
    vq.post_head([0])
    vq.kick()
    assert dev.wait_msix(0, 2.0), "no configuration change notification after DEVICE_NEEDS_RESET"
    assert dev.status & DEVICE_NEEDS_RESET, f"status {dev.status:#x} lacks DEVICE_NEEDS_RESET"
    dev.reset()
    assert dev.status == 0


@clause(STATUS)
def test_buffer_outside_guest_ram_is_an_error(blk: Machine, target: Target, request) -> None:  # noqa: ANN001
    """A device-writable buffer at an address with no RAM behind it (512 MiB on a 128 MiB machine): the
    device cannot do the request, so it SHOULD enter DEVICE_NEEDS_RESET, or at least fail the request. What
    it must not do is report success for data that went nowhere."""
    dev, (vq,) = blk.ready("blk", msix=True, size=8)
    vq.add([vq.out_buf(blk_header(T_IN, 0)), Seg(0x2000_0000, SECTOR, True), vq.in_buf(1)])
    vq.kick()
    known(request, target, BUFFER_OUTSIDE_RAM)
    deadline = time.monotonic() + 2
    while not dev.status & DEVICE_NEEDS_RESET:
        used = vq.get_used()
        if used is not None:
            expect(vq.read_back(used.id)[-1] != bytes([S_OK]), "a request into non-existent memory reported OK")
            return
        assert time.monotonic() < deadline, "the request neither completed nor put the device in NEEDS_RESET"
        time.sleep(0.002)


# ---- feature bits --------------------------------------------------------------------------------------


@clause(FEATURES, COMMON)
def test_features_ok_refused_for_bit_not_offered(blk: Machine, target: Target, request) -> None:  # noqa: ANN001
    """Feature bits outside device_feature make an invalid subset: a device that mirrors them in
    driver_feature must refuse FEATURES_OK (§2.2.1, note in §4.1.4.3.1); one that drops them may accept."""
    known(request, target, FEATURES_OK_UNOFFERED_BIT)
    dev = blk.device("blk")
    offered = dev.device_features()
    bogus = next(b for b in range(50, 64) if not offered >> b & 1)
    dev.acknowledge()
    accepted = dev.negotiate(offered & (1 << F_VERSION_1) | 1 << bogus)
    present = dev.driver_features()
    expect(not (accepted and present >> bogus & 1),
           f"FEATURES_OK accepted with unoffered bit {bogus} still present in driver_feature {present:#x}")


@clause(FEATURES, RESERVED)
def test_valid_subsets_are_accepted_and_renegotiated(blk: Machine) -> None:
    dev = blk.device("blk")
    offered = dev.device_features()
    for subset in (1 << F_VERSION_1, offered, offered & ~(1 << 28) & ~(1 << 29)):
        for attempt in range(2):  # the same set again after a reset: SHOULD NOT fail re-negotiation
            dev.acknowledge()
            assert dev.negotiate(subset), f"FEATURES_OK refused for valid subset {subset:#x} (attempt {attempt})"
            assert dev.driver_features() == subset


@clause(FEATURES, RESERVED)
def test_offered_features_are_consistent(any_device) -> None:  # noqa: ANN001
    """VERSION_1 offered; no SR-IOV bit without an SR-IOV capability (none on a conventional PCI bus);
    no offered net feature without the features it depends on."""
    machine, kind = any_device
    dev = machine.device(kind)
    offered = dev.device_features()
    assert offered >> F_VERSION_1 & 1, f"virtio-{kind} does not offer VIRTIO_F_VERSION_1"
    assert not offered >> F_SR_IOV & 1, f"virtio-{kind} offers VIRTIO_F_SR_IOV without an SR-IOV capability"
    if kind == "net":
        from conformance.virtio.devices import net_requires

        assert net_requires(offered) == []


@clause(RESERVED)
def test_in_order_if_offered(blk: Machine) -> None:
    dev = blk.device("blk")
    if not dev.device_features() >> F_IN_ORDER & 1:
        pytest.skip("device does not offer VIRTIO_F_IN_ORDER")
    dev, (vq,) = blk.ready("blk", want=1 << F_IN_ORDER)
    heads = [vq.add([vq.out_buf(blk_header(T_IN, n)), vq.in_buf(SECTOR), vq.in_buf(1)]) for n in range(6)]
    vq.kick()
    assert [vq.wait_used().id for _ in heads] == heads


# ---- reset ---------------------------------------------------------------------------------------------


@clause(RESET, COMMON, MSIX_CFG)
def test_reset_clears_queues_and_vectors(blk: Machine) -> None:
    max_size = blk.device("blk").queue_max_size(0)
    dev, (vq,) = blk.ready("blk", msix=True, size=8)
    assert _read_sector(dev, vq, 1)[0] == S_OK
    dev.reset()
    assert dev.status == 0
    dev.select_queue(0)
    assert dev.common_read(QUEUE_ENABLE) == 0, "queue_enable must be 0 after reset"
    assert dev.common_read(QUEUE_MSIX_VECTOR) == NO_VECTOR, "queue vector still mapped after reset"
    assert dev.common_read(CONFIG_MSIX_VECTOR) == NO_VECTOR, "config vector still mapped after reset"
    assert dev.common_read(QUEUE_SIZE) == max_size, "queue_size not back to the maximum after reset"


@clause(RESET)
def test_no_queue_access_after_reset(blk: Machine, disk: str) -> None:
    """After the reset completes, buffers placed in the old ring and notified must stay untouched."""
    dev, (vq,) = blk.ready("blk", msix=True)
    assert _read_sector(dev, vq, 0)[0] == S_OK
    dev.msix_fired(1)
    dev.reset()
    vq.add([vq.out_buf(blk_header(T_OUT, 5)), vq.out_buf(b"R" * SECTOR), vq.in_buf(1)])
    vq.kick()
    vq.assert_idle(0.2)
    assert not dev.msix_fired(1)
    with open(disk, "rb") as f:
        f.seek(5 * SECTOR)
        assert f.read(8) == b"sect0005"


# ---- configuration space -------------------------------------------------------------------------------


@clause(CONFIG)
def test_config_readable_before_features_ok(blk: Machine, disk: str) -> None:
    dev = blk.device("blk")
    before = dev.config_bytes(0, 60)
    capacity = dev.config_read(BLK_CAPACITY, 8)
    dev.acknowledge()
    assert dev.negotiate(dev.device_features())
    assert dev.config_bytes(0, 60) == before, "config space differs once FEATURES_OK is set"
    assert capacity * SECTOR == os.path.getsize(disk)


@clause(CONFIG, COMMON)
def test_config_generation_stable_without_change(blk: Machine) -> None:
    dev = blk.device("blk")
    gen = dev.common_read(CONFIG_GENERATION)
    for _ in range(3):
        dev.config_bytes(0, 16)
        assert dev.common_read(CONFIG_GENERATION) == gen


@clause(CONFIG, COMMON, "Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And "
        "Device Operation / Notification of Device Configuration Changes")
def test_config_generation_changes_with_config(running_vm: Callable[..., Machine], disk: str) -> None:
    """After the driver read a configuration value that changed (capacity, via a host-side resize),
    config_generation reads differently; the change is also notified on the configuration vector."""
    m = running_vm(*blk_args(disk), qmp=True)
    dev, _ = m.ready("blk", msix=True)
    gen = dev.common_read(CONFIG_GENERATION)
    assert dev.config_read(BLK_CAPACITY, 8) == 2048
    m.qmp_call("block_resize", device="d0", size=4 * 1024 * 1024)
    assert dev.wait_msix(0), "no configuration change notification for the resize"
    assert dev.config_read(BLK_CAPACITY, 8) == 8192
    assert dev.common_read(CONFIG_GENERATION) != gen, "config_generation unchanged after a changed value was read"


# ---- message framing -----------------------------------------------------------------------------------

LAYOUTS = {
    "header-split-4-12": lambda hdr, data: ([hdr[:4], hdr[4:]], [SECTOR, 1]),
    "header-bytewise": lambda hdr, data: ([hdr[i : i + 1] for i in range(16)], [SECTOR, 1]),
    "data-and-status-one": lambda hdr, data: ([hdr], [SECTOR + 1]),
    "data-split-odd": lambda hdr, data: ([hdr], [1, 255, 256, 1]),
    "all-in-three": lambda hdr, data: ([hdr[:8], hdr[8:]], [100, SECTOR - 100 + 1]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@clause(FRAMING)
def test_read_with_any_descriptor_layout(blk: Machine, layout: str) -> None:
    dev, (vq,) = blk.ready("blk", size=32)
    outs, ins = LAYOUTS[layout](blk_header(T_IN, 7), b"")
    c = vq.transact(outs, ins)
    flat = b"".join(c.data)
    assert flat[SECTOR] == S_OK and flat[:8] == b"sect0007", flat[:16]
    assert c.used.length == SECTOR + 1


@clause(FRAMING)
def test_write_with_header_and_data_in_one_descriptor(blk: Machine, disk: str) -> None:
    dev, (vq,) = blk.ready("blk")
    c = vq.transact([blk_header(T_OUT, 9) + b"F" * SECTOR], [1])
    assert c.data[0] == bytes([S_OK])
    with open(disk, "rb") as f:
        f.seek(9 * SECTOR)
        assert f.read(SECTOR) == b"F" * SECTOR
    assert c.used.length == 1, "only the status byte is device-writable"

"""What Linux's virtio drivers negotiated, against what the same devices offer.

The offered bits are read over qtest from a second machine with the same device options (the running
guest's driver owns its devices' feature registers), inside the same namespace so that the tap's offloads
are the same."""

from __future__ import annotations

import re

import pytest

from conformance.drivers.pci import ConfigMechanism1, enumerate_bus
from conformance.drivers.qtest import QtestSession, QtestStartError
from conformance.drivers.virtio import F_VERSION_1, VirtioPciDevice
from conformance.guest_linux.conftest import SLOTS, clause, device_args, in_netns

pytestmark = pytest.mark.hw_kvm

VIRTIO_IDS = {"disk": 2, "rodisk": 2, "net": 1, "rng": 4, "serial": 3, "balloon": 5}


@clause("boot/ready")
def test_guest_boots_with_every_virtio_module(vm, record_property) -> None:  # noqa: ANN001
    """/init loaded every module the builder listed, in order, without an error, and printed its marker."""
    record_property("boot_seconds_to_ready_marker", f"{vm.guest.boot_seconds:.2f}")
    assert " 0 failed" in vm.guest.transcript
    loaded = {line.split()[0] for line in vm.guest.check("cat /proc/modules").splitlines()}
    missing = [m for m in vm.guest.image.modules if m not in loaded]
    assert not missing, f"modules not loaded: {missing}"


def guest_view(vm) -> dict[int, tuple[int, int]]:  # noqa: ANN001
    """PCI slot -> (virtio device id, negotiated features) as Linux reports them in sysfs."""
    out = vm.guest.check(
        "for d in /sys/bus/virtio/devices/*; do echo $(readlink -f $d) $(cat $d/device) $(cat $d/features); done"
    )
    view = {}
    for line in out.splitlines():
        m = re.search(r"/0000:00:([0-9a-f]{2})\.0/virtio\d+ (0x[0-9a-f]+) ([01]+)$", line.strip())
        assert m, f"unexpected sysfs line: {line!r}"
        view[int(m.group(1), 16)] = (int(m.group(2), 16), int(m.group(3)[::-1], 2))
    return view


def offered(vm) -> dict[int, int]:  # noqa: ANN001
    """PCI slot -> device features offered, read over qtest from an identical machine."""
    qt = QtestSession(name=vm.target.name)
    try:
        qt.start(in_netns(vm.target, vm.netns), device_args(vm.workdir, "lgtap1", suffix="q"))
    except QtestStartError as err:
        pytest.skip(f"target cannot run the devices under qtest: {err}")
    with qt:
        funcs = {f.dev: f for f in enumerate_bus(ConfigMechanism1(qt)) if f.fn == 0}
        return {slot: VirtioPciDevice(qt, funcs[slot]).map().device_features() for slot in SLOTS.values()}


@clause("virtio/features-negotiated")
def test_negotiated_features_are_offered_ones(vm) -> None:  # noqa: ANN001
    view = guest_view(vm)
    assert {slot: dev for slot, (dev, _) in view.items()} == {SLOTS[k]: VIRTIO_IDS[k] for k in SLOTS}
    device_offers = offered(vm)
    for name, slot in SLOTS.items():
        negotiated = view[slot][1]
        extra = negotiated & ~device_offers[slot]
        assert not extra, f"{name}: negotiated bits {extra:#x} that the device never offered"
        assert negotiated & (1 << F_VERSION_1), f"{name}: Linux did not negotiate VERSION_1 (modern device)"
        assert negotiated != 0

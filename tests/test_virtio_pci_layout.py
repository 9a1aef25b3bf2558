"""virtio-pci identity, BARs and capability chain in the three modes, byte-compared with QEMU 7.2.

The constants were measured on this machine with Debian's QEMU 7.2 (1:7.2+dfsg-7+deb12u18) under qtest:
``qemu-system-x86_64 -accel tcg -S -qtest unix:SOCK -nodefaults -M pc -device virtio-rng-pci[,disable-...]``,
reading all 256 config bytes of 00:02.0 through 0xCF8/0xCFC and sizing the BARs (conformance/drivers/pci.py).
Interrupt Line reads 0 there (no firmware ran); refvm's bus plays firmware, so byte 3Ch is left out.
"""

from __future__ import annotations

import pytest
from virtio_pci_rig import EchoDevice, EchoRng, Rig, make_mem

from refvm.virtio.pci import VirtioPciFunction

# virtio-rng-pci (transitional), 00:02.0: bytes 00h-AFh (the rest is zero).
QEMU_RNG_TRANSITIONAL = bytes.fromhex(
    "f41a051000001000 0000ff0000000000 0100000000000000 0000000000000000"
    "0c00000000000000 00000000f41a0400 0000000098000000 0000000000010000"
    "0900100104000000 0000000000100000 0940100304000000 0010000000100000"
    "0950100404000000 0020000000100000 0960140204000000 0030000000100000"
    "0400000009701405 0000000000000000 0000000000000000 1184010001000000"
    "0108000000000000 0000000000000000"
)
# disable-legacy=on: 1af4:1044 rev 1, no BAR0, subsystem 1af4:1100; capabilities identical.
QEMU_RNG_MODERN_HEADER = bytes.fromhex(
    "f41a441000001000 0100ff0000000000 0000000000000000 0000000000000000"
    "0c00000000000000 00000000f41a0011 0000000098000000 0000000000010000"
)
# disable-modern=on: BAR0 + BAR1, MSI-X alone at 40h.
QEMU_RNG_LEGACY = bytes.fromhex(
    "f41a051000001000 0000ff0000000000 0100000000000000 0000000000000000"
    "0000000000000000 00000000f41a0400 0000000040000000 0000000000010000"
    "1100010001000000 0108000000000000"
)
# BAR sizes (index: kind, size) per mode.
QEMU_RNG_BARS = {
    "transitional": {0: ("io", 0x20), 1: ("mem32", 0x1000), 4: ("mem64", 0x4000)},
    "modern": {1: ("mem32", 0x1000), 4: ("mem64", 0x4000)},
    "legacy": {0: ("io", 0x20), 1: ("mem32", 0x1000)},
}
DISCOVERY = "devicenormative:Virtio Transport Options / Virtio Over PCI Bus / PCI Device Discovery"
MODES = {"transitional": {}, "modern": {"disable_legacy": True}, "legacy": {"disable_modern": True}}
# Other types, transitional / disable-legacy=on (QEMU 7.2): device IDs, class code, subsystem ID, MSI-X vectors,
# BAR0 size. (blk: -drive if=none + drive=; config lengths come from the device models, not the transport.)
QEMU_TYPES = {
    # virtio id: (transitional id, modern id, class, vectors)
    1: (0x1000, 0x1041, 0x020000, 4),
    2: (0x1001, 0x1042, 0x010000, 2),
    3: (0x1003, 0x1043, 0x078000, 2),
    4: (0x1005, 0x1044, 0x00FF00, 2),
    5: (0x1002, 0x1045, 0x00FF00, 0),
}


def config_bytes(rig: Rig) -> bytes:
    data = bytearray(rig.cfg_read(i, 1) for i in range(256))
    data[0x3C] = 0
    return bytes(data)


def bar_kinds(fn: VirtioPciFunction) -> dict[int, tuple[str, int]]:
    return {i: (b.kind, b.size) for i, b in sorted(fn.bars.items())}


@pytest.mark.clause("virtio-1.2", DISCOVERY)
@pytest.mark.parametrize("mode", list(MODES))
def test_layout_matches_qemu(mode: str) -> None:
    rig = Rig(EchoRng(make_mem(), sizes=(8,)), enable=False, **MODES[mode])
    rig.vdev.config = bytearray()  # virtio-rng has no configuration space
    data = config_bytes(rig)
    if mode == "transitional":
        assert data == QEMU_RNG_TRANSITIONAL.ljust(256, b"\0")
    elif mode == "modern":
        assert data == (QEMU_RNG_MODERN_HEADER + QEMU_RNG_TRANSITIONAL[0x40:]).ljust(256, b"\0")
    else:
        assert data == QEMU_RNG_LEGACY.ljust(256, b"\0")
    assert bar_kinds(rig.fn) == QEMU_RNG_BARS[mode]
    assert rig.fn.bars[4].prefetchable if 4 in rig.fn.bars else True


def test_capability_chain_order() -> None:
    rig = Rig(enable=False)
    assert rig.capabilities() == [(0x98, 0x11), (0x84, 0x09), (0x70, 0x09), (0x60, 0x09), (0x50, 0x09), (0x40, 0x09)]
    # cfg_type of each vendor capability: PCI_CFG 5, NOTIFY 2, DEVICE 4, ISR 3, COMMON 1
    assert [rig.cfg_read(off + 3, 1) for off, cid in rig.capabilities() if cid == 9] == [5, 2, 4, 3, 1]
    assert rig.cfg_read(0x70 + 16, 4) == 4  # notify_off_multiplier
    assert rig.cfg_read(0x06, 2) & 0x10  # capability list bit


@pytest.mark.parametrize("virtio_id", sorted(QEMU_TYPES))
def test_ids_and_vectors_per_type(virtio_id: int) -> None:
    legacy_id, modern_id, class_code, vectors = QEMU_TYPES[virtio_id]
    sizes = (8, 8, 8) if virtio_id == 1 else (8,)

    class Dev(EchoDevice):
        device_id = virtio_id

    for disable_legacy, dev_id, rev, subsys in ((None, legacy_id, 0, virtio_id), (True, modern_id, 1, 0x1100)):
        fn = VirtioPciFunction(Dev(make_mem(), sizes=sizes), disable_legacy=disable_legacy)
        assert (fn.vendor_id, fn.device_id, fn.config.get_u8(8)) == (0x1AF4, dev_id, rev)
        assert fn.class_code == class_code
        assert (fn.config.get_u16(0x2C), fn.config.get_u16(0x2E)) == (0x1AF4, subsys)
        assert fn.interrupt_pin == 1
        assert (fn.msix.table_size if fn.msix else 0) == vectors
        assert (1 in fn.bars) == bool(vectors)
        assert fn.type_name.startswith("virtio-") and fn.type_name.endswith("-pci")


def test_balloon_like_without_msix_keeps_capability_offsets() -> None:
    """QEMU's virtio-balloon-pci has no MSI-X: no BAR1, the list starts at PCI_CFG (84h)."""

    class Balloon(EchoDevice):
        device_id = 5

    fn = VirtioPciFunction(Balloon(make_mem(), sizes=(8, 8, 8)))
    assert fn.msix is None and sorted(fn.bars) == [0, 4]
    assert fn.config.get_u8(0x34) == 0x84
    assert fn.bars[0].size == 0x20  # 20 + 8 config bytes, rounded up


def test_legacy_bar_size_rounds_header_plus_config() -> None:
    # QEMU: header 24 bytes with MSI-X (20 without) + device config, to a power of two (blk: 24+60 -> 0x80)
    dev = EchoRng(make_mem(), sizes=(8,))
    dev.config = bytearray(60)
    assert VirtioPciFunction(dev).bars[0].size == 0x80
    assert VirtioPciFunction(EchoRng(make_mem()), vectors=0).bars[0].size == 0x20


def test_invalid_combinations() -> None:
    with pytest.raises(ValueError, match="neither modern nor legacy"):
        VirtioPciFunction(EchoRng(make_mem()), disable_legacy=True, disable_modern=True)
    with pytest.raises(ValueError, match="no legacy"):
        VirtioPciFunction(EchoDevice(make_mem()), disable_legacy=False)
    fn = VirtioPciFunction(EchoDevice(make_mem()))  # no transitional ID: modern only by default
    assert fn.device_id == (0x1040 + 0xFFFF) & 0xFFFF and fn.config.get_u8(8) == 1
    assert 0 not in fn.bars


def test_query_pci_names_the_function() -> None:
    from refvm.devices.pci import query_pci

    rig = Rig()
    (info,) = [d for d in query_pci(rig.bus)[0]["devices"] if d["slot"] == 2]
    assert info["qdev_id"] == "vdev0"
    assert info["id"] == {"device": 0x1005, "vendor": 0x1AF4, "subsystem": 4, "subsystem-vendor": 0x1AF4}
    assert [r["bar"] for r in info["regions"]] == [0, 1, 4]
    assert rig.fn.name == "virtio-rng-pci" and "virtio-rng-pci" in repr(rig.fn)
    assert rig.fn.notify_address(3) == (4, 0x300C)

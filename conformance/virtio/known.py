"""QEMU 7.2's virtio behaviours that the virtio and block suites do not expect, one entry per behaviour.

Each entry quotes the sentence the tests' expectation rests on (conformance/verdicts.py). Tests that observe
the same behaviour (e.g. writeback with CONFIG_WCE but no FLUSH, seen in every caching mode) share the entry,
so the report counts it once. Checked against VIRTIO 1.2 and QEMU 7.2's source.
"""

from __future__ import annotations

from conformance.verdicts import Known

BEFORE_DRIVER_OK = Known(
    target="qemu", kind="must", behaviour="qemu-virtio-consumes-before-driver-ok", component="virtio (all devices)",
    sentence="Device Status Field: The device MUST NOT consume buffers or send any used buffer notifications to the "
             "driver before DRIVER_OK.",
    reason="QEMU 7.2 processes a notified queue before DRIVER_OK (virtio_queue_notify does not look at the status)",
)  # fmt: skip

USED_LEN_GET_ID = Known(
    target="qemu", kind="must", behaviour="qemu-blk-get-id-used-len", component="virtio-blk",
    sentence="The Virtqueue Used Ring: The device MUST write at least len bytes to descriptor, beginning at the "
             "first device-writable buffer, prior to updating the used idx.",
    reason="QEMU 7.2 virtio-blk reports the whole writable length (21) as used len for GET_ID but writes only "
           "strlen(serial)+1 id bytes and the status byte",
)  # fmt: skip

DIRECT_THEN_INDIRECT = Known(
    target="qemu", kind="must", behaviour="qemu-split-indirect-only-at-head", component="virtio (split ring)",
    sentence="Indirect Descriptors: The device MUST handle the case of zero or more normal chained descriptors "
             "followed by a single descriptor with flags&VIRTQ_DESC_F_INDIRECT.",
    reason="QEMU 7.2 follows VIRTQ_DESC_F_INDIRECT only on the head of a split chain: a later indirect descriptor is "
           "mapped as a data buffer, and virtio-blk then marks the device broken (DEVICE_NEEDS_RESET) and never "
           "completes the request",
)  # fmt: skip

BLK_CONFIG_UNUSED1 = Known(
    target="qemu", kind="must", behaviour="qemu-blk-config-ends-before-unused1", component="virtio-blk",
    sentence="Block Device / Device Initialization: The device MUST initialize padding bytes unused0 and unused1 to "
             "0.",
    reason="QEMU 7.2 sizes the virtio-blk configuration to end at write_zeroes_may_unmap (57 bytes), so the unused1 "
           "padding reads 0xff",
)  # fmt: skip

BLK_WRITEBACK_WITHOUT_FLUSH = Known(
    target="qemu", kind="must", behaviour="qemu-blk-writeback-without-flush", component="virtio-blk",
    sentence="Block Device / Device Initialization: If VIRTIO_BLK_F_CONFIG_WCE is negotiated but VIRTIO_BLK_F_FLUSH "
             "is not, the device MUST initialize writeback to 0.",
    reason="QEMU 7.2 keeps writeback at the drive's cache mode (1 for cache=writeback, none and unsafe) when "
           "CONFIG_WCE is negotiated without FLUSH",
)  # fmt: skip

NET_TX_HDR_LEN = Known(
    target="qemu", kind="must", behaviour="qemu-net-tap-relies-on-hdr-len", component="virtio-net (tap backend)",
    sentence="Network Device / Packet Transmission: The device MUST NOT rely on hdr_len to be correct.",
    reason="QEMU 7.2 with a tap backend hands the guest's header to the host kernel, which drops a frame whose "
           "hdr_len exceeds its length",
)  # fmt: skip

NET_RX_NUM_BUFFERS = Known(
    target="qemu", kind="must", behaviour="qemu-net-num-buffers-unset", component="virtio-net",
    sentence="Network Device / Processing of Incoming Packets: If VIRTIO_NET_F_MRG_RXBUF has not been negotiated, "
             "the device MUST set num_buffers to 1.",
    reason="QEMU 7.2 writes only the 10-byte legacy header when MRG_RXBUF is not negotiated and leaves num_buffers "
           "of the 12-byte VERSION_1 header unwritten",
)  # fmt: skip

NET_RX_OVER_MTU = Known(
    target="qemu", kind="must", behaviour="qemu-net-passes-rx-over-mtu", component="virtio-net",
    sentence="Network Device / Device configuration layout: The device MUST NOT pass received packets that exceed "
             "mtu (plus low level ethernet header length) size with gso_type NONE or ECN after VIRTIO_NET_F_MTU has "
             "been successfully negotiated.",
    reason="QEMU 7.2 passes received frames longer than the negotiated mtu to the driver",
)  # fmt: skip

# ---- not deviations: what the spec leaves open, or asks only with SHOULD --------------------------------

FEATURES_OK_UNOFFERED_BIT = Known(
    target="qemu", kind="implementation-defined", behaviour="qemu-features-ok-with-unoffered-bit",
    sentence="Virtio Over PCI Bus / Common configuration structure layout: The device MAY present invalid bits "
             "written by the driver. (Writing them breaks the driver's MUST NOT of 'Feature Bits'; what the device "
             "then does is left to it. refvm refuses FEATURES_OK.)",
    reason="QEMU 7.2 accepts FEATURES_OK for a feature set with a bit the device never offered and presents that bit "
           "in driver_feature",
)  # fmt: skip

BUFFER_OUTSIDE_RAM = Known(
    target="qemu", kind="should", behaviour="qemu-buffer-outside-ram-completes-ok",
    sentence="Device Status Field: The device SHOULD set DEVICE_NEEDS_RESET when it enters an error state that a "
             "reset is needed. (No MUST requires a non-OK status for a buffer with no memory behind it.)",
    reason="QEMU 7.2 maps a buffer outside guest RAM through a bounce buffer, drops the data and completes the "
           "request with VIRTIO_BLK_S_OK, without DEVICE_NEEDS_RESET",
)  # fmt: skip

WRITETHROUGH_FLUSH_WITHOUT_CONFIG_WCE = Known(
    target="qemu", kind="implementation-defined", behaviour="qemu-blk-writethrough-becomes-writeback-with-flush",
    sentence="Block Device / Device Initialization (drivernormative): If VIRTIO_BLK_F_CONFIG_WCE was not negotiated "
             "but VIRTIO_BLK_F_FLUSH was, the driver SHOULD assume presence of a writeback cache. (The device side "
             "is left open: a device may then run a writeback cache.)",
    reason="QEMU 7.2 virtio-blk turns the drive's write cache on when the driver negotiates FLUSH without "
           "CONFIG_WCE, so cache=writethrough writes complete without a sync (refvm keeps writethrough)",
)  # fmt: skip

"""virtio-blk: the block device (VIRTIO 1.2 section 5.2), behaving as QEMU 7.2's ``virtio-blk-pci``.

Properties (``-device virtio-blk-pci,...``; plus the transport's ``addr id bus disable-legacy
disable-modern vectors`` and the core's ``indirect_desc event_idx packed``):

==========================  ========  ============================================================
property                    default   meaning
==========================  ========  ============================================================
``drive``                   required  id of a ``-drive``/``-blockdev`` (a :class:`~refvm.block.BlockBackend`)
``serial``                  ""        GET_ID string (at most 20 bytes)
``discard``                 on        offer VIRTIO_BLK_F_DISCARD
``write-zeroes``            on        offer VIRTIO_BLK_F_WRITE_ZEROES
``max-discard-sectors``     4194303   ``max_discard_sectors`` (QEMU: BDRV_REQUEST_MAX_SECTORS)
``max-write-zeroes-sectors`` 4194303  ``max_write_zeroes_sectors``
``num-queues``              1         request queues (> 1 offers VIRTIO_BLK_F_MQ)
``queue-size``              256       maximum size of every request queue
``seg-max-adjust``          on        ``seg_max`` = queue-size - 2 (off: 126)
``config-wce``              on        offer VIRTIO_BLK_F_CONFIG_WCE
``logical_block_size``      512       ``blk_size`` (512..32768, power of 2)
``physical_block_size``     512       ``physical_block_exp`` = log2(physical / logical)
``min_io_size``             0         bytes; ``min_io_size`` = value / blk_size
``opt_io_size``             0         bytes; ``opt_io_size`` = value / blk_size
``cyls`` ``heads`` ``secs`` guessed   geometry (QEMU's guess for a disk without a partition table)
==========================  ========  ============================================================

Offered features (measured on QEMU 7.2 with ``disable-legacy=on``: 0x10130006e54 with RING_RESET and
VERSION_1): SEG_MAX, GEOMETRY, BLK_SIZE, FLUSH, TOPOLOGY, CONFIG_WCE, DISCARD, WRITE_ZEROES; RO for a
read-only drive, MQ only with num-queues > 1. The configuration space is 60 bytes (QEMU: 57, up to
``write_zeroes_may_unmap``); reads past it are the transport's business.

Request handling follows 5.2.6 and QEMU's dispatch: the request type is looked at with the OUT and
BARRIER bits masked (so FLUSH_OUT is FLUSH, and a set BARRIER bit is ignored). A chain without a
16-byte readable header or without a writable status byte is a driver error: DEVICE_NEEDS_RESET
(QEMU's virtio_error). The used length is the number of bytes the device wrote, status byte
included (2.7.8.1); QEMU 7.2 instead reports the whole writable length (the 5.2.6.3 note), which is
the same number for a good read.

Cache policy and throttling come from the backend when it is a :class:`refvm.block.drive.Drive`:
the initial ``writeback`` byte is the drive's cache mode (WCE), a guest write of the byte (CONFIG_WCE)
switches the drive between writeback and write-through at run time (QEMU's
``blk_set_enable_write_cache``), and a reset restores the original value, as QEMU's reset does.
In write-through the device calls ``flush()`` after each write and before completing it; the
drive's cache policy decides whether that reaches the disk (``unsafe``: never).

Split-ring IN/OUT requests on a raw image are served by a compiled path when it applies
(:mod:`refvm.virtio.devices.blk_fast`, ``x-fastpath``); every request it does not take, and every
request without it, is handled here, which stays the reference.

IN/OUT requests go through the drive's :class:`~refvm.block.throttle_group.ThrottleGroupMember`
(``submit(is_write, nbytes, start)``). Within the limits, ``start`` runs inside ``submit`` and the
request completes synchronously, as without throttling. Over the limits the chain is kept and
``start`` runs later on the clock's timer thread (the qtest thread for a virtual clock), which does
the I/O and completes the chain through :meth:`VirtioDevice.complete`; the vCPU/qtest thread never
waits. The throttle queue is FIFO per direction, so completions keep their order per direction.
FLUSH, GET_ID, DISCARD and WRITE_ZEROES are not throttled (QEMU throttles only reads and writes).
A device reset first performs the requests still waiting for the limits (QEMU drains with the
limits lifted), without completing them into the rings that the reset discards.

Migration (:class:`BlkState`): requests in flight are **drained, not carried**. Requests are performed
synchronously inside the notification, so the only ones in flight at a save are those waiting for the
throttle; ``quiesce`` (:mod:`refvm.virtio.devices.blk_throttle`) performs them and completes them into
their rings before the State is taken (and before RAM is copied, so their data and used elements travel
with RAM), as QEMU drains block I/O when the VM stops. A request the driver made available but has not
notified (or that the device has not popped) is not in flight: it stays in the available ring,
``last_avail_idx`` says so, and the destination pops it at the next notification. Either way a request
completes exactly once, on one side.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from refvm.block import BlockBackend
from refvm.block.vectored import read_into, write_from
from refvm.memory import GuestMemory
from refvm.migration.state import BOOL, DeviceState, sfield
from refvm.virtio.device import VirtioDevice
from refvm.virtio.devices.blk_fast import DONE, BlkFastPath, CompiledRequests
from refvm.virtio.devices.blk_throttle import DEFERRED, ThrottledRequests
from refvm.virtio.devices.props import Props
from refvm.virtio.queue import Chain, Virtqueue

__all__ = ["VirtioBlk"]

log = logging.getLogger(__name__)

# 5.2.3 feature bits
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

FEATURE_NAMES = {
    VIRTIO_BLK_F_SIZE_MAX: "SIZE_MAX",
    VIRTIO_BLK_F_SEG_MAX: "SEG_MAX",
    VIRTIO_BLK_F_GEOMETRY: "GEOMETRY",
    VIRTIO_BLK_F_RO: "RO",
    VIRTIO_BLK_F_BLK_SIZE: "BLK_SIZE",
    VIRTIO_BLK_F_FLUSH: "FLUSH",
    VIRTIO_BLK_F_TOPOLOGY: "TOPOLOGY",
    VIRTIO_BLK_F_CONFIG_WCE: "CONFIG_WCE",
    VIRTIO_BLK_F_MQ: "MQ",
    VIRTIO_BLK_F_DISCARD: "DISCARD",
    VIRTIO_BLK_F_WRITE_ZEROES: "WRITE_ZEROES",
}

# 5.2.6 request types and status
T_IN = 0
T_OUT = 1
T_SCSI_CMD = 2
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13
T_BARRIER = 0x80000000
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2
WRITE_ZEROES_FLAG_UNMAP = 1

SECTOR = 512
ID_BYTES = 20
#: QEMU's BDRV_REQUEST_MAX_SECTORS: INT_MAX >> 9.
MAX_REQUEST_SECTORS = 0x7FFFFFFF >> 9
#: The most data one IN/OUT request may move here (QEMU bounds it by seg_max * page: 254 * 4 KiB is
#: plenty for Linux; a larger request is refused with IOERR instead of allocating guest-chosen sizes).
MAX_RW_BYTES = 64 << 20
CONFIG_SIZE = 60  # through unused1[3], which 5.2.5 says the device MUST initialize to 0 (QEMU 7.2 stops at 57)

_HDR = struct.Struct("<IIQ")  # type, reserved, sector
_SEG = struct.Struct("<QII")  # sector, num_sectors, flags
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB")


@dataclass
class BlkState(DeviceState):
    """virtio-blk's own state: the cache mode the driver chose (the config's writeback byte follows it) and
    whether a driver without CONFIG_WCE keeps a write-through drive syncing; no requests (drained)."""

    VMSD_NAME = "virtio-blk-device"

    writeback: bool = sfield(BOOL, True)
    host_writethrough: bool = sfield(BOOL, False)


def _set_status(chain: Chain, status: int) -> None:
    """The status byte: the last byte of the last writable descriptor (checked non-empty at pop)."""
    last = chain.writable[-1]
    last[len(last) - 1] = status


def guess_geometry(sectors: int) -> tuple[int, int, int]:
    """QEMU's CHS guess for a disk without a partition table: 16 heads, 63 sectors, 2..16383 cylinders."""
    cyls = max(2, min(16383, sectors // (16 * 63)))
    return cyls, 16, 63


class VirtioBlk(CompiledRequests, ThrottledRequests, VirtioDevice):
    """A virtio block device on a :class:`~refvm.block.BlockBackend`."""

    device_id = 2
    VMSD_NAME = "virtio-blk"
    DEVICE_STATE = BlkState
    feature_names = FEATURE_NAMES

    def __init__(
        self,
        mem: GuestMemory,
        backend: BlockBackend,
        *,
        serial: str = "",
        writeback: bool = True,
        discard: bool = True,
        write_zeroes: bool = True,
        config_wce: bool = True,
        num_queues: int = 1,
        queue_size: int = 256,
        seg_max_adjust: bool = True,
        max_discard_sectors: int = MAX_REQUEST_SECTORS,
        max_write_zeroes_sectors: int = MAX_REQUEST_SECTORS,
        logical_block_size: int = SECTOR,
        physical_block_size: int = SECTOR,
        min_io_size: int = 0,
        opt_io_size: int = 0,
        geometry: tuple[int, int, int] | None = None,
        fastpath: bool = True,
        **virtio: bool,
    ) -> None:
        self.backend = backend
        self.readonly = bool(backend.readonly)
        self.serial = serial.encode()[:ID_BYTES]
        self.writeback = writeback
        self.original_writeback = writeback
        #: The drive's write-through stays in force although the byte says writeback (see driver_ok).
        self._host_writethrough = False
        self._init_throttle(backend)
        #: The backend's vectored I/O into/out of guest RAM views (None: pread/pwrite plus one copy).
        self._preadv: Callable[[int, list[memoryview]], None] | None = getattr(backend, "preadv_into", None)
        self._pwritev: Callable[[int, list[memoryview]], None] | None = getattr(backend, "pwritev_from", None)
        self.capacity = backend.length() // SECTOR
        self.max_discard_sectors = max_discard_sectors
        self.max_write_zeroes_sectors = max_write_zeroes_sectors
        self.blk_size = logical_block_size
        #: The compiled path (refvm/virtio/devices/blk_fast.py), built now if need be (before the guest runs, not
        #: in its first request); None if it cannot apply or is off (``x-fastpath=off``, REFVM_BLK_FASTPATH=0).
        self._fast = BlkFastPath.create(mem, backend, logical_block_size, self.capacity) if fastpath else None
        self.queue_max_sizes = (queue_size,) * num_queues
        feats = 0
        for b in (VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH,
                  VIRTIO_BLK_F_TOPOLOGY):
            feats |= 1 << b
        if config_wce:
            feats |= 1 << VIRTIO_BLK_F_CONFIG_WCE
        if discard:
            feats |= 1 << VIRTIO_BLK_F_DISCARD
        if write_zeroes:
            feats |= 1 << VIRTIO_BLK_F_WRITE_ZEROES
        if num_queues > 1:
            feats |= 1 << VIRTIO_BLK_F_MQ
        if self.readonly:  # withheld by device_features() under the blk-no-ro-feature deviation
            feats |= 1 << VIRTIO_BLK_F_RO
        self.features = feats
        cyls, heads, secs = geometry or guess_geometry(self.capacity)
        phys_exp = max(0, (physical_block_size // logical_block_size).bit_length() - 1)
        self._stats = {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0, "flush_operations": 0,
                      "failed_rd_operations": 0, "failed_wr_operations": 0}
        super().__init__(mem, config_size=CONFIG_SIZE, **virtio)
        # 5.2.4: struct virtio_blk_config, little endian, QEMU's values.
        packed = _CONFIG.pack(
            self.capacity,
            0,  # size_max (SIZE_MAX not offered)
            queue_size - 2 if seg_max_adjust else 126,  # seg_max
            cyls & 0xFFFF, heads & 0xFF, secs & 0xFF,
            logical_block_size,
            phys_exp, 0,  # physical_block_exp, alignment_offset
            min_io_size // logical_block_size, opt_io_size // logical_block_size,
            int(writeback), 0,  # writeback, unused0
            num_queues,
            max_discard_sectors if discard else 0,
            1 if discard else 0,  # max_discard_seg: QEMU handles one segment per request
            (logical_block_size // SECTOR) if discard else 0,  # discard_sector_alignment
            max_write_zeroes_sectors if write_zeroes else 0,
            1 if write_zeroes else 0,  # max_write_zeroes_seg
            1 if write_zeroes else 0,  # write_zeroes_may_unmap
        )
        self.config[: len(packed)] = packed[:CONFIG_SIZE]

    @property
    def device_features(self) -> int:
        """The offer; the blk-no-ro-feature deviation (the machine's, known once plugged) withholds RO."""
        offered = super().device_features
        return offered & ~(1 << VIRTIO_BLK_F_RO) if self.deviations.active("blk-no-ro-feature") else offered

    # ------------------------------------------------------------------ factory
    PROPERTIES = (
        "drive", "serial", "discard", "write-zeroes", "max-discard-sectors", "max-write-zeroes-sectors",
        "num-queues", "queue-size", "seg-max-adjust", "config-wce", "logical_block_size", "physical_block_size",
        "min_io_size", "opt_io_size", "cyls", "heads", "secs", "x-fastpath",
    )

    @classmethod
    def create(
        cls,
        mem: GuestMemory,
        props: Mapping[str, str],
        *,
        chardevs: Mapping[str, object] | None = None,
        drives: Mapping[str, object] | None = None,
        netdevs: Mapping[str, object] | None = None,
        objects: Mapping[str, object] | None = None,
        type_name: str = "virtio-blk-pci",
        writeback: bool | None = None,
    ) -> VirtioBlk:
        p = Props(type_name, props, cls.PROPERTIES)
        drive_id = p.text("drive")
        if not drive_id:
            raise ValueError("drive property not set")
        backend = (drives or {}).get(drive_id)
        if backend is None:
            raise ValueError(f"Property '{type_name}.drive' can't find value '{drive_id}'")
        if not isinstance(backend, BlockBackend):
            raise ValueError(f"Property '{type_name}.drive': '{drive_id}' is not a block backend")
        serial = p.text("serial", "") or ""
        if len(serial.encode()) > ID_BYTES:
            log.info("%s: serial %r truncated to %d bytes for GET_ID", type_name, serial, ID_BYTES)
        queue_size = p.number("queue-size", 256, 3, 1024)
        if queue_size & (queue_size - 1):
            raise ValueError(f"invalid queue-size property ({queue_size}), must be a power of 2")
        lbs = p.number("logical_block_size", SECTOR, SECTOR, 32768)
        pbs = p.number("physical_block_size", SECTOR, SECTOR, 32768)
        for name, v in (("logical_block_size", lbs), ("physical_block_size", pbs)):
            if v & (v - 1):
                raise ValueError(f"Property {type_name}.{name} doesn't take value {v}, it's not a power of 2")
        if pbs < lbs:
            raise ValueError("physical_block_size must be at least logical_block_size")
        max_d = p.number("max-discard-sectors", MAX_REQUEST_SECTORS, 0, (1 << 32) - 1)
        max_wz = p.number("max-write-zeroes-sectors", MAX_REQUEST_SECTORS, 0, (1 << 32) - 1)
        discard = p.flag("discard", True)
        wz = p.flag("write-zeroes", True)
        if discard and not 1 <= max_d <= MAX_REQUEST_SECTORS:
            raise ValueError(f"invalid max-discard-sectors property ({max_d}), must be between 1 and "
                             f"{MAX_REQUEST_SECTORS}")
        if wz and not 1 <= max_wz <= MAX_REQUEST_SECTORS:
            raise ValueError(f"invalid max-write-zeroes-sectors property ({max_wz}), must be between 1 and "
                             f"{MAX_REQUEST_SECTORS}")
        geometry = None
        if any(k in props for k in ("cyls", "heads", "secs")):
            geometry = (p.number("cyls", 0, 1, 65535), p.number("heads", 0, 1, 255), p.number("secs", 0, 1, 255))
        if writeback is None:  # a Drive knows its cache mode; a bare file is writeback (QEMU's default)
            writeback = bool(getattr(backend, "writeback", True))
        return cls(
            mem,
            backend,
            serial=serial,
            writeback=writeback,
            discard=discard,
            write_zeroes=wz,
            config_wce=p.flag("config-wce", True),
            num_queues=p.number("num-queues", 1, 1, 1024),
            queue_size=queue_size,
            seg_max_adjust=p.flag("seg-max-adjust", True),
            max_discard_sectors=max_d,
            max_write_zeroes_sectors=max_wz,
            logical_block_size=lbs,
            physical_block_size=pbs,
            min_io_size=p.number("min_io_size", 0, 0, 0xFFFF * lbs),
            opt_io_size=p.number("opt_io_size", 0, 0, 0xFFFFFFFF),
            geometry=geometry,
            fastpath=p.flag("x-fastpath", True),
            **p.virtio_flags(),
        )

    # ------------------------------------------------------------------ configuration (5.2.4)
    def capacity_changed(self) -> int:
        """The backend was resized (QMP ``block_resize``): refresh ``capacity`` from its length.

        VIRTIO 1.2 5.2.4 (``capacity`` in 512-byte sectors) and 5.2.6.2/2.5.1: the device changed its
        configuration, so ``config_generation`` changes and, once DRIVER_OK is set, a configuration
        change notification goes out (QEMU's virtio_blk_resize -> virtio_notify_config). Returns the
        new capacity in sectors.
        """
        with self.lock:
            self.capacity = self.backend.length() // SECTOR
            self.config[0:8] = self.capacity.to_bytes(8, "little")
            if self._fast is not None:
                self._fast.set_capacity(self.capacity)
            self.config_changed()
            return self.capacity

    def _set_writeback(self, on: bool) -> None:
        self.writeback = on
        self.config[32] = int(on)
        set_cache = getattr(self.backend, "set_write_cache", None)
        if set_cache is not None:  # the drive's live WCE: query-block reports it
            set_cache(on)

    def write_config(self, offset: int, data: bytes) -> None:
        # 5.2.6.2: with CONFIG_WCE negotiated the driver may write ``writeback`` (offset 32).
        if offset <= 32 < offset + len(data) and self.negotiated(VIRTIO_BLK_F_CONFIG_WCE):
            self._set_writeback(data[32 - offset] != 0)
            return
        super().write_config(offset, data)

    def validate_features(self, features: int) -> str | None:
        """At FEATURES_OK: 5.2.5 says writeback MUST start at 0 when CONFIG_WCE is negotiated without FLUSH."""
        reason = super().validate_features(features)
        if reason is None and features >> VIRTIO_BLK_F_CONFIG_WCE & 1 and not features >> VIRTIO_BLK_F_FLUSH & 1:
            self._set_writeback(False)
        return reason

    def driver_ok(self) -> None:
        # 5.2.5.1 / QEMU: a driver without CONFIG_WCE is told (writeback byte) to assume a writeback cache
        # iff it negotiated FLUSH (so it knows to flush); otherwise every write is made stable before
        # completion. Unlike QEMU 7.2, a write-through drive (cache=writethrough/directsync) keeps syncing
        # each write even then: the driver cannot change the mode without CONFIG_WCE, and the user's -drive
        # promise ("completion only after the write is flushed", qemu-options) wins. The conformance
        # suite expects both (cache_modes: byte 1 here; test_sync_order: a known QEMU deviation).
        if not self.negotiated(VIRTIO_BLK_F_CONFIG_WCE):
            self._set_writeback(self.negotiated(VIRTIO_BLK_F_FLUSH))
            self._host_writethrough = not self.original_writeback

    def reset_device(self) -> None:
        """QEMU's virtio-blk reset: drain throttled requests, then restore the drive's original WCE."""
        self._drain_throttled()
        self._host_writethrough = False
        if self.writeback != self.original_writeback or self.config[32] != int(self.original_writeback):
            self._set_writeback(self.original_writeback)
            self.config_changed()

    # ------------------------------------------------------------------ requests (5.2.6)
    def handle_queue(self, queue: Virtqueue) -> None:
        budget = queue.size
        fast = self._fast_for(queue)
        if fast is not None and queue._desc is None:
            queue._activate()  # what pop() does first: map and check the areas (a VirtqueueError fails the device)
        while budget > 0:
            if fast is not None:
                r = fast.serve(queue, self._fast_flags(), budget)  # type: ignore[arg-type]
                budget -= r & 0xFFFF
                if r & DONE:
                    return
            # the Python model: every request the compiled path did not take, and all of them without it
            chain = queue.pop()
            if chain is None:
                return
            budget -= 1
            written = self._request(chain, queue)
            if written is None:
                return  # driver error: the device failed (NEEDS_RESET)
            if written == DEFERRED:
                continue  # waits for the throttle; completed later through complete()
            # published once per batch, before the interrupt decision (VirtioDevice.notify_used)
            queue.add_used(chain, self._used_len(written))

    def _used_len(self, written: int) -> int:
        return 0 if self.deviations.active("used-len-zero") else written  # off by default: refvm/deviations.py

    def save_device(self) -> BlkState:
        return BlkState(writeback=self.writeback, host_writethrough=self._host_writethrough)

    def load_device(self, st: object) -> None:
        assert isinstance(st, BlkState)
        self._host_writethrough = st.host_writethrough
        self._set_writeback(st.writeback)

    def _request(self, chain: Chain, queue: Virtqueue | None = None) -> int | None:
        """Process one request; returns the used length, None after fail(), or DEFERRED (throttled)."""
        if chain.readable_len < _HDR.size:
            self.fail("5.2.6: virtio-blk request header (16 bytes) too short or missing")
            return None
        if not chain.writable or len(chain.writable[-1]) < 1:
            self.fail("5.2.6: virtio-blk request has no device-writable status byte")
            return None
        first = chain.readable[0]
        if len(first) >= _HDR.size:  # the usual layout: the header alone in the first descriptor
            rtype, _reserved, sector = _HDR.unpack_from(first)
        else:
            rtype, _reserved, sector = _HDR.unpack(chain.read(0, _HDR.size))
        data_in = chain.writable_len - 1  # device-writable data bytes before the status byte
        data_out = chain.readable_len - _HDR.size
        kind = rtype & ~(T_OUT | T_BARRIER)
        written = 0
        if kind == T_IN:
            nbytes = data_out if rtype & T_OUT else data_in
            valid = self._range_ok(sector, nbytes) and nbytes <= MAX_RW_BYTES
            # QEMU fails a bad range before the throttle; only real I/O waits for the limits. A drive in no
            # throttle group costs nothing here: no member call, no closure, no lock.
            throttle = self.throttle
            if throttle is not None and throttle.group is not None and queue is not None and valid:
                def io() -> int:
                    return self._do_rw(chain, rtype, sector, data_in, data_out)

                return self._throttle_rw(queue, chain, bool(rtype & T_OUT), nbytes, io)
            return self._do_rw(chain, rtype, sector, data_in, data_out, valid)
        elif kind == T_FLUSH:
            status = self._flush()
        elif kind == T_GET_ID:
            ident = self.serial.ljust(ID_BYTES, b"\0")[: min(ID_BYTES, data_in)]
            written = chain.write_into(ident)
            status = S_OK
        elif kind in (T_DISCARD & ~T_OUT, T_WRITE_ZEROES & ~T_OUT):
            st = self._discard_write_zeroes(chain, (rtype & ~T_BARRIER) == T_WRITE_ZEROES, data_out)
            if st is None:
                return None
            status = st
        else:  # SCSI commands (2, 3) and anything unknown
            status = S_UNSUPP
        _set_status(chain, status)
        return written + 1

    def _do_rw(self, chain: Chain, rtype: int, sector: int, data_in: int, data_out: int, valid: bool = True) -> int:
        """An IN or OUT request: the I/O, the status byte; returns the used length. ``valid``: the range and
        size were checked (False: IOERR without I/O)."""
        written = 0
        if rtype & T_OUT:
            status = self._write(chain, sector, data_out, valid)
        else:
            status, written = self._read(chain, sector, data_in, valid)
        _set_status(chain, status)
        return written + 1

    def _range_ok(self, sector: int, nbytes: int) -> bool:
        """QEMU's virtio_blk_sect_range_ok: aligned to blk_size, inside capacity."""
        if nbytes % self.blk_size or sector & ((self.blk_size // SECTOR) - 1):
            return False
        return sector <= self.capacity and nbytes // SECTOR <= self.capacity - sector

    def _read(self, chain: Chain, sector: int, nbytes: int, valid: bool) -> tuple[int, int]:
        if not valid:
            self._stats["failed_rd_operations"] += 1
            return S_IOERR, 0
        bufs = chain.writable_views(0, nbytes)  # straight into guest RAM: no bytes object, no copy
        try:
            if self._preadv is not None:
                self._preadv(sector * SECTOR, bufs)
            else:
                read_into(self.backend, sector * SECTOR, bufs)
        except OSError as exc:
            log.warning("virtio-blk: read at sector %d failed: %s", sector, exc)
            self._stats["failed_rd_operations"] += 1
            return S_IOERR, 0
        stats = self._stats
        stats["rd_bytes"] += nbytes
        stats["rd_operations"] += 1
        return S_OK, nbytes

    def _write(self, chain: Chain, sector: int, nbytes: int, valid: bool) -> int:
        # 5.2.6.2: a write to a read-only device is IOERR and writes nothing.
        if self.readonly or not valid:
            self._stats["failed_wr_operations"] += 1
            return S_IOERR
        try:
            bufs = chain.readable_views(_HDR.size, nbytes)  # straight out of guest RAM
            if self._pwritev is not None:
                self._pwritev(sector * SECTOR, bufs)
            elif bufs:
                write_from(self.backend, sector * SECTOR, bufs)
            if not self.writeback or self._host_writethrough:  # stable before completion (5.2.6.2 case 2)
                self.backend.flush()
        except OSError as exc:
            log.warning("virtio-blk: write at sector %d failed: %s", sector, exc)
            self._stats["failed_wr_operations"] += 1
            return S_IOERR
        self._stats["wr_bytes"] += nbytes
        self._stats["wr_operations"] += 1
        return S_OK

    def _flush(self) -> int:
        self._stats["flush_operations"] += 1
        if self.readonly:
            return S_OK
        try:
            self.backend.flush()
        except OSError as exc:
            log.warning("virtio-blk: flush failed: %s", exc)
            return S_IOERR
        return S_OK

    def _discard_write_zeroes(self, chain: Chain, write_zeroes: bool, out_len: int) -> int | None:
        bit = VIRTIO_BLK_F_WRITE_ZEROES if write_zeroes else VIRTIO_BLK_F_DISCARD
        if not self.features & (1 << bit):
            return S_UNSUPP
        if out_len > _SEG.size:  # more than max_*_seg (1) segments
            return S_UNSUPP
        if out_len < _SEG.size:
            self.fail("5.2.6: virtio-blk discard/write_zeroes segment too short")
            return None
        sector, num, flags = _SEG.unpack(chain.read(_HDR.size, _SEG.size))
        allowed = WRITE_ZEROES_FLAG_UNMAP if write_zeroes else 0
        if flags & ~allowed:  # 5.2.6.2: unknown flags, or unmap on discard
            return S_UNSUPP
        limit = self.max_write_zeroes_sectors if write_zeroes else self.max_discard_sectors
        if num > limit or not self._range_ok(sector, num * SECTOR) or self.readonly:
            return S_IOERR
        try:
            if write_zeroes:
                self.backend.write_zeroes(sector * SECTOR, num * SECTOR, may_unmap=bool(flags & 1))
            else:
                self.backend.discard(sector * SECTOR, num * SECTOR)
        except OSError as exc:
            log.warning("virtio-blk: %s failed: %s", "write zeroes" if write_zeroes else "discard", exc)
            return S_IOERR
        return S_OK

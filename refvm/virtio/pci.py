"""Virtio over PCI (VIRTIO 1.2 §4.1): a :class:`VirtioDevice` presented as a PCI function, laid out exactly
as QEMU 7.2's ``virtio-*-pci`` devices are on the ``pc`` machine.

Identity (§4.1.2). Vendor 1AF4h. A transitional device (QEMU's default on conventional PCI: the
``disable-legacy=auto`` property resolves to off) keeps the legacy device ID 1000h-103Fh of its type, revision
0 and subsystem 1AF4h:<virtio device ID>; a modern-only device (``disable-legacy=on``) has device ID 1040h +
virtio device ID, revision 1 and QEMU's default subsystem 1AF4h:1100h. Interrupt pin INTA.

BARs. BAR0: legacy I/O registers (transitional only, §4.1.4.8, :mod:`refvm.virtio.pci_legacy`); BAR1: 4 KiB
MSI-X BAR, table at 0, PBA at 800h (when the function has MSI-X vectors); BAR4: 16 KiB 64-bit prefetchable
memory holding the modern structures (:mod:`refvm.virtio.pci_common`). ``disable-modern=on`` drops BAR4.

Capabilities (§4.1.4), added in QEMU's order so each lands where QEMU's does (the newest heads the list):
COMMON@40h, ISR@50h, DEVICE@60h, NOTIFY@70h (multiplier 4), PCI_CFG@84h (§4.1.4.9), MSI-X@98h; so the list
runs 34h -> 98h -> 84h -> 70h -> 60h -> 50h -> 40h. Without the modern interface MSI-X sits at 40h alone.

Interrupts (§4.1.4.5, §4.1.5.1.2). A used buffer notification goes to the queue's MSI-X vector while MSI-X
is enabled (none if the vector is NO_VECTOR); otherwise the ISR bit 0 is set and INTx follows it. A
configuration change notification uses ``config_msix_vector`` the same way; like QEMU it sets ISR to 3
(bits 0 and 1), so INTx rises for it too. Reading the ISR clears it and lowers INTx. A vector the function
cannot map reads back as NO_VECTOR (§4.1.4.3.1 / 4.1.5.1.2).

Locking: the virtio device's lock is always taken before the PCI function's (interrupts are raised with
the device lock held, so configuration accesses take it first too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from refvm.deviations import NO_DEVIATIONS, Deviations
from refvm.devices.pci.config import CMD_MASTER, COMMAND, ranges_overlap
from refvm.devices.pci.device import QEMU_SUBSYSTEM_ID, BarSpec, PciDevice
from refvm.devices.pci.state import load_error
from refvm.migration.state import DeviceState
from refvm.virtio import features as F
from refvm.virtio import status as S
from refvm.virtio.device import ISR_QUEUE, VirtioDevice
from refvm.virtio.pci_common import (
    COMMON_OFFSET,
    DEVICE_OFFSET,
    ISR_OFFSET,
    MODERN_BAR_SIZE,
    NOTIFY_OFF_MULTIPLIER,
    NOTIFY_OFFSET,
    QUEUE_MAX,
    REGION_SIZE,
    ModernBar,
    QueueRegs,
)
from refvm.virtio.pci_legacy import LegacyBar, legacy_bar_size
from refvm.virtio.queue import NO_VECTOR
from refvm.virtio.state import QueueRegsState, VirtioPciState, section_state

__all__ = [
    "VirtioPciFunction", "VirtioPciType", "PCI_TYPES", "VIRTIO_PCI_VENDOR_ID", "MODERN_DEVICE_ID_BASE",
    "CAP_COMMON_CFG", "CAP_NOTIFY_CFG", "CAP_ISR_CFG", "CAP_DEVICE_CFG", "CAP_PCI_CFG",
    "LEGACY_BAR", "MSIX_BAR", "MODERN_BAR",
]  # fmt: skip

log = logging.getLogger(__name__)

VIRTIO_PCI_VENDOR_ID = 0x1AF4
MODERN_DEVICE_ID_BASE = 0x1040
#: §4.1.4 cfg_type values.
CAP_COMMON_CFG = 1
CAP_NOTIFY_CFG = 2
CAP_ISR_CFG = 3
CAP_DEVICE_CFG = 4
CAP_PCI_CFG = 5
CAP_ID_VENDOR = 0x09
LEGACY_BAR = 0
MSIX_BAR = 1
MODERN_BAR = 4
#: struct virtio_pci_cfg_cap (§4.1.4.9): bar at +4, offset at +8, length at +12, pci_cfg_data at +16.
_CFG_BAR, _CFG_OFFSET, _CFG_LENGTH, _CFG_DATA = 4, 8, 12, 16
_MSIX_BAR_MIN = 0x1000


@dataclass(frozen=True)
class VirtioPciType:
    """What QEMU 7.2 gives one virtio device type on PCI (measured over qtest, see tests)."""

    type_name: str
    legacy_device_id: int | None  # §4.1.2.1 transitional PCI device ID; None: no legacy interface
    class_code: int  # 24-bit: base class, subclass, programming interface
    vectors: int | None  # default MSI-X vectors; None: number of queues + 1


#: Keyed by virtio device ID (§5). Class codes and vector counts as QEMU 7.2 reports them.
PCI_TYPES: dict[int, VirtioPciType] = {
    1: VirtioPciType("virtio-net-pci", 0x1000, 0x020000, None),  # 4 vectors for rx/tx/ctrl
    2: VirtioPciType("virtio-blk-pci", 0x1001, 0x010000, None),  # 2 vectors for one queue
    3: VirtioPciType("virtio-serial-pci", 0x1003, 0x078000, 2),
    4: VirtioPciType("virtio-rng-pci", 0x1005, 0x00FF00, 2),
    5: VirtioPciType("virtio-balloon-pci", 0x1002, 0x00FF00, 0),
}
_OTHER = VirtioPciType("virtio-pci", None, 0x00FF00, None)


def _cap_body(cfg_type: int, bar: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    """struct virtio_pci_cap after cap_vndr/cap_next: cap_len, cfg_type, bar, id, padding[2], offset, length."""
    cap_len = 16 + len(extra)
    head = bytes([cap_len, cfg_type, bar, 0, 0, 0])
    return head + offset.to_bytes(4, "little") + length.to_bytes(4, "little") + extra


def _msix_bar_layout(vectors: int) -> tuple[int, int]:
    """(BAR size, PBA offset): QEMU's exclusive MSI-X BAR -- 4 KiB, PBA in the upper half, grown if needed."""
    table = 16 * vectors
    pba = ((vectors + 63) // 64) * 8
    size = _MSIX_BAR_MIN
    while table > size // 2 or pba > size // 2:
        size *= 2
    return size, size // 2


class VirtioPciFunction(PciDevice):
    """A virtio device on PCI: ``VirtioPciFunction(device)`` is QEMU's ``-device virtio-<type>-pci``."""

    def __init__(
        self,
        device: VirtioDevice,
        *,
        disable_legacy: bool | None = None,
        disable_modern: bool = False,
        vectors: int | None = None,
        qdev_id: str = "",
        type_name: str | None = None,
        deviations: Deviations = NO_DEVIATIONS,
    ) -> None:
        #: The machine's deliberate deviations, shared with the device this function carries.
        self.deviations = device.deviations = deviations
        info = PCI_TYPES.get(device.device_id, _OTHER)
        name = type_name or info.type_name
        if disable_legacy is None:  # QEMU's "auto": legacy stays on for conventional PCI
            disable_legacy = info.legacy_device_id is None
        legacy = not disable_legacy
        modern = not disable_modern
        if modern and not device.device_features >> F.VIRTIO_F_VERSION_1 & 1:
            modern = False  # QEMU: no VERSION_1 means no modern capabilities
        if not modern and not legacy:
            raise ValueError(f"{name}: device cannot work as neither modern nor legacy mode is enabled")
        if legacy and info.legacy_device_id is None:
            raise ValueError(f"{name}: virtio device ID {device.device_id} has no legacy (transitional) PCI ID")
        if vectors is None:
            vectors = info.vectors if info.vectors is not None else device.num_queues + 1
        if not 0 <= vectors <= 2048:
            raise ValueError(f"{name}: vectors must be 0..2048, not {vectors}")
        if legacy:
            assert info.legacy_device_id is not None
            ids = {"device_id": info.legacy_device_id, "revision": 0, "subsystem_id": device.device_id}
        else:
            ids = {"device_id": MODERN_DEVICE_ID_BASE + device.device_id, "revision": 1,
                   "subsystem_id": QEMU_SUBSYSTEM_ID}  # fmt: skip
        super().__init__(
            vendor_id=VIRTIO_PCI_VENDOR_ID, class_code=info.class_code, subsystem_vendor_id=VIRTIO_PCI_VENDOR_ID,
            interrupt_pin=1, qdev_id=qdev_id, **ids,
        )  # fmt: skip
        self.type_name = name
        if deviations.active("pci-device-id-writable"):  # off by default: see refvm/deviations.py
            self.config.set_rw_mask(0x02, 2, 0xFFFF)
        self.vdev = device
        self.legacy = legacy
        self.modern = modern
        self.modern_bar: ModernBar | None = None
        self.legacy_bar: LegacyBar | None = None
        self.pci_cfg_cap: int | None = None
        if modern:
            self.modern_bar = ModernBar(self)
            self.add_bar(BarSpec(MODERN_BAR, "mem64", MODERN_BAR_SIZE, prefetchable=True, region=self.modern_bar))
            self._add_modern_capabilities()
        if vectors:
            bar_size, pba_offset = _msix_bar_layout(vectors)
            self.add_bar(BarSpec(MSIX_BAR, "mem32", bar_size))
            self.add_msix(vectors, MSIX_BAR, 0, MSIX_BAR, pba_offset)
        if legacy:
            size = legacy_bar_size(len(device.config), vectors > 0)
            self.legacy_bar = LegacyBar(self, size)
            self.add_bar(BarSpec(LEGACY_BAR, "io", size, region=self.legacy_bar))
        device.on_used_buffer = self._used_buffer
        device.on_config_change = self._config_change

    def _add_modern_capabilities(self) -> None:
        """§4.1.4: one vendor capability per structure, then the PCI configuration access capability."""
        self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_COMMON_CFG, MODERN_BAR, COMMON_OFFSET, REGION_SIZE))
        self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_ISR_CFG, MODERN_BAR, ISR_OFFSET, REGION_SIZE))
        self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_DEVICE_CFG, MODERN_BAR, DEVICE_OFFSET, REGION_SIZE))
        multiplier = NOTIFY_OFF_MULTIPLIER.to_bytes(4, "little")
        notify_len = NOTIFY_OFF_MULTIPLIER * QUEUE_MAX
        self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_NOTIFY_CFG, MODERN_BAR, NOTIFY_OFFSET, notify_len, multiplier))
        # §4.1.4.9: bar, offset, length and pci_cfg_data are driver-writable; QEMU leaves them 0.
        body = _cap_body(CAP_PCI_CFG, 0, 0, 0, bytes(4))
        masks = bytes([0, 0, 0xFF, 0, 0, 0]) + b"\xff" * 12
        self.pci_cfg_cap = self.add_capability(CAP_ID_VENDOR, body, rw_masks=masks)

    # ---------------------------------------------------------------- helpers for the register blocks
    def checked_vector(self, vector: int) -> int:
        """The vector the function will use: ``vector`` if its MSI-X table has it, else NO_VECTOR."""
        msix = self.msix
        if msix is not None and 0 <= vector < msix.table_size:
            return vector
        return NO_VECTOR

    def write_status(self, value: int) -> None:
        """device_status written (common config or legacy): 0 resets device and transport (§4.1.4.3.1)."""
        self.vdev.write_status(value)
        if self.vdev.status == 0:
            self._reset_transport()

    def reset_virtio(self) -> None:
        """Reset the virtio device and everything the transport keeps for it."""
        with self.vdev.lock:
            self.vdev.reset()
            self._reset_transport()

    def _reset_transport(self) -> None:
        """QEMU's virtio_pci_reset: selectors and queue registers cleared, MSI-X vectors released (their
        pending bits cleared), INTx lowered (the ISR is 0 now). The vector table itself is untouched."""
        if self.modern_bar is not None:
            self.modern_bar.reset()
        if self.legacy_bar is not None:
            self.legacy_bar.reset()
        msix = self.msix
        if msix is not None:
            with self._lock:
                msix.pba[:] = bytes(len(msix.pba))
        self.set_irq(False)

    def read_isr(self) -> int:
        """§4.1.4.5: reading the ISR returns and clears it, and deasserts INTx."""
        value = self.vdev.read_isr()
        self.set_irq(False)
        return value

    def force_bus_master(self) -> None:
        """QEMU sets Bus Master Enable when a legacy driver writes ACKNOWLEDGE|DRIVER (pre-2.6.34 Linux)."""
        cmd = self.config.get_u8(COMMAND)
        if not cmd & CMD_MASTER:
            PciDevice.config_write(self, COMMAND, 1, cmd | CMD_MASTER)

    def notify_address(self, queue_index: int) -> tuple[int, int]:
        """(BAR index, offset) a driver writes to notify ``queue_index`` -- for an ioeventfd.

        Modern: BAR4 + 3000h + 4 * queue_notify_off (any write width). Legacy only: BAR0 + 10h, where the
        16-bit value written is the queue index (match the data too).
        """
        if not 0 <= queue_index < QUEUE_MAX:
            raise ValueError(f"{self.name}: queue index {queue_index} out of range 0..{QUEUE_MAX - 1}")
        if self.modern:
            return MODERN_BAR, NOTIFY_OFFSET + NOTIFY_OFF_MULTIPLIER * queue_index
        return LEGACY_BAR, 0x10

    # ---------------------------------------------------------------- interrupts
    def _used_buffer(self, queue_index: int) -> None:
        queues = self.vdev.queues
        vector = queues[queue_index].msix_vector if 0 <= queue_index < len(queues) else NO_VECTOR
        self._signal(vector)

    def _config_change(self) -> None:
        self.vdev.isr |= ISR_QUEUE  # QEMU's virtio_notify_config sets ISR to 3, not just bit 1
        self._signal(self.vdev.config_msix_vector)

    def _signal(self, vector: int) -> None:
        msix = self.msix
        if msix is not None and msix.enabled:
            if vector != NO_VECTOR:
                msix.notify(vector)
            return
        self.set_irq(bool(self.vdev.isr & ISR_QUEUE))

    # ---------------------------------------------------------------- configuration space
    def config_read(self, offset: int, size: int) -> int:
        with self.vdev.lock:
            return super().config_read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        with self.vdev.lock:
            super().config_write(offset, size, value)

    def _cfg_window(self) -> tuple[int, int] | None:
        """(offset, length) the PCI_CFG capability selects, if pci_cfg_data is usable (length 1, 2 or 4).

        Like QEMU, the access goes to the modern BAR whatever the ``bar`` field says, at ``offset``
        rounded down to the access length, and only if it falls inside the BAR.
        """
        cap = self.pci_cfg_cap
        if cap is None:
            return None
        length = self.config.get_u32(cap + _CFG_LENGTH)
        if length not in (1, 2, 4):
            return None
        offset = self.config.get_u32(cap + _CFG_OFFSET) & ~(length - 1)
        if offset + length > MODERN_BAR_SIZE:
            return None
        return offset, length

    def _touches_cfg_data(self, offset: int, size: int) -> bool:
        cap = self.pci_cfg_cap
        return cap is not None and ranges_overlap(offset, size, cap + _CFG_DATA, 4)

    def config_read_hook(self, offset: int, size: int) -> None:
        """§4.1.4.9: a read of pci_cfg_data fetches the selected BAR bytes into it first."""
        if not self._touches_cfg_data(offset, size) or self.modern_bar is None:
            return
        window = self._cfg_window()
        if window is None:
            return
        off, length = window
        value = self.modern_bar.read_piece(off, length)
        assert self.pci_cfg_cap is not None
        self.config.set(self.pci_cfg_cap + _CFG_DATA, length, value)

    def config_write_hook(self, offset: int, size: int, value: int) -> None:
        """§4.1.4.9 window writes; and, like QEMU, clearing Bus Master Enable takes DRIVER_OK away."""
        if ranges_overlap(offset, size, COMMAND, 1) and not self.config.get_u16(COMMAND) & CMD_MASTER:
            status = self.vdev.status
            if status & S.DRIVER_OK:
                self.vdev.write_status(status & ~S.DRIVER_OK)
        if self._touches_cfg_data(offset, size) and self.modern_bar is not None:
            window = self._cfg_window()
            if window is not None:
                off, length = window
                assert self.pci_cfg_cap is not None
                self.modern_bar.write_piece(off, length, self.config.get(self.pci_cfg_cap + _CFG_DATA, length))

    # ---------------------------------------------------------------- migration (refvm/virtio/state.py)
    @property
    def vmsd_name(self) -> str:
        return self.vdev.VMSD_NAME

    def state_class(self) -> type[DeviceState]:
        return section_state(self.vdev.VMSD_NAME, self.vdev.DEVICE_STATE)

    def save(self) -> DeviceState:
        """The whole function as one State: PCI config and MSI-X, transport, virtio core, device type.

        This is the migration's cut. The device first quiesces (virtio-blk completes requests still waiting
        for its throttle), so no request is in flight in the State; then it freezes (see
        :meth:`VirtioDevice.freeze`), so the RAM the caller copies afterwards is the RAM this State goes
        with. :meth:`thaw` undoes the freeze when the migration fails."""
        dev = self.vdev
        with dev.lock:
            dev.quiesce()
            modern, legacy = self.modern_bar, self.legacy_bar
            regs = tuple(QueueRegsState(index=i, desc=r.desc, driver=r.driver, device=r.device, enabled=r.enabled,
                                        msix_vector=r.msix_vector)
                         for i, r in sorted(modern.queue_regs.items())) if modern else ()
            transport = VirtioPciState(
                device_feature_select=modern.device_feature_select if modern else 0,
                driver_feature_select=modern.driver_feature_select if modern else 0,
                driver_feature_word0=modern.driver_feature_words[0] if modern else 0,
                driver_feature_word1=modern.driver_feature_words[1] if modern else 0,
                queue_select=modern.queue_select if modern else 0, queue_regs=regs,
                legacy_queue_select=legacy.queue_select if legacy else 0,
                legacy_guest_features=legacy.guest_features if legacy else 0,
                legacy_negotiated=bool(legacy.negotiated) if legacy else False)
            state = self.state_class()(pci=self.save_pci(), transport=transport, virtio=dev.save_core(),
                                       device=dev.save_device())
            dev.freeze()
            return state

    def thaw(self) -> None:
        self.vdev.thaw()

    def _transport_problem(self, st: VirtioPciState) -> tuple[str, str] | None:
        vectors = self.msix.table_size if self.msix is not None else 0
        for i, regs in enumerate(st.queue_regs):
            if regs.msix_vector != NO_VECTOR and regs.msix_vector >= vectors:
                return f"queue_regs[{i}].msix_vector", f"{regs.msix_vector} is not one of {vectors} MSI-X vectors"
            if i and regs.index <= st.queue_regs[i - 1].index:
                return f"queue_regs[{i}].index", f"{regs.index} is not above the previous entry's"
        if self.modern_bar is None and (st.queue_regs or st.driver_feature_word0 or st.driver_feature_word1):
            return "queue_regs", "modern transport state for a function without the modern interface"
        return None

    def _legacy_driver(self, st: VirtioPciState) -> bool:
        """Whether the state's features were negotiated by a legacy driver through BAR0."""
        return self.legacy_bar is not None and st.legacy_negotiated

    def _vector_problem(self, state: DeviceState) -> tuple[str, str] | None:
        vectors = self.msix.table_size if self.msix is not None else 0
        virtio = state.virtio  # type: ignore[attr-defined]
        checks = [("virtio.config_msix_vector", virtio.config_msix_vector)]
        checks += [(f"virtio.queues[{i}].msix_vector", q.msix_vector) for i, q in enumerate(virtio.queues)]
        for name, vector in checks:
            if vector != NO_VECTOR and vector >= vectors:  # checked_vector() never stores such a vector
                return name, f"{vector} is not one of {vectors} MSI-X vectors"
        return None

    def load(self, state: DeviceState) -> None:
        """Check everything against this function first (one line naming the field), then assign it."""
        section = self.idstr
        dev = self.vdev
        if not isinstance(state, self.state_class()):
            raise load_error(section, "state", f"{type(state).__name__} is not this {self.name}'s state")
        s: Any = state
        self.check_pci(s.pci, section, "pci.")
        for prefix, found in (("transport.", self._transport_problem(s.transport)),
                              ("virtio.", dev.core_problem(s.virtio, self._legacy_driver(s.transport))),
                              ("", self._vector_problem(s)),
                              ("device.", dev.device_problem(s.device, s.virtio))):
            if found:
                raise load_error(section, prefix + found[0], found[1])
        with dev.lock:
            dev.load_core(s.virtio)
            dev.load_device(s.device)
            t = s.transport
            if self.modern_bar is not None:
                bar = self.modern_bar
                bar.device_feature_select, bar.driver_feature_select = t.device_feature_select, t.driver_feature_select
                bar.driver_feature_words = [t.driver_feature_word0, t.driver_feature_word1]
                bar.queue_select = t.queue_select
                bar.queue_regs = {r.index: QueueRegs(r.desc, r.driver, r.device, r.enabled, r.msix_vector)
                                  for r in t.queue_regs}
            if self.legacy_bar is not None:
                leg = self.legacy_bar
                leg.queue_select, leg.guest_features = t.legacy_queue_select, t.legacy_guest_features
                leg.negotiated = t.legacy_negotiated
            self.load_pci(s.pci, section, "pci.")
            dev.post_load()

    # ---------------------------------------------------------------- reset
    def reset(self) -> None:
        """System reset: the virtio device and transport, then the PCI function (QEMU's device reset). Not a
        ``load`` of a default state: the queues' maximum sizes, device config and host backends stay."""
        with self.vdev.lock:
            self.reset_virtio()
            super().reset()

    def __repr__(self) -> str:
        where = f"{self.slot:02x}.{self.function}" if self.slot >= 0 else "unplugged"
        mode = "transitional" if self.legacy and self.modern else "legacy" if self.legacy else "modern"
        return f"<VirtioPciFunction {self.name} {self.vendor_id:04x}:{self.device_id:04x} {mode} at {where}>"

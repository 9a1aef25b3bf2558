"""State as data: the 16550 UART, the MC146818 RTC, and the schemas of PCI functions, virtqueues, the virtio core and
transport and virtio-blk, saved, carried as stream bytes, validated and loaded."""
from __future__ import annotations

import dataclasses
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refvm.bus import PioBus
from refvm.clock import VirtualClock
from refvm.devices.acpi.pm import PWRBTN_EN, PWRBTN_STS, AcpiPm, AcpiPmState
from refvm.devices.chardev import NullChardev
from refvm.devices.fw_cfg import FwCfg, FwCfgDmaState, FwCfgState, Key
from refvm.devices.irq import IrqLine
from refvm.devices.pci.host import Conf1State
from refvm.devices.pci.state import PciState
from refvm.devices.reset import ResetControl, ResetControlState
from refvm.devices.rtc import REG_B, REG_C, SECONDS, Rtc, RtcOptions, RtcState
from refvm.devices.serial import COM1, Serial16550, SerialState
from refvm.migration.state import BOOL, DeviceState, StateError
from refvm.migration.stream import StreamWriter, read_stream
from refvm.virtio.devices.balloon import BalloonState
from refvm.virtio.devices.blk import BlkState
from refvm.virtio.devices.console import ConsolePortState, ConsoleState, ControlMessageState
from refvm.virtio.devices.net_state import NetState
from refvm.virtio.state import QueueRegsState, QueueState, VirtioCoreState, VirtioPciState, section_state

NS = 1_000_000_000
BASE = COM1[0]
BLK_SECTION = section_state("virtio-blk", BlkState)
STATES: list[type[DeviceState]] = [SerialState, RtcState, PciState, Conf1State, ResetControlState, QueueState,
                                   QueueRegsState,
                                   VirtioCoreState, VirtioPciState, BlkState, BLK_SECTION, BalloonState, ConsoleState,
                                   ConsolePortState, ControlMessageState, NetState, AcpiPmState, FwCfgState,
                                   FwCfgDmaState]


class Chip:
    """A device on a real PioBus with its IRQ level recorded."""

    def __init__(self, make, base: int, length: int) -> None:  # noqa: ANN001 - a device constructor
        self.level = 0
        self.irq = IrqLine(self._set, 4)
        self.dev = make(self.irq)
        self.bus = PioBus()
        self.bus.register(base, length, self.dev, "dev")
        self.base = base

    def _set(self, _n: int, level: int) -> None:
        self.level = level

    def w(self, off: int, value: int) -> None:
        self.bus.write(self.base + off, 1, value)

    def r(self, off: int) -> int:
        return self.bus.read(self.base + off, 1)


def _uart() -> Chip:
    return Chip(lambda irq: Serial16550(irq, NullChardev("n")), BASE, 8)


def _rtc(clock: VirtualClock, base: str = "2006-06-17T00:30:00") -> Chip:
    return Chip(lambda irq: Rtc(irq, clock, RtcOptions(base=base)), 0x70, 2)


def _through_stream(states: list[DeviceState]) -> list[DeviceState]:
    """Write the states as full sections of a real stream, read it back and decode each section."""
    out = io.BytesIO()
    w = StreamWriter(out)
    w.header("pc-i440fx-7.2")
    for i, s in enumerate(states):
        w.device(s.VMSD_NAME, i, s.VERSION, s.encode(), s.describe())
    w.finish()
    parsed = read_stream(out.getvalue())
    by_name = {cls.VMSD_NAME: cls for cls in STATES}
    for sec, desc in zip(parsed.devices(), parsed.vmdesc["devices"], strict=True):
        assert len(sec.payload) == sum(f["size"] * f.get("array_len", 1) for f in desc["fields"])  # vmdesc agrees
    return [by_name[sec.idstr].decode(sec.payload, sec.version_id) for sec in parsed.devices()]


def test_serial_save_load_round_trip_with_fifo_and_irq() -> None:
    src = _uart()
    src.w(3, 0x80)
    src.w(0, 0x01)  # divisor 1: 115200 baud
    src.w(3, 0x03)
    src.w(2, 0xC1)  # FIFO on, trigger 14
    src.w(1, 0x01)
    src.w(7, 0x5A)
    src.dev.receive(b"abc")
    (state,) = _through_stream([src.dev.save()])
    dst = _uart()
    dst.dev.load(state)
    assert dst.dev.save() == src.dev.save()
    assert dst.level == 1 and dst.r(2) == 0xCC  # timeout interrupt pending, as on the source
    assert (dst.r(3), dst.r(7), dst.dev.baud) == (0x03, 0x5A, 115200)
    assert bytes(dst.r(0) for _ in range(3)) == b"abc"
    assert dst.level == 0


def test_rtc_carries_time_of_day_across_different_machine_clocks() -> None:
    clock_a, clock_b = VirtualClock(), VirtualClock()
    clock_b.step(12345 * NS)  # the destination's machine clock reads something else entirely
    src = _rtc(clock_a)
    src.w(0, REG_B)
    src.w(1, 0x02 | 0x10)  # 24 h, update-ended interrupt enabled
    src.w(0, 0x40)
    src.w(1, 0x99)  # a CMOS byte
    clock_a.step(3 * NS)  # UF latches
    state = src.dev.save()
    (loaded,) = _through_stream([state])
    dst = _rtc(clock_b, base="2020-01-01")
    dst.dev.load(loaded)
    assert dst.level == src.level == 1
    src.w(0, SECONDS)
    dst.w(0, SECONDS)
    assert dst.r(1) == src.r(1) == 0x03  # BCD seconds, 3 s after 00:30:00
    dst.w(0, 0x40)
    assert dst.r(1) == 0x99
    clock_b.step(2 * NS)
    dst.w(0, SECONDS)
    assert dst.r(1) == 0x05
    dst.w(0, REG_C)
    assert dst.r(1) & 0x90 == 0x90 and dst.level == 0


def test_rtc_frozen_set_mode_survives() -> None:
    clock = VirtualClock()
    src = _rtc(clock)
    src.w(0, REG_B)
    src.w(1, 0x80 | 0x02)  # SET: time frozen for the guest to write
    src.w(0, SECONDS)
    src.w(1, 0x42)
    (state,) = _through_stream([src.dev.save()])
    assert state.frozen
    dst = _rtc(VirtualClock())
    dst.dev.load(state)
    dst.w(0, SECONDS)
    assert dst.r(1) == 0x42


def test_acpi_pm_registers_and_sci_level_carry_over() -> None:
    src = Chip(lambda irq: AcpiPm(irq, lambda _t: None, lambda: 0), 0x600, 0x40)
    src.bus.write(0x602, 2, PWRBTN_EN)
    src.dev.press_power_button()
    assert src.level == 1
    (state,) = _through_stream([src.dev.save()])
    dst = Chip(lambda irq: AcpiPm(irq, lambda _t: None, lambda: 0), 0x600, 0x40)
    dst.dev.load(state)
    assert dst.level == 1 and dst.bus.read(0x600, 2) == PWRBTN_STS  # the guest's SCI handler finds the press
    dst.bus.write(0x600, 2, PWRBTN_STS)
    assert dst.level == 0


def test_fw_cfg_read_position_carries_over_and_a_position_past_the_item_is_refused() -> None:
    src = FwCfg()
    src.select(Key.SIGNATURE)
    assert src.read_data(2) == b"QE"
    (state,) = _through_stream([src.save()])
    dst = FwCfg()
    dst.load(state)
    assert dst.read_data(2) == b"MU"
    with pytest.raises(StateError, match=r"section 'fw_cfg': field 'offset': 9 is past the end of item 0x0"):
        dst.load(FwCfgState(Key.SIGNATURE, 9))


def _invalid_values(cls: type[DeviceState], f: dataclasses.Field) -> list[object]:
    """Values of the field's type that break its schema or its extra rule."""
    kind = f.metadata["kind"]
    if kind.state is not None:  # a nested State, or a tuple of them
        item = kind.state(**{g.name: 2 for g in dataclasses.fields(kind.state) if g.metadata["kind"] is BOOL})
        bad = [(item,), (kind.state(),) * (kind.max_len + 1)] if kind.is_list else [item]
        return [*bad, "text"] if any(g.metadata["kind"] is BOOL for g in dataclasses.fields(kind.state)) else ["text"]
    if kind.vmdesc_type == "bool":
        return [2, "yes"]
    if kind.vmdesc_type == "buffer":
        return [b"x" * (kind.max_len + 1), "text"]
    if kind.count:
        return [(0,) * (kind.count + 1), (1 << (8 * kind.width),) * kind.count]
    bad: list[object] = [1 << (8 * kind.width), -1, True]
    check = f.metadata["check"]
    if check is not None:
        bad += [v for v in range(256) if not check(v)][:2]
    return bad


def test_reset_control_keeps_the_reset_kind_and_loading_requests_no_reset() -> None:
    """A guest that chose a hard reset (SYS_RST) before the migration gets a hard reset after it; loading a value
    with RST_CPU set is not a write, so it resets nothing."""
    requests: list[str] = []
    src = ResetControl(lambda: requests.append("src"))
    src.write(0, 1, ResetControl.SYS_RST)
    dst = ResetControl(lambda: requests.append("dst"))
    dst.load(_through_stream([src.save()])[0])
    assert dst.read(0, 1) == ResetControl.SYS_RST and requests == []
    dst.write(0, 1, dst.read(0, 1) | ResetControl.RST_CPU)
    assert dst.hard is True and requests == ["dst"]
    dst.load(ResetControlState(ResetControl.RST_CPU | ResetControl.SYS_RST))
    assert requests == ["dst"]
    dst.reset()
    assert dst.save() == ResetControlState()


@pytest.mark.parametrize("cls", STATES, ids=lambda c: c.VMSD_NAME)
def test_every_invalid_field_is_refused_by_name(cls: type[DeviceState]) -> None:
    for f in dataclasses.fields(cls):
        for bad in _invalid_values(cls, f):
            state = dataclasses.replace(cls(), **{f.name: bad})
            with pytest.raises(StateError, match=rf"section '{cls.VMSD_NAME}': field '{f.name}['.\[]"):
                state.validate()  # a nested field is named by its path: queues[0].enabled


def test_cross_field_rule_names_the_field() -> None:
    with pytest.raises(StateError, match="field 'rx': 2 bytes in a receiver of 1"):
        SerialState(rx=b"ab").validate()


@pytest.mark.parametrize("cls", STATES, ids=lambda c: c.VMSD_NAME)
def test_every_truncated_payload_names_a_field(cls: type[DeviceState]) -> None:
    payload = cls().encode()
    for cut in range(len(payload)):
        with pytest.raises(StateError, match=f"section '{cls.VMSD_NAME}': field '"):
            cls.decode(payload[:cut], cls.VERSION)
    with pytest.raises(StateError, match="field 'end'"):
        cls.decode(payload + b"\0", cls.VERSION)
    with pytest.raises(StateError, match="field 'version id'"):
        cls.decode(payload, cls.VERSION + 1)


def test_bad_bool_and_bad_length_in_bytes_are_refused() -> None:
    payload = bytearray(SerialState().encode())
    payload[8] = 2  # fifo_enabled: ier lcr mcr lsr msr scr (6) + divisor (2) come first
    with pytest.raises(StateError, match="field 'fifo_enabled'"):
        SerialState.decode(bytes(payload), 1)
    payload = bytearray(SerialState().encode())
    payload[12:16] = (1000).to_bytes(4, "big")  # rx length: beyond a 16-byte FIFO
    with pytest.raises(StateError, match="field 'rx'"):
        SerialState.decode(bytes(payload), 1)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STATES), st.binary(max_size=200))
def test_arbitrary_payloads_load_or_fail_with_one_line(cls: type[DeviceState], payload: bytes) -> None:
    try:
        state = cls.decode(payload, cls.VERSION)
    except StateError as exc:
        assert "\n" not in str(exc)
        return
    assert state.encode() == payload  # anything accepted re-encodes to the same bytes


def _walk(fields: list[dict], data: bytes, pos: int = 0) -> int:
    """Read `data` the way a vmdesc reader does (QEMU's analyze-migration: fields in order, `array_len` repeats
    the entry, a struct by its own field list, everything else by its `size`); returns where it stopped."""
    for f in fields:
        for _ in range(f.get("array_len", 1)):
            if f["type"] == "struct":
                end = _walk(f["struct"]["fields"], data, pos)
                assert end - pos == f["size"], f["name"]
                pos = end
            else:
                pos += f["size"]
    return pos


def test_vmdesc_describes_nested_and_variable_sized_states_exactly() -> None:
    states: list[DeviceState] = [
        ConsoleState(ports=(ConsolePortState(nr=0, pending=b"abc"), ConsolePortState(nr=1, pending=b"")),
                     control=(ControlMessageState(b"\0" * 8), ControlMessageState(b"\1" * 12))),
        BLK_SECTION(virtio=VirtioCoreState(queues=(QueueState(size=8), QueueState(size=16, used_idx=3))),
                    transport=VirtioPciState(queue_regs=(QueueRegsState(index=0), QueueRegsState(index=2)))),
        NetState(uni_macs=b"\x02" * 12, vlan_filter=True, vlans=bytes(512)),
    ]
    for state in states:
        payload = state.encode()
        assert _walk(state.describe()["fields"], payload) == len(payload), state.VMSD_NAME

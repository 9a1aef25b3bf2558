"""MC146818 real-time clock and CMOS RAM at I/O ports 0x70 (index, bit 7 = NMI mask) and 0x71 (data).

Time registers read in BCD or binary and 12- or 24-hour form as register B says (MC146818A datasheet,
"Time, calendar and alarm locations"); UIP in register A is high for the 244 us before each update; register
C latches the periodic (PF), alarm (AF) and update-ended (UF) flags, IRQF when an enabled one is set, and
reading it clears them and lowers IRQ 8. Time runs on the machine clock (the virtual one under qtest, so
tests step it), from a base the `-rtc base=` option gives. Flags are computed when read, and a timer is armed
only while an interrupt is enabled: a 1024 Hz periodic rate costs nothing until a guest asks for it.
The CMOS bytes a PC BIOS leaves (memory sizes, century, CPU count) are filled in as QEMU 7.2's do.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from refvm.devices.irq import IrqLine
from refvm.migration.state import BOOL, U8, U64, DeviceState, buffer, sfield, u8_array, u16_array

__all__ = ["Rtc", "RtcState", "RtcOptions", "parse_rtc", "RtcError", "cmos_memory_bytes"]

NS = 1_000_000_000
UIP_HOLD_NS = 8 * NS // 32768  # 244 us: UIP rises this long before the update
SECONDS, SEC_ALARM, MINUTES, MIN_ALARM, HOURS, HOUR_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
UIP = 0x80
B_SET, B_PIE, B_AIE, B_UIE, B_DM, B_24H = 0x80, 0x40, 0x20, 0x10, 0x04, 0x02
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
DV_NORMAL = 0x20  # register A divider bits 4-6 = 010: 32.768 kHz time base running
DONT_CARE = 0xC0  # an alarm byte of 0xC0-0xFF matches every value


class RtcError(ValueError):
    """A bad -rtc option; str() is the message after `-rtc TEXT: `."""


@dataclass
class RtcOptions:
    """-rtc base=utc|localtime|DATE,clock=host|rt|vm,driftfix=slew|none (QEMU's keys and defaults)."""

    base: str = "utc"
    clock: str = "host"
    driftfix: str = "none"


def parse_rtc(text: str, options: RtcOptions | None = None) -> RtcOptions:
    """Parse one -rtc argument (QEMU's texts for bad values)."""
    opts = options or RtcOptions()
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("base", "clock", "driftfix"):
            raise RtcError(f"Invalid parameter '{key}'")
        if key == "base":
            if value not in ("utc", "localtime"):
                parse_base_date(value)
            opts.base = value
        elif key == "clock":
            if value not in ("host", "rt", "vm"):
                raise RtcError(f"invalid option value '{value}'")
            opts.clock = value
        else:
            if value not in ("slew", "none"):
                raise RtcError(f"invalid option value '{value}'")
            opts.driftfix = value
    return opts


def parse_base_date(value: str) -> int:
    """`2006-06-17T16:01:21` or `2006-06-17` as seconds since the epoch (UTC fields, as QEMU reads them)."""
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(value, fmt))
        except ValueError:
            continue
    raise RtcError("invalid datetime format: valid formats: '2006-06-17T16:01:21' or '2006-06-17'")


def cmos_memory_bytes(below_4g: int, above_4g: int, cpus: int) -> dict[int, int]:
    """The CMOS bytes QEMU 7.2's pc BIOS setup leaves (observed over qtest): sizes in KiB or 64 KiB units."""
    ext_kib = min(max(below_4g - (1 << 20), 0) // 1024, 0xFFFF)
    over_16m = min(max(below_4g - (16 << 20), 0) // 65536, 0xFFFF)
    high = min(above_4g // 65536, 0xFF_FFFF)
    return {
        0x14: 0x06, 0x15: 0x80, 0x16: 0x02,  # equipment; 640 KiB base memory
        0x17: ext_kib & 0xFF, 0x18: ext_kib >> 8, 0x30: ext_kib & 0xFF, 0x31: ext_kib >> 8,
        0x34: over_16m & 0xFF, 0x35: over_16m >> 8,
        0x37: 0x20, 0x38: 0x30, 0x3D: 0x12,  # PS/2 century byte; boot order: disk, then floppy
        0x5B: high & 0xFF, 0x5C: (high >> 8) & 0xFF, 0x5D: high >> 16,
        0x5F: (cpus - 1) & 0xFF,
    }  # fmt: skip


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return ((value >> 4) & 0x0F) * 10 + (value & 0x0F)


@dataclass
class RtcState(DeviceState):
    """The clock's migratable state.  Time travels as the guest's time of day, not as the machine clock (which
    differs between source and destination); interrupt flags are collected up to the moment of saving."""

    VMSD_NAME: ClassVar[str] = "mc146818rtc"
    VERSION: ClassVar[int] = 1
    index: int = sfield(U8, 0, lambda v: v < 0x80, "a CMOS index below 0x80")
    nmi_masked: bool = sfield(BOOL, False)
    ram: bytes = sfield(buffer(128), bytes(128), lambda v: len(v) == 128, "128 bytes of CMOS")
    time_ns: int = sfield(U64, 0)
    flags: int = sfield(U8, 0, lambda v: not v & 0x0F, "register C flags (bits 4-7)")
    alarm: tuple[int, ...] = sfield(u8_array(3), (0, 0, 0))
    frozen: bool = sfield(BOOL, False)
    frozen_fields: tuple[int, ...] = sfield(u16_array(7), (0,) * 7)


class Rtc:
    """The clock chip plus its 128 bytes of CMOS; registered at 0x70 with length 2."""

    def __init__(self, irq: IrqLine, clock, options: RtcOptions | None = None,  # noqa: ANN001 - machine clock
                 cmos: dict[int, int] | None = None, wall_ns: Callable[[], int] | None = None) -> None:  # fmt: skip
        self.irq = irq
        self.clock = clock
        self.options = options or RtcOptions()
        self.cmos_init = dict(cmos or {})
        self.wall_ns = wall_ns or time.time_ns
        self._lock = threading.RLock()
        self._timer = None
        self.power_on()

    # ---- time base -----------------------------------------------------------------------------------

    def _initial_seconds(self) -> int:
        base = self.options.base
        now = self.wall_ns() // NS
        if base == "utc":
            return now
        if base == "localtime":
            return calendar.timegm(time.localtime(now))
        return parse_base_date(base)

    def reset(self) -> None:
        """Machine reset: the battery-backed time and CMOS stay; interrupt enables and flags clear (as QEMU).
        Not ``load(RtcState())``: that would zero the time of day and the CMOS, which a reset keeps."""
        with self._lock:
            self._collect(self.clock.now_ns())
            self.ram[REG_B] &= ~(B_PIE | B_AIE | 0x08)  # PIE, AIE, SQWE
            self._flags = 0
            self._rearm()
            self.irq.lower()

    def power_on(self) -> None:
        """Power-on: time from the -rtc base, registers as a BIOS leaves them (A = 0x26, B = 24 h BCD)."""
        with self._lock:
            self.index = 0
            self.nmi_masked = False
            self.ram = bytearray(128)
            for addr, value in self.cmos_init.items():
                self.ram[addr] = value
            self.ram[REG_A] = DV_NORMAL | 0x06
            self.ram[REG_B] = B_24H
            self.ram[REG_D] = 0x80
            self._set_seconds(self._initial_seconds(), keep_fraction=False)
            self._checked_ns = self.clock.now_ns()
            self._flags = 0
            self._alarm = [0, 0, 0]
            self._frozen: list[int] | None = None
            self._rearm()
            self.irq.lower()

    def save(self) -> RtcState:
        """State as data; flags are brought up to date first so none is lost at the cut."""
        with self._lock:
            now = self.clock.now_ns()
            self._collect(now)
            return RtcState(index=self.index, nmi_masked=self.nmi_masked, ram=bytes(self.ram),
                            time_ns=self._rtc_ns(now), flags=self._flags, alarm=tuple(self._alarm),
                            frozen=self._frozen is not None, frozen_fields=tuple(self._frozen or (0,) * 7))

    def load(self, state: RtcState) -> None:
        """Restore `state` (validated: guest-controlled) against this machine's clock, without register writes."""
        state.validate()
        with self._lock:
            now = self.clock.now_ns()
            self.index, self.nmi_masked, self.ram = state.index, state.nmi_masked, bytearray(state.ram)
            self._origin_s, self._origin_ns = state.time_ns // NS, now - state.time_ns % NS
            self._checked_ns, self._flags, self._alarm = now, state.flags, list(state.alarm)
            self._frozen = list(state.frozen_fields) if state.frozen else None
            self._rearm()
            self.irq.set(bool(self._flags & C_IRQF))

    def _set_seconds(self, seconds: int, keep_fraction: bool = True) -> None:
        now = self.clock.now_ns()
        fraction = (now - self._origin_ns) % NS if keep_fraction and hasattr(self, "_origin_ns") else 0
        self._origin_ns = now - fraction
        self._origin_s = seconds

    def _rtc_ns(self, clock_ns: int | None = None) -> int:
        """Time of day in ns since the epoch (in the guest's zone) at machine clock ``clock_ns``."""
        now = self.clock.now_ns() if clock_ns is None else clock_ns
        return self._origin_s * NS + (now - self._origin_ns)

    def _clock_ns_at(self, rtc_ns: int) -> int:
        return rtc_ns - self._origin_s * NS + self._origin_ns

    @property
    def running(self) -> bool:
        return self.ram[REG_A] & 0x70 == DV_NORMAL and not self.ram[REG_B] & B_SET

    # ---- register encoding ---------------------------------------------------------------------------

    def _encode(self, value: int) -> int:
        return value if self.ram[REG_B] & B_DM else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.ram[REG_B] & B_DM else _from_bcd(value)

    def _encode_hour(self, hour: int) -> int:
        if self.ram[REG_B] & B_24H:
            return self._encode(hour)
        pm = 0x80 if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _decode_hour(self, value: int) -> int:
        if self.ram[REG_B] & B_24H:
            return self._decode(value)
        hour = self._decode(value & 0x7F) % 12
        return hour + 12 if value & 0x80 else hour

    def _fields(self, seconds: int) -> list[int]:
        tm = time.gmtime(seconds)
        return [tm.tm_sec, tm.tm_min, tm.tm_hour, (tm.tm_wday + 1) % 7 + 1, tm.tm_mday, tm.tm_mon, tm.tm_year]

    def _time_register(self, index: int) -> int:
        sec, minute, hour, wday, mday, mon, year = self._frozen or self._fields(self._rtc_ns() // NS)
        values = {SECONDS: sec, MINUTES: minute, DAY_OF_WEEK: wday, DAY: mday, MONTH: mon, YEAR: year % 100}
        if index == HOURS:
            return self._encode_hour(hour)
        if index == CENTURY:
            return _bcd(year // 100 % 100)
        return self._encode(values[index])

    # ---- interrupt flags -----------------------------------------------------------------------------

    def _period_ns(self) -> int | None:
        rate = self.ram[REG_A] & 0x0F
        if rate == 0 or self.ram[REG_A] & 0x70 != DV_NORMAL:
            return None
        ticks = 1 << (rate + 6) if rate <= 2 else 1 << (rate - 1)  # in 32.768 kHz cycles
        return ticks * NS // 32768

    def _next_alarm_s(self, after_s: int) -> int:
        """The first second after ``after_s`` whose time matches the alarm bytes (0xC0-0xFF: any value)."""
        secs, mins, hours = self._alarm
        day = after_s - after_s % 86400
        hour_set = range(24) if hours >= DONT_CARE else [self._decode_hour(hours)]
        min_set = range(60) if mins >= DONT_CARE else [self._decode(mins)]
        sec_set = range(60) if secs >= DONT_CARE else [self._decode(secs)]
        for d in (0, 1):
            for h in hour_set:
                for m in min_set:
                    for s in sec_set:
                        t = day + d * 86400 + h * 3600 + m * 60 + s
                        if t > after_s:
                            return t
        return after_s + 2 * 86400  # an impossible alarm (e.g. minute 61) never fires within two days

    def _collect(self, now: int) -> None:
        """Latch the flags whose events happened between the last check and machine clock ``now``."""
        last = self._checked_ns
        if now <= last or not self.running:
            self._checked_ns = max(now, last)
            return
        period = self._period_ns()
        if period and (now - self._origin_ns) // period > (last - self._origin_ns) // period:
            self._flags |= C_PF
        last_s, now_s = self._rtc_ns(last) // NS, self._rtc_ns(now) // NS
        if now_s > last_s:
            self._flags |= C_UF
            if self._next_alarm_s(last_s) <= now_s:
                self._flags |= C_AF
        self._checked_ns = now
        enabled = self.ram[REG_B] & (B_PIE | B_AIE | B_UIE)
        if self._flags & (enabled >> 0) & (C_PF | C_AF | C_UF):
            self._flags |= C_IRQF
            self.irq.raise_()

    def _rearm(self) -> None:
        """Arm one timer at the next event an enabled interrupt waits for (none if none is enabled)."""
        if self._timer is not None:
            self.clock.cancel_timer(self._timer)
            self._timer = None
        if not self.running:
            return
        now = self.clock.now_ns()
        deadlines = []
        period = self._period_ns()
        if self.ram[REG_B] & B_PIE and period:
            deadlines.append(now + period - (now - self._origin_ns) % period)
        now_s = self._rtc_ns(now) // NS
        if self.ram[REG_B] & B_UIE:
            deadlines.append(self._clock_ns_at((now_s + 1) * NS))
        if self.ram[REG_B] & B_AIE:
            deadlines.append(self._clock_ns_at(self._next_alarm_s(now_s) * NS))
        if deadlines:
            self._timer = self.clock.add_timer(min(deadlines), self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            self._collect(self.clock.now_ns())
            self._rearm()

    # ---- ports ---------------------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index port is write only
        with self._lock:
            return self._read_data(self.index)

    def _read_data(self, index: int) -> int:
        if index in (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY, MONTH, YEAR, CENTURY):
            return self._time_register(index)
        if index == REG_A:
            now = self.clock.now_ns()
            uip = self.running and (self._rtc_ns(now) % NS) >= NS - UIP_HOLD_NS
            return (self.ram[REG_A] & 0x7F) | (UIP if uip else 0)
        if index == REG_C:
            self._collect(self.clock.now_ns())
            value, self._flags = self._flags, 0
            self.irq.lower()
            self._rearm()
            return value
        if index in (SEC_ALARM, MIN_ALARM, HOUR_ALARM):
            return self._alarm[(index - 1) // 2]
        return self.ram[index]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if offset == 0:
                self.nmi_masked = bool(value & 0x80)
                self.index = value & 0x7F
                return
            self._write_data(self.index, value)

    def _write_data(self, index: int, value: int) -> None:
        now = self.clock.now_ns()
        self._collect(now)
        if index in (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY, MONTH, YEAR, CENTURY):
            fields = self._frozen or self._fields(self._rtc_ns(now) // NS)
            self._store_field(fields, index, value)
            if self._frozen is None:
                self._set_seconds(self._seconds_of(fields))
        elif index in (SEC_ALARM, MIN_ALARM, HOUR_ALARM):
            self._alarm[(index - 1) // 2] = value
        elif index == REG_A:
            was_running = self.running
            self.ram[REG_A] = value & 0x7F
            if not was_running and self.running:
                self._set_seconds(self._rtc_ns(now) // NS, keep_fraction=False)
        elif index == REG_B:
            self._write_b(value)
        elif index in (REG_C, REG_D):
            pass  # read only
        else:
            self.ram[index] = value
        self._checked_ns = now
        self._rearm()

    def _write_b(self, value: int) -> None:
        if value & B_SET:
            value &= ~B_UIE  # setting SET clears UIE (MC146818A register B, bit 7)
            if not self.ram[REG_B] & B_SET:
                self._frozen = self._fields(self._rtc_ns() // NS)
        elif self.ram[REG_B] & B_SET and self._frozen is not None:
            frozen, self._frozen = self._frozen, None
            self.ram[REG_B] = value
            self._set_seconds(self._seconds_of(frozen))
        # Changing DM or 24/12 reinterprets nothing: the fields are kept as numbers, encoded on read.
        self.ram[REG_B] = value
        enabled = value & (B_PIE | B_AIE | B_UIE)
        if self._flags & enabled & (C_PF | C_AF | C_UF):
            self._flags |= C_IRQF
            self.irq.raise_()
        elif not self._flags & enabled & (C_PF | C_AF | C_UF):
            self._flags &= ~C_IRQF
            self.irq.lower()

    def _store_field(self, fields: list[int], index: int, value: int) -> None:
        if index == HOURS:
            fields[2] = self._decode_hour(value) % 24
            return
        number = _from_bcd(value) if index == CENTURY else self._decode(value)
        slot = {SECONDS: 0, MINUTES: 1, DAY_OF_WEEK: 3, DAY: 4, MONTH: 5}.get(index)
        if slot is not None:
            fields[slot] = number
        elif index == YEAR:
            fields[6] = fields[6] - fields[6] % 100 + number % 100
        else:  # century
            fields[6] = number * 100 + fields[6] % 100

    @staticmethod
    def _seconds_of(fields: list[int]) -> int:
        """Seconds since the epoch of guest-written fields; out-of-range values are clamped, never trusted."""
        sec, minute, hour, _wday, mday, mon, year = fields
        year = min(max(year, 1970), 9999)
        mon = min(max(mon, 1), 12)
        mday = min(max(mday, 1), calendar.monthrange(year, mon)[1])
        return calendar.timegm((year, mon, mday, min(hour, 23), min(minute, 59), min(sec, 59), 0, 0, 0))

"""The firmware-facing devices of the pc machine, assembled from a MachineConfig: fw_cfg, RTC/CMOS, ACPI PM,
and the ACPI and SMBIOS tables refvm writes into guest memory in place of a BIOS.

Kept out of machine.py so that the machine only calls :func:`add_firmware` once and :meth:`PcFirmware.install`
before each boot. Under qtest nothing is written to memory (QEMU's firmware has not run there either), so a
test sees the same untouched RAM on both; the ports answer alike.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from refvm.devices.acpi.pm import REGION_SIZE, AcpiPm
from refvm.devices.acpi.tables import PM_BASE, SCI_IRQ, build_acpi
from refvm.devices.fw_cfg import DMA_PORT, SELECTOR_PORT, FwCfg, FwCfgDma, Key
from refvm.devices.irq import IrqLine
from refvm.devices.rtc import Rtc, RtcOptions, cmos_memory_bytes
from refvm.devices.smbios import SmbiosOptions, build_anchor, build_tables, format_uuid, parse_uuid, uuid_le

__all__ = ["PcFirmware", "add_firmware", "ACPI_BASE", "SMBIOS_BASE", "RTC_IRQ"]

#: Where refvm puts the tables: inside the 0xE0000-0xFFFFF window an OS scans (reserved in the e820 map).
ACPI_BASE = 0xE0000
SMBIOS_BASE = 0xF0000
RTC_IRQ = 8
E820_RAM = 1
FOUR_GIB = 1 << 32


class PcFirmware:
    """The devices and tables; ``ram_regions`` are (start, end) of guest RAM as the machine laid it out."""

    def __init__(
        self,
        config: Any,
        memory: Any,
        ram_regions: list[tuple[int, int]],
        irq: Callable[[int], IrqLine],
        clock: Any,
        on_sleep: Callable[[int], None],
    ) -> None:
        self.config = config
        self.memory = memory
        self.ram_regions = ram_regions
        cpus = config.smp
        # -smp's topology (refvm.cpu.Topology, duck-typed here): APIC ids and QEMU's max_cpus item, which is
        # the APIC id limit (highest id of the possible CPUs + 1); without one, ids 0..N-1, one core each.
        topo = getattr(config, "topology", None)
        if topo is not None:
            self.apic_ids: list[int] = [topo.apic_id(i) for i in range(cpus)]
            max_cpus = topo.apic_id(topo.maxcpus - 1) + 1
            sockets, cores, threads = topo.sockets, topo.cores * getattr(topo, "dies", 1), topo.threads
        else:
            self.apic_ids = list(range(cpus))
            max_cpus, sockets, cores, threads = cpus, 1, cpus, 1
        #: The machine UUID, 16 bytes in network order (fw_cfg's order); all zeros without -uuid, as QEMU.
        self.uuid = parse_uuid(config.uuid) if getattr(config, "uuid", None) else bytes(16)
        smbios = getattr(config, "smbios", None) or SmbiosOptions()
        self.smbios_table, count, largest = build_tables(
            smbios,
            ram_size=config.memory_bytes,
            ram_regions=ram_regions,
            uuid=uuid_le(self.uuid),
            sockets=sockets,
            cores=cores,
            threads=threads,
        )
        self.smbios_count, self.smbios_largest = count, largest
        self.fw_cfg = FwCfg(memory)
        self._fill_fw_cfg(cpus, max_cpus)
        self.dma = FwCfgDma(self.fw_cfg, memory)
        self.pm = AcpiPm(irq(SCI_IRQ), on_sleep, clock.now_ns)
        below = sum(end - start for start, end in ram_regions if end <= FOUR_GIB)
        above = sum(end - start for start, end in ram_regions if start >= FOUR_GIB)
        rtc_options = getattr(config, "rtc", None) or RtcOptions()
        self.rtc = Rtc(irq(RTC_IRQ), clock, rtc_options, cmos_memory_bytes(below, above, cpus))

    def _fill_fw_cfg(self, cpus: int, max_cpus: int) -> None:
        cfg = self.fw_cfg
        cfg.add_bytes(Key.UUID, self.uuid)
        cfg.add_u64(Key.RAM_SIZE, self.config.memory_bytes)
        cfg.add_u16(Key.NOGRAPHIC, 0)
        cfg.add_u16(Key.NB_CPUS, cpus)
        cfg.add_u16(Key.BOOT_DEVICE, 0)
        cfg.add_bytes(Key.NUMA, bytes(8 * (1 + max_cpus)))  # no NUMA nodes: a zero count, node 0 per CPU
        cfg.add_u16(Key.BOOT_MENU, 0)
        cfg.add_u16(Key.MAX_CPUS, max_cpus)
        cfg.add_u16(Key.SMBIOS_ENTRIES, 0)  # the legacy item: QEMU >= 2.x uses the files instead
        cfg.add_u32(Key.IRQ0_OVERRIDE, 1)
        cfg.add_u32(Key.E820_TABLE, 0)
        e820 = b"".join(struct.pack("<QQI", start, end - start, E820_RAM) for start, end in self.ram_regions)
        cfg.add_file("etc/e820", e820)
        cfg.add_file("bootorder", "".join(f"{p}\n" for p in getattr(self.config, "bootorder", [])).encode())
        cfg.add_file("etc/boot-fail-wait", struct.pack("<i", -1))
        cfg.add_file("etc/smbios/smbios-tables", self.smbios_table)
        cfg.add_file("etc/smbios/smbios-anchor", build_anchor(len(self.smbios_table), self.smbios_count,
                                                              self.smbios_largest))  # fmt: skip

    @property
    def uuid_text(self) -> str:
        return format_uuid(self.uuid)

    def register(self, register: Callable[[int, int, object, str], None]) -> None:
        """Claim the I/O ports: fw_cfg 0x510-0x511 and DMA 0x514-0x51b, the RTC at 0x70, PM at 0x600."""
        register(SELECTOR_PORT, 2, self.fw_cfg, "fw_cfg")
        register(DMA_PORT, 8, self.dma, "fw_cfg-dma")
        register(0x70, 2, self.rtc, "mc146818-rtc")
        register(PM_BASE, REGION_SIZE, self.pm, "piix4-pm")

    def install(self) -> None:
        """Write the ACPI and SMBIOS tables where a guest scans for them (before each boot under KVM)."""
        acpi = build_acpi(ACPI_BASE, self.apic_ids)
        self.memory.write(acpi.base, acpi.blob)
        table_at = SMBIOS_BASE + 32
        anchor = build_anchor(len(self.smbios_table), self.smbios_count, self.smbios_largest, table_at, True)
        self.memory.write(SMBIOS_BASE, anchor)
        self.memory.write(table_at, self.smbios_table)


def add_firmware(machine: Any, on_sleep: Callable[[int], None]) -> PcFirmware:
    """Build the firmware devices of ``machine`` and register their ports (its `_register` adds resets)."""
    regions = [(r.gpa, r.gpa + r.size) for r in machine.memory.regions]
    firmware = PcFirmware(machine.config, machine.memory, regions, machine._irq_line, machine.clock, on_sleep)
    firmware.register(machine._register)
    return firmware

"""ACPI for the pc machine: the tables refvm places where a guest scans for them, and PIIX4-style power management.

refvm has no firmware, so it writes the tables into guest memory itself before each boot (tables.py); the PM
registers (pm.py) are where FADT points, at the I/O base SeaBIOS gives QEMU's PIIX4 PM (0x600).
"""

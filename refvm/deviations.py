"""Deliberate deviations from the specs, off unless named on the command line.

A conformance suite that passes everything proves nothing until it has been seen to fail. Each entry
here breaks exactly one MUST in a way a black-box test can see; `-global virtio-pci.x-deviation=NAME`
turns it on, and tests/test_deviations.py shows that each one turns a named conformance test red.
Checks sit outside hot loops (one frozenset lookup where the rule is applied).

The set in force belongs to a machine (``Machine.deviations``), not to the process: a migration's source and
destination built in one test process must not switch each other's deviations on. Devices get it from their
PCI function when plugged (refvm/virtio/pci.py); a device never plugged has none.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["KNOWN", "Deviations", "NO_DEVIATIONS"]

#: name -> the rule it breaks (and the clause whose test must catch it).
KNOWN: dict[str, str] = {
    "accept-invalid-features": "FEATURES_OK is accepted even when the driver took a feature not offered "
    "(virtio 1.2 2.2.2 / 3.1.1)",
    "isr-not-cleared": "reading the ISR status does not clear it (virtio 1.2 4.1.4.5.1)",
    "blk-no-ro-feature": "a virtio-blk on a read-only drive does not offer VIRTIO_BLK_F_RO (5.2.3 / 5.2.5)",
    "used-len-zero": "virtio-blk reports a used length of 0 instead of the bytes written (2.7.8.1)",
    "pci-device-id-writable": "the PCI Device ID register is writable (PCI 3.0 6.2.1)",
    "migration-drop-dirty": "RAM changed after a migration's first pass is not sent at switchover, so the "
    "destination's RAM differs (refvm-migration ram/dirty-after-first-pass)",
}


class Deviations(frozenset):
    """The deviations one machine has switched on; unknown names are refused when the set is made."""

    def __new__(cls, names: Iterable[str] = ()) -> Deviations:
        chosen = frozenset(names)
        unknown = chosen - set(KNOWN)
        if unknown:
            raise ValueError(f"unknown deviation(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN))}")
        return super().__new__(cls, chosen)

    def active(self, name: str) -> bool:
        return name in self


#: What a machine without `x-deviation` (or a device not plugged into one) has.
NO_DEVIATIONS = Deviations()

"""QEMU-style ``-device`` property parsing shared by the virtio device models.

Values arrive as strings (``-device virtio-blk-pci,drive=d0,discard=off``); errors are
:class:`ValueError` with a one-line, QEMU-like message that names the property.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["COMMON_PCI_PROPS", "COMMON_VIRTIO_PROPS", "Props"]

#: Properties of every virtio-pci proxy; the transport consumes them (the device only accepts them).
COMMON_PCI_PROPS: tuple[str, ...] = (
    "addr", "id", "bus", "disable-legacy", "disable-modern", "vectors", "multifunction",
)
#: Properties of every virtio device that the core implements (QEMU defaults: packed=off, others on).
COMMON_VIRTIO_PROPS: tuple[str, ...] = ("indirect_desc", "event_idx", "packed")

_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


class Props:
    """The properties given to one ``-device``; ``type_name`` is QEMU's (e.g. ``virtio-blk-pci``)."""

    def __init__(self, type_name: str, props: Mapping[str, str], accepted: Iterable[str]) -> None:
        self.type_name = type_name
        self.props = dict(props)
        allowed = set(accepted) | set(COMMON_PCI_PROPS) | set(COMMON_VIRTIO_PROPS)
        for name in self.props:
            if name not in allowed:
                raise ValueError(f"Property '{type_name}.{name}' not found")

    def _bad(self, name: str, value: str) -> ValueError:
        return ValueError(f"Property '{self.type_name}.{name}' doesn't take value '{value}'")

    def text(self, name: str, default: str | None = None) -> str | None:
        return self.props.get(name, default)

    def flag(self, name: str, default: bool) -> bool:
        value = self.props.get(name)
        if value is None:
            return default
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"Parameter '{name}' expects 'on' or 'off'")

    def number(self, name: str, default: int, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
        value = self.props.get(name)
        if value is None:
            return default
        try:
            n = int(value, 0)
        except ValueError:
            raise self._bad(name, value) from None
        if not lo <= n <= hi:
            raise ValueError(
                f"Property '{self.type_name}.{name}' doesn't take value {n} (minimum: {lo}, maximum: {hi})"
            )
        return n

    def virtio_flags(self) -> dict[str, bool]:
        """Ring features of the core, as QEMU's per-device properties (packed is off by default)."""
        return {
            "packed": self.flag("packed", False),
            "event_idx": self.flag("event_idx", True),
            "indirect": self.flag("indirect_desc", True),
        }

    def pci(self) -> dict[str, str]:
        """The transport's share of the properties."""
        return {k: v for k, v in self.props.items() if k in COMMON_PCI_PROPS}

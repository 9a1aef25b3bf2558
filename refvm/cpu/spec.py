"""`-cpu MODEL[,+feat|-feat|feat=on|off|enforce|check|key=value...]`: parsing, with QEMU 7.2's error texts.

QEMU applies `feat=on|off` in the order given, then every `+feat`, then every `-feat` (so `-feat` wins,
whatever the order); refvm does the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refvm.cpu.features import DYNAMIC, canonical
from refvm.cpu.models import MODEL_BY_NAME, SPECIAL_MODELS

BOOL_WORDS = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}
#: Identity properties a user may override, with their kind.
IDENTITY_KEYS = {"vendor": str, "model-id": str, "family": int, "model": int, "stepping": int, "level": int,
                 "xlevel": int}
#: Boolean CPU properties that are no CPUID bit; accepted and recorded.
OTHER_BOOLS = {"enforce", "check", "migratable", "pmu", "l3-cache", "host-phys-bits", "kvm", "x2apic-api"}


class CpuSpecError(ValueError):
    """A -cpu value QEMU refuses; the text is QEMU's."""


@dataclass
class CpuSpec:
    model: str = "qemu64"
    #: canonical feature name -> wanted state, after QEMU's precedence rules
    overrides: dict[str, bool] = field(default_factory=dict)
    identity: dict[str, object] = field(default_factory=dict)
    enforce: bool = False
    check: bool = True

    @property
    def type_name(self) -> str:
        """QEMU's QOM type of the model (named in its "Property ... not found" errors)."""
        return f"{self.model}-x86_64-cpu"


def parse_cpu(text: str) -> CpuSpec:
    """Parse a -cpu argument (not `help`); raises CpuSpecError with QEMU's text."""
    name, *items = text.split(",")
    if name not in MODEL_BY_NAME and name not in SPECIAL_MODELS:
        raise CpuSpecError(f"unable to find CPU model '{name}'")
    spec = CpuSpec(model=name)
    plus: list[str] = []
    minus: list[str] = []
    for item in items:
        if not item:
            continue
        if item[0] in "+-":
            feat = canonical(item[1:])
            if feat is None:
                raise CpuSpecError(f"Property '{spec.type_name}.{item[1:]}' not found")
            (plus if item[0] == "+" else minus).append(feat)
            continue
        key, eq, value = item.partition("=")
        if not eq:
            value = "on"  # QEMU: a bare "feat" means feat=on
        _apply(spec, key, value)
    for feat in plus:
        spec.overrides[feat] = True
    for feat in minus:
        spec.overrides[feat] = False
    for feat in DYNAMIC:
        spec.overrides.pop(feat, None)
    return spec


def _apply(spec: CpuSpec, key: str, value: str) -> None:
    where = f"{spec.type_name}.{key}={value}"
    if key in IDENTITY_KEYS:
        if IDENTITY_KEYS[key] is int:
            try:
                spec.identity[key] = int(value, 0)
            except ValueError:
                raise CpuSpecError(f"can't apply global {where}: Parameter '{key}' expects uint64") from None
        else:
            spec.identity[key] = value
        return
    feat = canonical(key)
    if feat is None and key not in OTHER_BOOLS:
        raise CpuSpecError(f"Property '{spec.type_name}.{key}' not found")
    if value not in BOOL_WORDS:
        raise CpuSpecError(f"can't apply global {where}: Parameter '{key}' expects 'on' or 'off'")
    state = BOOL_WORDS[value]
    if feat is not None:
        spec.overrides[feat] = state
    elif key == "enforce":
        spec.enforce = state
    elif key == "check":
        spec.check = state

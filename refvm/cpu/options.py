"""The command-line face of refvm/cpu: `-cpu help` text and the checks `-cpu`/`-smp` get at parse time."""

from __future__ import annotations

import textwrap

from refvm.cpu.features import all_names
from refvm.cpu.models import help_lines
from refvm.cpu.spec import parse_cpu
from refvm.cpu.topology import Topology, parse_smp


def cpu_help() -> str:
    """What `-cpu help` prints: every model with its description, then the recognised CPUID flags."""
    flags = textwrap.wrap(" ".join(all_names()), 74, break_on_hyphens=False)
    lines = ["Available CPUs:", *help_lines(), "", "Recognized CPUID flags:", *("  " + f for f in flags)]
    return "\n".join(lines) + "\n"


def check_cpu(text: str) -> str:
    """Validate a -cpu value now (so a typo fails before the VM starts); returns it unchanged."""
    parse_cpu(text)
    return text


def smp_topology(props: dict[str, str]) -> tuple[Topology, list[str]]:
    return parse_smp(props)

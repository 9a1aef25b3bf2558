"""The fuzz campaign's harness: example counts, a hang alarm (conftest.py writes the report; issue 15).

``REFVM_FUZZ_EXAMPLES`` sets the examples per target: ``tox -e fuzz`` runs 10,000, the regular ``py`` env
(which collects these files too) runs the default of 25. Every target counts the examples it really ran;
``reports/fuzz.md`` lists, per target, the examples, the time and the outcome, and for a failure the
falsifying example with hypothesis' ``@reproduce_failure`` blob, so it can be replayed.

The domain XML parser and the RPC decoders (refvm/mgmt) have their target in ``test_fuzz_mgmt.py``; a new
untrusted input gets one here, using
:data:`FUZZ` and :func:`example` the same way.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("REFVM_FUZZ_EXAMPLES", "25"))
#: One example taking longer than this is a hang (a finding), whatever the CPU contention.
HANG_SECONDS = 20

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # timing on a shared CPU is noise; hangs are caught by the alarm instead
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)

_counts: collections.Counter[str] = collections.Counter()
_current: list[str] = [""]


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI, where .ci/setup provides everything) when a dependency is missing."""
    if not condition:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI setup is missing a dependency: {reason}")
        pytest.skip(reason)


class Hang(Exception):
    """An example ran past HANG_SECONDS."""


def _alarm(_sig: int, _frame: object) -> None:
    raise Hang(f"example ran longer than {HANG_SECONDS} s (hang)")


@contextmanager
def example() -> Iterator[None]:
    """Wrap one example: count it and turn a hang into a failure with its example."""
    _counts[_current[0]] += 1
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)



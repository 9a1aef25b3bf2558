"""Verdict kinds: what a test's expectation rests on, and how a target that does not meet it is recorded.

A conformance test checks one statement. Not every statement is a device-side MUST, and a target that does
something else than the test expects has not always broken the spec. Each test therefore has a *kind*:

=========================  ==========================================================================
kind                       the test's expectation rests on ...
=========================  ==========================================================================
``must``                   a device-side (or server-side) MUST; the default. Not met: a *deviation*.
``implementation-defined`` a choice the spec leaves to the device (or binds only the driver); the test
                           checks the choice refvm made, another target may legally choose otherwise.
``should``                 a SHOULD (or RECOMMENDED): not following it is a finding, not a violation.
``policy``                 the suite's own robustness rule, beyond the spec (e.g. refuse a damaged image).
``erratum``                a reading of a statement that the spec contradicts elsewhere; the test follows
                           the reading that implementations and the spec's errata use.
=========================  ==========================================================================

How a test declares it
----------------------
* A test whose expectation is not a plain MUST declares its kind and the sentence it rests on::

      @pytest.mark.verdict("erratum", "5.1.4: duplex ... 0x01 for full duplex (virtio-spec issue #75)")

  or, for one parameter, ``request.applymarker(pytest.mark.verdict(kind, sentence))``.
* A target known not to meet a test's expectation is declared with a :class:`Known` entry, one per distinct
  target *behaviour* (tests and parameters observing the same behaviour share the entry, so the report
  counts behaviours, not parameters)::

      BLK_WRITEBACK = Known(
          target="qemu", kind="must", behaviour="qemu-blk-writeback-follows-cache-mode",
          sentence="5.2.5: ... the device MUST initialize writeback to 0 ...",
          reason="QEMU 7.2 keeps writeback at the cache mode's value",
          component="virtio-blk")

      @pytest.mark.known(BLK_WRITEBACK)            # or, at run time:  known(request, target, BLK_WRITEBACK)
      def test_x(...):
          expect(cfg.writeback == 0, f"writeback {cfg.writeback} without FLUSH")

  On the matching target (its kind or its name) the test becomes a strict xfail that is satisfied **only**
  by a :class:`ClauseViolation`: the test must make its clause assertion with :func:`expect` or inside
  ``with clause_check():``. A timeout (``QueueTimeout``), a fixture error or any other exception stays an
  error, and a target that meets the expectation makes the run fail (XPASS strict), so a fix shows up.
* ``kind="must"`` (a deviation) needs a sentence with a MUST that binds the device or server: a sentence
  about what "the driver must" do is refused at import.
* ``component`` names what behaves so when it is not the device under test (e.g. ``"platform: i440FX host
  bridge"`` for a PCI master abort): the report attributes the behaviour to it.

The report (``reports/clauses-<target>.md/json``) counts test verdicts per kind (pass / fail / skip / not
met) and lists each known behaviour once, with the tests that observed it. ``--baseline`` ranks a clause
``fail < skip < deviation < should < policy < implementation-defined < erratum-reading < pass`` and fails the
run when any clause ranks lower than in the baseline.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

KINDS = ("must", "implementation-defined", "should", "policy", "erratum")
#: The verdict a test of each kind gets on a target known not to meet it (strict xfail).
NOT_MET = {
    "must": "deviation",
    "implementation-defined": "implementation-defined",
    "should": "should",
    "policy": "policy",
    "erratum": "erratum",
}


class ClauseViolation(AssertionError):
    """The target did not meet the statement the test checks (raised by :func:`expect`, :func:`clause_check`).

    The only exception that satisfies a :class:`Known` xfail: harness errors (timeouts, broken fixtures,
    protocol errors) are other exceptions and stay errors."""


def expect(condition: object, message: str) -> None:
    """The clause assertion of a test: raise :class:`ClauseViolation` with `message` unless `condition`."""
    if not condition:
        raise ClauseViolation(message)


@contextlib.contextmanager
def clause_check() -> Iterator[None]:
    """Plain `assert` statements inside the block are clause assertions (keep the block to the check itself:
    a harness assertion inside it would count too)."""
    try:
        yield
    except ClauseViolation:
        raise
    except AssertionError as err:
        raise ClauseViolation(str(err)) from err


_DRIVER_MUST = re.compile(r"\bdriver\s+(MUST|SHOULD|MAY)\b", re.IGNORECASE)
_MUST = re.compile(r"\bMUST\b|\bshall\b|\bmust\b")


class VerdictError(ValueError):
    """A verdict declaration that does not hold together (message names the field)."""


def check_declaration(kind: str, sentence: str, where: str) -> None:
    """A kind must be known and rest on a sentence; a deviation's sentence must bind the device or server."""
    if kind not in KINDS:
        raise VerdictError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if not sentence or not sentence.strip():
        raise VerdictError(f"{where}: sentence: a verdict of kind {kind!r} must quote the sentence it rests on")
    if kind == "must":
        if not _MUST.search(sentence):
            raise VerdictError(f"{where}: sentence: a deviation needs a MUST, and {sentence!r} has none")
        if _DRIVER_MUST.search(sentence) and not re.search(r"\b(device|server|host|function|bridge)\b.{0,40}"
                                                           r"\bMUST\b", sentence, re.IGNORECASE):
            raise VerdictError(f"{where}: sentence: a deviation needs a device-side MUST, not the driver's")


@dataclass(frozen=True)
class Known:
    """One behaviour of one target that does not meet the expectation of the tests declaring it."""

    target: str  #: target kind ("qemu") or name (from --targets-file) it applies to
    kind: str  #: one of KINDS: what the tests' expectation rests on
    behaviour: str  #: short stable id of the target behaviour (one entry per behaviour, shared by its tests)
    sentence: str  #: the statement the expectation rests on (for "must": the device-side MUST)
    reason: str  #: what the target does instead
    component: str = ""  #: what behaves so, where that is not the device under test (e.g. the platform)

    def __post_init__(self) -> None:
        check_declaration(self.kind, self.sentence, f"Known({self.behaviour})")
        if not self.behaviour or not self.reason or not self.target:
            raise VerdictError(f"Known({self.behaviour}): target, behaviour and reason are required")

    @property
    def verdict(self) -> str:
        return NOT_MET[self.kind]

    def applies_to(self, target_kind: str, target_name: str) -> bool:
        return self.target in (target_kind, target_name)

    def xfail(self) -> pytest.MarkDecorator:
        text = f"{self.verdict} [{self.behaviour}]: {self.reason} -- rests on: {self.sentence}"
        return pytest.mark.xfail(reason=text, strict=True, raises=ClauseViolation)

    def as_dict(self) -> dict[str, str]:
        return {"target": self.target, "kind": self.kind, "verdict": self.verdict, "behaviour": self.behaviour,
                "sentence": self.sentence, "reason": self.reason, "component": self.component}


def apply_known(node: pytest.Item, entry: Known, target_kind: str, target_name: str) -> None:
    """Record the entry's kind on the node and, on a matching target, make the test a strict xfail."""
    node.add_marker(pytest.mark.verdict(entry.kind, entry.sentence))
    if entry.applies_to(target_kind, target_name):
        node.add_marker(entry.xfail())
        node._known = entry  # type: ignore[attr-defined]


def known(request: pytest.FixtureRequest, target: object, *entries: Known) -> None:
    """Declare, from inside a test or fixture, the target behaviours known not to meet its expectation
    (for one parameter only, or once the test knows which path it takes). `target` is the `target`
    fixture (anything with `.kind` and `.name`)."""
    for entry in entries:
        apply_known(request.node, entry, getattr(target, "kind", ""), getattr(target, "name", ""))

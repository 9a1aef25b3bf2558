"""Shared fixtures for refvm's unit tests.

A dependency that `.ci/run` installs must never make a test skip in CI: there a missing piece is a broken
setup, so `require()` fails instead of skipping when ``CI=true``.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a dependency is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI setup is missing a dependency: {reason}")
    pytest.skip(reason)


def kvm_available() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@pytest.fixture
def kvm_required() -> None:
    """Tests that need a usable /dev/kvm."""
    require(kvm_available(), "/dev/kvm is missing or not accessible to this user")

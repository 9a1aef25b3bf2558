"""The one exception the loaders raise."""

from __future__ import annotations


class BootError(Exception):
    """An image cannot be booted. The message names the file and the problem, because it is shown
    to a user who passed ``-kernel FILE`` and must be able to act on it without a debugger."""

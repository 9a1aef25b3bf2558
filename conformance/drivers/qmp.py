"""QMP driver: a synchronous wrapper over the `qemu.qmp` library, the client libvirt-like tools use.

Tests use the real library so that "qemu.qmp works unchanged against refvm" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient


class QmpDriver:
    """One QMP connection with its own event loop, driven from synchronous tests."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self.client = QMPClient("conformance")
        self._events = self.client.events
        deadline = time.monotonic() + timeout
        while True:  # the target creates the socket file a moment before it listens on it
            try:
                if Path(self.path).exists():
                    self._run(self.client.connect(self.path))
                    break
            except ConnectError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"QMP socket {self.path} did not accept a connection within {timeout} s")
            time.sleep(0.01)

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))

    @property
    def greeting(self) -> dict[str, Any]:
        return dict(self.client.greeting._raw)  # type: ignore[union-attr]

    def execute(self, command: str, **arguments: Any) -> Any:
        return self._run(self.client.execute(command, arguments or None))

    def wait_event(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                event = await self._events.get()
                if event["event"] == name:
                    return dict(event)

        return self._loop.run_until_complete(asyncio.wait_for(wait(), timeout or self.timeout))

    def close(self) -> None:
        try:
            self._run(self.client.disconnect())
        except Exception:  # noqa: BLE001 - the target may already be gone (after `quit`)
            pass
        self._loop.close()

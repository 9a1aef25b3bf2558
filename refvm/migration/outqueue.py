"""The source's writes to the channel from a thread of their own, so that encoding the next RAM part (Python,
holding the GIL) overlaps the socket write of the last one (in the kernel, GIL released): at switchover the
two are both downtime (measured on kvm-pvm: 16 MiB of dirty pages, 25-30 ms of reading and encoding and 30-50
ms of writing, one after the other before this).

A write error is kept and raised by the next write or flush; after it the thread goes on taking (and dropping)
what is queued, so a producer never blocks on a full queue behind a dead writer.
"""
from __future__ import annotations

import queue
import threading
from typing import BinaryIO

DEPTH = 8  # queued writes (a RAM part is up to ~1 MiB; records come as head, payload, footer)


class QueuedWriter:
    """A write-only file object over ``out`` that writes in a background thread, in order."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._queue: queue.Queue[bytes | None] = queue.Queue(DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="migration-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            try:
                if data is None:
                    return
                if self._error is None:
                    self.out.write(data)
            except (OSError, ValueError) as err:  # ValueError: the channel was closed under it (cancel)
                self._error = err
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: bytes) -> int:
        """Queue ``data`` (copied unless it is bytes: the caller may reuse its buffer); raises a failed write."""
        self._raise()
        self._queue.put(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def flush(self) -> None:
        """Wait until everything queued is written, then flush the channel; raises a failed write."""
        self._queue.join()
        self._raise()
        self.out.flush()

    def stop(self) -> None:
        """End the thread once what is queued is done (written, or dropped after an error)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

"""The source's writes to the channel from a thread of their own, so that encoding the next RAM part (Python,
holding the GIL) overlaps the socket write of the last one (in the kernel, GIL released): at switchover the
two are both downtime (measured on kvm-pvm: 16 MiB of dirty pages, 25-30 ms of reading and encoding and 30-50
ms of writing, one after the other before this).

A gather list (write_gather: record heads and views of guest RAM, ram_parts.py) goes to the descriptor with
writev, IOV_MAX buffers a call, after what the file object buffered: the pages' only copy is the kernel's.

A write error is kept and raised by the next write or flush; after it the thread goes on taking (and dropping)
what is queued, so a producer never blocks on a full queue behind a dead writer.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import BinaryIO

IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024

DEPTH = 8  # queued writes (a RAM part is up to ~1 MiB; records come as head, payload, footer)


class QueuedWriter:
    """A write-only file object over ``out`` that writes in a background thread, in order."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._queue: queue.Queue[bytes | list[bytes | memoryview] | None] = queue.Queue(DEPTH)
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
                    if isinstance(data, list):
                        self._write_gather(data)
                    else:
                        self.out.write(data)
            except (OSError, ValueError) as err:  # ValueError: the channel was closed under it (cancel)
                self._error = err
            finally:
                self._queue.task_done()

    def _write_gather(self, items: list[bytes | memoryview]) -> None:
        """All of ``items`` in order: writev on the descriptor (partial writes resumed), else one joined write."""
        try:
            fd = self.out.fileno()
        except (AttributeError, OSError, ValueError):
            self.out.write(b"".join(items))
            return
        self.out.flush()
        start = 0
        while start < len(items):
            chunk = items[start:start + IOV_MAX]
            done = os.writev(fd, chunk)
            for item in chunk:  # whole buffers written; a partly written one goes on from where it stopped
                if done < len(item):
                    items[start] = memoryview(item)[done:]
                    break
                done -= len(item)
                start += 1

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: bytes) -> int:
        """Queue ``data`` (copied unless it is bytes: the caller may reuse its buffer); raises a failed write."""
        self._raise()
        self._queue.put(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def write_gather(self, items: list[bytes | memoryview]) -> None:
        """Queue a gather list as it is (its views must stay valid and unchanged-or-logged until written)."""
        self._raise()
        self._queue.put(items)

    def unbounded(self) -> None:
        """From now on queue without a bound (switchover: the producer encodes every remaining record, RAM parts
        as gather lists of views, while this thread writes; it never waits for room)."""
        with self._queue.mutex:
            self._queue.maxsize = 0

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

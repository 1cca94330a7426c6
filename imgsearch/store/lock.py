"""One writer per home: the lock `index`, `watch`, `import`, `migrate` and a query saving the vector cache take.

The lock is an flock on HOME/writer.lock, whose text says who holds it ("pid 123", or "pid 123 (saving the
vector index)"). A second writer is refused at once with one line naming the first. A query that rebuilt the
vector cache holds the lock only while it saves the file: a writer that meets it waits for that save (up to
SAVE_WAIT seconds) instead of failing; a save never waits for a writer, it is skipped (the writer saves a newer
file itself). Queries never take the lock: SQLite's WAL lets them read while a writer writes.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgsearch.errors import BusyError, StoreError

SAVING = "saving the vector index"  # the role of a query that rebuilt the cache
SAVE_WAIT = 30.0


class WriterLock:
    def __init__(self, home: Path):
        self.home = home

    @contextmanager
    def hold(self, role: str = "indexing") -> Iterator[None]:
        """Hold the lock for as long as the block runs; BusyError when another process writes."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            f = open(self.home / "writer.lock", "a+")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise StoreError(f"cannot write to {self.home} ({why}): indexing needs a writable home") from None
        with f:
            deadline = time.monotonic() + SAVE_WAIT
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    if SAVING not in holder or role == SAVING or time.monotonic() > deadline:
                        raise BusyError(f"{self.home} is being indexed by {holder}; wait for it to finish") from None
                    time.sleep(0.05)
            f.truncate(0)
            f.write(f"pid {os.getpid()}" if role == "indexing" else f"pid {os.getpid()} ({role})")
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)

"""Follow the filesystem: watchdog events become sets of changed paths, fed to the same pipeline as `index`.

watchdog's thread only records paths (a busy handler makes the kernel drop events). The watching
thread waits until the tree has been quiet for `watch.settle_seconds` and the changed files have
stopped growing, then runs the pipeline with the changed paths as roots: a path that is gone is
removed, a new or changed one embedded, and a move (old path gone, new path with the same content)
keeps its row and vector through the content-hash match. When events may have been lost (queue
overflow, an observer error) the next pass is a full reconciliation of the watched folders.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


@dataclass
class Changes:
    """Paths touched since the last pass; filled by watchdog's thread, drained by the watcher."""

    paths: set[str] = field(default_factory=set)
    lost: bool = False
    last_event: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)

    def add(self, *paths: str) -> None:
        with self.lock:
            self.paths.update(paths)
            self.last_event = time.monotonic()
        self.wake.set()

    def mark_lost(self) -> None:
        with self.lock:
            self.lost = True
            self.last_event = time.monotonic()
        self.wake.set()

    def take(self) -> tuple[set[str], bool]:
        with self.lock:
            paths, lost = self.paths, self.lost
            self.paths, self.lost = set(), False
            self.wake.clear()
        return paths, lost

    def quiet_for(self) -> float:
        with self.lock:
            return time.monotonic() - self.last_event


class _Handler(FileSystemEventHandler):
    def __init__(self, changes: Changes, wanted: Callable[[str], bool]):
        self.changes = changes
        self.wanted = wanted

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [os.fsdecode(event.src_path)]
        if event.dest_path:
            paths.append(os.fsdecode(event.dest_path))
        kept = [p for p in paths if event.is_directory or self.wanted(p)]
        if kept:
            self.changes.add(*kept)


class _OverflowLog(logging.Handler):
    """watchdog reports a kernel queue overflow only as a log warning; turn it into a reconciliation."""

    def __init__(self, changes: Changes):
        super().__init__(logging.WARNING)
        self.changes = changes

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.changes.mark_lost()


class Watcher:
    """Observes roots and calls `on_pass(paths)` with settled changes (`None` means: reconcile everything)."""

    def __init__(
        self,
        roots: Sequence[str],
        extensions: Iterable[str],
        exclude: Iterable[str],
        settle_seconds: float,
    ):
        self.roots = list(roots)
        self.extensions = {"." + e.lower().lstrip(".") for e in extensions}
        self.exclude = list(exclude)
        self.settle = settle_seconds
        self.changes = Changes()
        self.observer = Observer()
        self._log = _OverflowLog(self.changes)

    def wanted(self, path: str) -> bool:
        """An image path none of whose parts below its root is excluded (dot-files, .part, ~ ...)."""
        if os.path.splitext(path)[1].lower() not in self.extensions:
            return False
        root = next((r for r in self.roots if path == r or path.startswith(r.rstrip("/") + "/")), "")
        parts = os.path.relpath(path, root).split(os.sep) if root else [os.path.basename(path)]
        return not any(fnmatch.fnmatchcase(part, pat) for part in parts for pat in self.exclude)

    def start(self) -> None:
        logging.getLogger("watchdog").addHandler(self._log)
        handler = _Handler(self.changes, self.wanted)
        for root in self.roots:
            self.observer.schedule(handler, root, recursive=True)
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=10)
        logging.getLogger("watchdog").removeHandler(self._log)

    def next_pass(self, stop: threading.Event) -> set[str] | None:
        """Block until changes have settled; return the changed paths, None for a full reconciliation,
        or an empty set when stopped."""
        while not stop.is_set():
            if not self.observer.is_alive():
                self._restart()  # the observer died (an OSError in its thread): events were lost
                self.changes.take()
                return None
            if not self.changes.wake.wait(timeout=0.5):
                continue
            if self.changes.quiet_for() < self.settle or not self._files_stable():
                stop.wait(min(0.2, self.settle))
                continue
            paths, lost = self.changes.take()
            return None if lost else paths
        return set()

    def _files_stable(self) -> bool:
        """Sizes of the changed files do not move over a short interval (a slow copy is still growing)."""
        with self.changes.lock:
            paths = [p for p in self.changes.paths if os.path.isfile(p)]
        before = [_size(p) for p in paths]
        time.sleep(min(0.1, self.settle))
        return before == [_size(p) for p in paths]

    def _restart(self) -> None:
        self.observer = Observer()
        self.start()


def _size(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)

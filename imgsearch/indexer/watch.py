"""Follow the filesystem: watchdog events become sets of changed paths, fed to the same pipeline as `index`.

watchdog's thread only records paths (a busy handler makes the kernel drop events). The watching
thread waits until the tree has been quiet for `watch.settle_seconds` and the changed files have
stopped growing, then runs the pipeline with the changed paths as roots: a path that is gone is
removed, a new or changed one embedded, and a move (old path gone, new path with the same content)
keeps its row and vector through the content-hash match. When events may have been lost (queue
overflow, an observer error) the next pass is a full reconciliation of the watched folders.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from imgsearch.errors import WatchError
from imgsearch.indexer.scan import NameFilter

BURST_CHUNK = 500  # during a continuing burst, index settled files in chunks of this many


@dataclass
class Changes:
    """Paths touched, with the time of their last event; filled by watchdog's thread, drained by the watcher."""

    paths: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # a move's destination -> its source
    lost: bool = False
    last_event: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)

    def add(self, *paths: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.paths.update(dict.fromkeys(paths, now))
            self.last_event = now
        self.wake.set()

    def add_move(self, source: str, destination: str) -> None:
        with self.lock:
            self.sources[destination] = source
        self.add(source, destination)

    def with_sources(self, paths: list[str]) -> list[str]:
        """paths, and the source of each that a move made: the two halves of a move go in one pass."""
        with self.lock:
            extra = [self.sources[p] for p in paths if p in self.sources]
        return paths + [p for p in extra if p not in paths]

    def mark_lost(self) -> None:
        with self.lock:
            self.lost = True
            self.last_event = time.monotonic()
        self.wake.set()

    def settled(self, quiet: float) -> list[str]:
        """Paths with no event for `quiet` seconds."""
        cutoff = time.monotonic() - quiet
        with self.lock:
            return [p for p, t in self.paths.items() if t <= cutoff]

    def take(self, paths: list[str]) -> bool:
        """Remove these paths from the pending set; True if events were lost meanwhile (reconcile all)."""
        with self.lock:
            for p in paths:
                self.paths.pop(p, None)
                self.sources.pop(p, None)
            lost, self.lost = self.lost, False
            if not self.paths and not lost:
                self.wake.clear()
        return lost

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
        if len(kept) == 2:
            self.changes.add_move(*kept)
        elif kept:
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
    """Observes roots; `next_pass` hands out settled sets of changed paths (`None`: reconcile everything)."""

    def __init__(
        self,
        roots: Sequence[str],
        extensions: Iterable[str],
        exclude: Iterable[str],
        settle_seconds: float,
    ):
        self.roots = list(roots)
        self.names = NameFilter(extensions, exclude)
        self.settle = settle_seconds
        self.changes = Changes()
        self.observer = Observer()
        self._log = _OverflowLog(self.changes)

    def wanted(self, path: str) -> bool:
        """An image path none of whose parts below its root is excluded (dot-files, .part, ~ ...)."""
        if not self.names.is_image(path):
            return False
        root = next((r for r in self.roots if path == r or path.startswith(r.rstrip("/") + "/")), "")
        parts = os.path.relpath(path, root).split(os.sep) if root else [os.path.basename(path)]
        return not any(self.names.excluded(part) for part in parts)

    def start(self) -> None:
        log = logging.getLogger("watchdog")
        log.removeHandler(self._log)  # idempotent across restarts
        log.addHandler(self._log)
        handler = _Handler(self.changes, self.wanted)
        try:
            for root in self.roots:
                self.observer.schedule(handler, root, recursive=True)
            self.observer.start()
        except OSError as exc:
            hint = " (raise fs.inotify.max_user_watches)" if exc.errno in (errno.ENOSPC, errno.EMFILE) else ""
            raise WatchError(f"watch: cannot watch {', '.join(self.roots)}: {exc.strerror or exc}{hint}") from None

    def alive(self) -> bool:
        """The observer and every per-folder emitter thread still run (an OSError kills an emitter)."""
        return self.observer.is_alive() and all(e.is_alive() for e in self.observer.emitters)

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=10)
        logging.getLogger("watchdog").removeHandler(self._log)

    def next_pass(self, stop: threading.Event) -> set[str] | None:
        """Block until changes have settled; return the changed paths, None for a full reconciliation,
        or an empty set when stopped.

        When the tree has been quiet for `settle` seconds, every changed path whose size holds still
        goes. During a long burst (a big copy), complete files also go in chunks of BURST_CHUNK, so
        indexing keeps pace with the copy instead of waiting for its end.
        """
        while not stop.is_set():
            if not self.alive():
                self._restart()  # the observer died (an OSError in its thread): events were lost
                self.changes.take([])
                return None
            if not self.changes.wake.wait(timeout=0.5):
                continue
            if self.changes.lost and self.changes.quiet_for() >= self.settle:
                self.changes.take(self.changes.settled(0.0))
                return None
            if self.changes.quiet_for() >= self.settle:
                ready = self._stable(self.changes.settled(0.0))
            else:  # mid-burst: only files already complete; deletions wait for quiet. A moved file goes with
                # its source, so that both halves of a move are handled in one pass (no re-embed, row kept)
                ready = [p for p in self._stable(self.changes.settled(self.settle)) if os.path.isfile(p)]
                ready = self.changes.with_sources(ready) if len(ready) >= BURST_CHUNK else []
            if ready:
                lost = self.changes.take(ready)
                return None if lost else self._with_raws(ready)
            stop.wait(min(0.2, self.settle))
        return set()

    def _with_raws(self, paths: list[str]) -> set[str]:
        """The paths, and the RAW files beside any JPEG or HEIF among them: a twin that comes or goes decides
        whether its RAW is indexed on its own (indexer.scan), so the RAW is looked at again in the same pass."""
        raws = (r for p in paths for r in self.names.raws_beside(p) if self.wanted(r))
        return set(paths).union(raws)

    def _stable(self, paths: list[str]) -> list[str]:
        """Those paths whose size and mtime do not move over a short interval (a slow copy is still growing)."""
        before = {p: _size(p) for p in paths}
        time.sleep(min(0.1, self.settle))
        return [p for p in paths if _size(p) == before[p]]

    def _restart(self) -> None:
        with contextlib.suppress(Exception):
            self.observer.stop()
        self.observer = Observer()
        self.start()


def _size(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)

"""Walk folders for image files. Survives symlink loops, unreadable folders and files vanishing mid-walk."""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class FileEntry:
    """An image file on disk as the walk saw it."""

    path: str
    size: int
    mtime_ns: int


OnSkip = Callable[[str, str], None]


class NameFilter:
    """Which names are indexed: image extensions (case-insensitive), minus the exclude patterns (fnmatch)."""

    def __init__(self, extensions: Iterable[str], exclude: Iterable[str] = ()):
        self.extensions = {"." + e.lower().lstrip(".") for e in extensions}
        self.exclude = list(exclude)

    def is_image(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions

    def excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.exclude)


class Scanner:
    """Yields image files under roots; reports entries it cannot use through `on_skip(path, reason)`."""

    def __init__(
        self,
        extensions: Iterable[str],
        exclude: Iterable[str] = (),
        follow_symlinks: bool = True,
        on_skip: OnSkip | None = None,
    ):
        self.names = NameFilter(extensions, exclude)
        self.follow_symlinks = follow_symlinks
        self.on_skip = on_skip or (lambda path, reason: None)

    def scan(self, root: str) -> Iterator[FileEntry]:
        st = _stat(root)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self._walk(root, {(st.st_dev, st.st_ino)})
        elif self.names.is_image(os.path.basename(root)):
            yield from self._file(root, st)

    def _walk(self, folder: str, seen: set[tuple[int, int]]) -> Iterator[FileEntry]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.on_skip(folder, f"folder not readable ({exc.strerror})")
            return
        for entry in entries:
            if self.names.excluded(entry.name):
                continue
            yield from self._entry(entry, seen)

    def _entry(self, entry: os.DirEntry[str], seen: set[tuple[int, int]]) -> Iterator[FileEntry]:
        if entry.is_symlink() and not self.follow_symlinks:
            return
        try:
            st = os.stat(entry.path)
        except OSError as exc:  # gone since the folder was listed, or a link that leads nowhere
            if entry.is_symlink() and self.names.is_image(entry.name):
                self.on_skip(entry.path, "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link")
            return
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key not in seen:  # else a symlink loop, or a second link to a folder already walked
                seen.add(key)
                yield from self._walk(entry.path, seen)
        elif self.names.is_image(entry.name):
            yield from self._file(entry.path, st)

    def _file(self, path: str, st: os.stat_result) -> Iterator[FileEntry]:
        if not stat.S_ISREG(st.st_mode):
            self.on_skip(path, "not a regular file")
            return
        if not _utf8(path):
            self.on_skip(path, "file name is not valid UTF-8 (rename it to index it)")
            return
        yield FileEntry(path, st.st_size, st.st_mtime_ns)


def _utf8(path: str) -> bool:
    """Whether a path can be stored as text: names that are not UTF-8 decode to lone surrogates."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None

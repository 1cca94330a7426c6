"""Walk folders for image files. Survives symlink loops, unreadable folders and files vanishing mid-walk.

A camera set to RAW+JPEG writes both files under one name (IMG_0001.CR2, IMG_0001.JPG): one photo, which the
index holds once, through the JPEG (the picture as the camera rendered it; cheaper to read), with the RAW as its
original. So the walk does not list a RAW that has such a twin (TWIN_SUFFIXES, same stem, same folder) among
the files it indexes; when the twin goes, the RAW is listed, and indexed, again. The pairing is read from the
folder every time, never stored, so it cannot go stale.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from imgsearch.raw import SUFFIXES as RAW_SUFFIXES

# What a camera writes beside its RAW file: the JPEG, or the HEIF of newer Canon, Sony and Fujifilm bodies.
TWIN_SUFFIXES = frozenset({".jpg", ".jpeg", ".heic", ".heif", ".hif"})


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

    def twin(self, name: str) -> bool:
        """A name that makes a RAW of the same stem its original: an indexed JPEG or HEIF."""
        return os.path.splitext(name)[1].lower() in TWIN_SUFFIXES and self.is_image(name) and not self.excluded(name)

    def paired_raw(self, path: str) -> bool:
        """A RAW file with an indexed twin beside it (which stands for the photo in the index)."""
        folder, name = os.path.split(path)
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in RAW_SUFFIXES:
            return False
        try:
            names = os.listdir(folder or ".")
        except OSError:
            return False
        twins = (n for n in names if os.path.splitext(n)[0] == stem and self.twin(n))
        return any(os.path.isfile(os.path.join(folder, n)) for n in twins)

    def raw_of(self, path: str) -> str | None:
        """The RAW original beside an indexed twin (IMG_0001.JPG -> IMG_0001.CR2), or None."""
        stem, suffix = os.path.splitext(path)
        if suffix.lower() not in TWIN_SUFFIXES:
            return None
        raws = (stem + s for s in sorted(self.extensions) if s in RAW_SUFFIXES)
        return next((r for r in _spellings(raws) if os.path.isfile(r)), None)

    def raws_beside(self, path: str) -> list[str]:
        """The RAW files of the same stem in a twin's folder: whether they are indexed apart turns on the twin."""
        folder, name = os.path.split(path)
        if not self.twin(name):
            return []
        stem = os.path.splitext(name)[0]
        try:
            names = os.listdir(folder or ".")
        except OSError:
            return []
        found = (n for n in names if os.path.splitext(n)[0] == stem and os.path.splitext(n)[1].lower() in RAW_SUFFIXES)
        return [os.path.join(folder, n) for n in sorted(found)]


class Scanner:
    """Yields image files under roots; reports entries it cannot use through `on_skip(path, reason)`."""

    def __init__(
        self,
        extensions: Iterable[str],
        exclude: Iterable[str] = (),
        follow_symlinks: bool = True,
        on_skip: OnSkip | None = None,
        own_folders: Iterable[str] = (),
    ):
        self.names = NameFilter(extensions, exclude)
        self.follow_symlinks = follow_symlinks
        self.on_skip = on_skip or (lambda path, reason: None)
        # imgsearch's own folders (its home, thumbnails, model cache...) are never indexed, even inside a root:
        # known by device and inode while walking (whatever the path, links included), by real path for a root.
        found = [(os.path.realpath(f), _stat(f)) for f in own_folders]
        self.own = {(st.st_dev, st.st_ino) for _, st in found if st is not None}
        self.own_paths = [real for real, st in found if st is not None]

    def scan(self, root: str) -> Iterator[FileEntry]:
        st = _stat(root)
        if st is None or self._own(root):
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self._walk(root, {(st.st_dev, st.st_ino)})
        elif self.names.is_image(os.path.basename(root)) and not self.names.paired_raw(root):
            yield from self._file(root, st)

    def _walk(self, folder: str, seen: set[tuple[int, int]]) -> Iterator[FileEntry]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.on_skip(folder, f"folder not readable ({exc.strerror})")
            return
        twins = {os.path.splitext(e.name)[0] for e in entries if self.names.twin(e.name) and _is_file(e)}
        for entry in entries:
            if self.names.excluded(entry.name):
                continue
            stem, suffix = os.path.splitext(entry.name)
            if stem in twins and suffix.lower() in RAW_SUFFIXES:
                continue  # the twin stands for this photo
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
            if key not in seen and key not in self.own:  # else a loop, a second link to it, or imgsearch's own
                seen.add(key)
                yield from self._walk(entry.path, seen)
        elif self.names.is_image(entry.name):
            yield from self._file(entry.path, st)

    def _own(self, root: str) -> bool:
        real = os.path.realpath(root)
        return any(real == own or real.startswith(own.rstrip(os.sep) + os.sep) for own in self.own_paths)

    def _file(self, path: str, st: os.stat_result) -> Iterator[FileEntry]:
        if not stat.S_ISREG(st.st_mode):
            self.on_skip(path, "not a regular file")
            return
        if not _utf8(path):
            self.on_skip(path, "file name is not valid UTF-8 (rename it to index it)")
            return
        yield FileEntry(path, st.st_size, st.st_mtime_ns)


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _spellings(paths: Iterable[str]) -> Iterator[str]:
    """Each path with its suffix as written in the settings (lower case) and in upper case, as cameras write it."""
    for path in paths:
        stem, suffix = os.path.splitext(path)
        yield path
        if suffix.upper() != suffix:
            yield stem + suffix.upper()


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

"""Reading a file a user's folder holds, safely: one function for image files and sidecars alike.

A path that was a photo a moment ago can be a FIFO (opening it for reading would wait for a writer forever),
a symlink to a device (/dev/zero never ends), or a file of gigabytes. Each is refused with a reason before it
is read in full. Standard library only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable


class Unreadable(Exception):
    """The file cannot be used; the message is the reason (one line)."""


def read_regular(
    path: str, max_bytes: int | None = None, check_head: Callable[[bytes, int], str | None] | None = None
) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file and its stat. FileNotFoundError when it (or a folder on its path) is gone;
    Unreadable when it cannot be read, is not a regular file, is larger than max_bytes, or check_head(first 4 KB,
    size) gives a reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except OSError as exc:
        raise Unreadable(f"cannot read file ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # checked before a file object wraps it: a folder cannot be one
        os.close(fd)
        raise Unreadable("not a regular file")
    with os.fdopen(fd, "rb") as f:
        if max_bytes is not None and st.st_size > max_bytes:
            raise Unreadable(_too_large(st.st_size, max_bytes))
        try:
            data = f.read(4096)
            problem = check_head(data, st.st_size) if check_head is not None else None
            if problem:
                raise Unreadable(problem)
            data += f.read(-1 if max_bytes is None else max_bytes + 1 - len(data))
        except OSError as exc:
            raise Unreadable(f"cannot read file ({exc.strerror or exc})") from None
    if max_bytes is not None and len(data) > max_bytes:  # it grew while it was read
        raise Unreadable(_too_large(len(data), max_bytes))
    return data, st


def _too_large(size: int, limit: int) -> str:
    return f"too large ({size >> 20} MB; at most {limit >> 20} MB is read)"

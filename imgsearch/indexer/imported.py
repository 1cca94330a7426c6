"""Files named by imported embeddings, as the indexer would record them: the same stat, hash and names.

An imported row is only worth anything if a later `imgsearch index` of its folder takes it for one of its
own: the same path (absolute, the folder's symlinks resolved as `index` resolves the folders it is given),
size and mtime from the open file, the same content hash, and only names the scan would list.
"""

from __future__ import annotations

import os

from imgsearch import images
from imgsearch.errors import ImageDecodeError
from imgsearch.indexer.scan import NameFilter
from imgsearch.raw import is_raw
from imgsearch.store.exchange import LocalFile


def local_path(raw: str, map_prefix: tuple[str, str] | None = None) -> str:
    """Where an image_path of another machine is here: its prefix swapped, made absolute against the
    current folder, its folder's symlinks resolved (the file's own name is kept, as the scan keeps it)."""
    if map_prefix is not None:
        old, new = map_prefix[0].rstrip("/") or "/", map_prefix[1]
        if raw == old or raw.startswith(old if old.endswith("/") else old + "/"):
            raw = new.rstrip("/") + "/" + raw[len(old) :].lstrip("/")
    path = os.path.abspath(os.path.expanduser(raw))
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def inspect(
    raw: str,
    need_size: bool,
    names: NameFilter,
    map_prefix: tuple[str, str] | None = None,
    max_bytes: int | None = None,
) -> LocalFile:
    """The file an imported row names, read and hashed as the indexer reads it; its pixel size (from the
    header, nothing decoded) when need_size. Never raises: a missing file or a reason comes back instead."""
    if not raw:
        return LocalFile(raw, error="the row has no image_path")
    path = local_path(raw, map_prefix)
    name = os.path.basename(path)
    if not names.is_image(name) or names.excluded(name):
        return LocalFile(path, error="not a file `index` would list (index.extensions, index.exclude)")
    try:
        found = images.read_file(path, max_bytes)
    except FileNotFoundError:
        return LocalFile(path, missing=True)
    except ImageDecodeError as exc:
        return LocalFile(path, error=str(exc))
    width, height = images.header_size(found.data, is_raw(name)) if need_size else (0, 0)
    if need_size and not width:
        return LocalFile(path, error="not an image (its header cannot be read)")
    return LocalFile(path, found.size, found.mtime_ns, found.digest, width, height, found.generated)

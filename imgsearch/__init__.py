"""imgsearch: local-first image search with CLIP, FAISS and SQLite.

The Python API is the Library class; the CLI is a thin layer over it.

    from imgsearch import Library
    with Library.open() as lib:
        lib.index(["~/Pictures"])
        hits = lib.query("a dog on the beach", k=5)
"""

from imgsearch.app import Library
from imgsearch.config import Settings, load_settings
from imgsearch.errors import ImgSearchError
from imgsearch.types import Hit, IndexReport, Skipped, Status
from imgsearch.version import __version__

__all__ = [
    "Hit",
    "ImgSearchError",
    "IndexReport",
    "Library",
    "Settings",
    "Skipped",
    "Status",
    "__version__",
    "load_settings",
]

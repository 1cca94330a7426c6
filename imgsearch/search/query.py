"""Queries: text, images, or weighted sums of both, as rclip writes them.

    "2:golden retriever" + ./pool.jpg - fruit

Terms are separated by ` + ` or ` - ` (with spaces, so "t-shirt" stays one term); a term may start
with a weight `W:`; a term that names an existing image file is an image. The query vector is the
weighted sum of the terms' unit embeddings, normalised again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from imgsearch import images
from imgsearch.errors import ImageDecodeError, UsageError
from imgsearch.raw import SUFFIXES as RAW_SUFFIXES
from imgsearch.raw import is_raw
from imgsearch.types import QueryTerm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".hif"}
IMAGE_SUFFIXES |= {".avif", ".jxl", *RAW_SUFFIXES}
MAX_TERMS = 16  # each term is a model call when new: a query of hundreds would hold the model for seconds
_SPLIT = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^([0-9]*\.?[0-9]+):(?!\d)(.+)$", re.DOTALL)  # "10:00 meeting" is no weight


def parse(text: str, files: bool = True) -> list[QueryTerm]:
    """Split a query string into signed, weighted terms. Raises UsageError on an empty term.

    With files=False no term is ever taken for a file (nor looked up on disk): for text from the network.
    """
    text = text.strip()
    sign = 1.0
    if text[:2] in ("+ ", "- "):
        sign, text = (-1.0 if text[0] == "-" else 1.0), text[2:]
    parts = _SPLIT.split(text)
    if len(parts) > 2 * MAX_TERMS - 1:
        raise UsageError(f"query: at most {MAX_TERMS} terms (this one has {(len(parts) + 1) // 2})")
    terms = [_term(parts[0], sign, files)]
    for op, raw in zip(parts[1::2], parts[2::2], strict=True):
        terms.append(_term(raw, -1.0 if op == "-" else 1.0, files))
    return terms


def _term(raw: str, sign: float, files: bool) -> QueryTerm:
    raw = raw.strip().strip("'\"").strip()
    weight = 1.0
    match = _WEIGHT.match(raw)
    if match:
        weight, raw = float(match.group(1)), match.group(2).strip().strip("'\"").strip()
        if not math.isfinite(weight):
            raise UsageError(f"query: weight {_shown(match.group(1))} is too large")
    if not raw:
        raise UsageError("query: empty term (write terms like 'a cat + 2:sofa - dog')")
    if not files:
        return QueryTerm("text", raw, sign * weight)
    named_image = Path(raw).suffix.lower() in IMAGE_SUFFIXES
    path = _expand(raw)
    if path is not None and (named_image or raw.startswith(("/", "./", "../", "~"))) and _is_file(path):
        return QueryTerm("image", str(path.resolve()), sign * weight)
    if named_image:
        raise UsageError(f"query: no such image file: {_shown(raw)}")
    return QueryTerm("text", raw, sign * weight)


def _expand(raw: str) -> Path | None:
    try:
        return Path(raw).expanduser()
    except (RuntimeError, ValueError):  # "~word" where no user is called "word": not a path
        return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: no file of that name can exist
        return False


def _shown(raw: str) -> str:
    """A term as a one-line message shows it: as typed, unless it holds control characters; cut short."""
    text = raw if raw.isprintable() else repr(raw)
    return text if len(text) <= 100 else text[:97] + "..."


class Encoder(Protocol):
    """What a query needs of a model: its text and image embeddings."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def vector(terms: Sequence[QueryTerm], embedder: Encoder, max_pixels: int) -> np.ndarray:
    """The unit query vector: the weighted sum of the terms' embeddings."""
    if not terms:
        raise UsageError("query: nothing to search for (give text, an image, or both)")
    texts = [t for t in terms if t.kind == "text"]
    pictures = [t for t in terms if t.kind == "image"]
    parts = []
    if texts:
        parts.append((np.array([t.weight for t in texts]), embedder.embed_texts([t.value for t in texts])))
    if pictures:
        loaded = [load(t.value, max_pixels) for t in pictures]
        parts.append((np.array([t.weight for t in pictures]), embedder.embed_images(loaded)))
    total = sum((w[:, None] * e).sum(axis=0) for w, e in parts)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise UsageError("query: the terms cancel out; nothing is left to search for")
    return (total / norm).astype(np.float32)


def load(path: str, max_pixels: int, command: str = "query") -> Image.Image:
    """An image file given on the command line, or a one-line UsageError saying why it cannot be used."""
    try:
        found = images.read_file(path, images.size_limit(max_pixels))
        return images.decode(found.data, max_pixels, raw_file=is_raw(path))
    except FileNotFoundError:
        raise UsageError(f"{command}: cannot read image {path}: no such file") from None
    except ImageDecodeError as exc:
        raise UsageError(f"{command}: cannot use image {path}: {exc}") from None

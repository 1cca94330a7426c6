"""Copies of one picture: a perceptual hash per image, grouping by neighbour search, and which copy is best.

Pure core: no SQL, no CLI. The indexer calls `picture_hash` on the pixels it already decoded for the model (upright,
RGB, reduced to a shorter side of about twice the model's input), stores the bytes, and `dupes` hands them all back
to `copy_groups`; `rank_copies` orders a group's files by what the index knows of each.

The hash (HASH_BYTES = 44 bytes):

    bytes  0..31  shape: 256 bits, a DCT hash of the luma (pHash at 4x the usual size, as Meta's PDQ): the picture is
                  box-averaged to 64x64, its 2-D DCT taken, and each of the 16x16 lowest frequencies (DC included)
                  set to 1 where it is above their median. Bits are packed most significant first (np.packbits).
    bytes 32..43  tone: the mean Y, Cb + 128 and Cr + 128 (BT.601, 0..255) of each quarter of the picture (2x2 cells,
                  row by row: Y, Cb, Cr for the top-left cell, then top-right, bottom-left, bottom-right).

Two pictures are copies when their shapes are within MAX_SHAPE_DISTANCE bits (Hamming) and no tone value differs
by more than MAX_TONE_DISTANCE levels. Why this design, from measurements on the sample photos (benchmarks/
bench_dupes.py redoes them; tests/test_dupes_core.py checks the decisions):

- 256 bits, not pHash's 64. Over the 12 samples, their copies (JPEG q=50, half and quarter size, PNG->WebP->HEIC, 1%
  and 2% crops, EXIF turns) and 180 distinct pictures cut from them (crops 30-50% apart), the 64-bit hash put copies
  up to 16 bits from their original and distinct pictures from 16 bits apart (mean 31.4, sd 4.1): the two touch, and
  a threshold would sit under 4 sd below the mean distance, which at 100k images (5e9 pairs) makes thousands of
  false pairs. 256 bits put copies at most 48 bits away (2% crops of a brick wall; re-encodes, conversions and
  half-size copies move at most 12 bits, quarter-size ones 24) and distinct pictures at least 72 (a 30% crop of the
  rocket; mean 127, sd 8.2, about what independent bits give): the threshold, 60, sits 8 sd below the mean. A 64x64
  box average, not 32x32, keeps frequencies 8-15 free of aliasing (32x32 put copies up to 56 bits away).
- The shape bits are blind to colour and to brightness and contrast: each frequency's sign against the median is
  all they keep. So a grey-scale copy, a tinted or a brightened edit would hash the same; the tone cells catch them.
  A grey-scale copy is an edit, not a copy: it has lost what the colour picture holds and was made on purpose, and
  as a copy it would be collapsed out of search results, or tagged a duplicate of (or as the one to keep over) a
  picture it cannot stand in for. Its Cb and Cr sit at 128, where in the colour samples some cell is 18 to 50
  levels away; copies moved a tone value by at most 7 (2% crops; resizes and conversions by at most 3). So a
  picture that is already nearly grey (no cell's chroma more than MAX_TONE_DISTANCE from neutral) and its
  grey-scale copy are copies: to the eye they are the same picture.
- A mirror image is not a copy: it is an edit (text reads backwards, a face is not the face its owner sees), and
  its shape hash is as far as another picture's (120 to 132 bits on the samples), since mirroring flips the sign
  of every odd horizontal frequency. Finding mirrors would take a second search with flipped hashes.
- A flat picture has no shape: its frequencies are rounding noise. Coefficients within FLAT of zero count as zero,
  so flat pictures hash alike and their tone (black, white, red...) tells them apart.

Grouping finds every pair within the shape threshold with faiss's binary flat index (SIMD popcounts in C: about
4 s for 100k hashes on 2 cores, each pair measured once). It is exact; multi-index hashing, which faiss and
BK-trees offer, cannot prune at a radius of a quarter of the bits. The index is built on the fly and never stored,
unlike the FAISS cache of store/vectors.py. The pairs whose tone agrees are grouped as stars, not connected
components: the picture with the most copies leads a group of itself and its copies not yet grouped, then the next.
A component would chain different pictures through intermediate ones (a burst of shots, each within the threshold
of the next, is not one picture); a star keeps every member within the threshold of its leader. A copy out of its
leader's reach stays ungrouped, which errs towards keeping files, never towards calling a picture a copy of another.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from imgsearch.raw import SUFFIXES as RAW_SUFFIXES

SIDE = 64  # the picture is averaged to SIDE x SIDE before the DCT
LOW = 16  # the LOW x LOW lowest frequencies become the shape bits
SHAPE_BITS = LOW * LOW
SHAPE_BYTES = SHAPE_BITS // 8
TONE_BYTES = 12  # 2x2 cells x (Y, Cb, Cr)
HASH_BYTES = SHAPE_BYTES + TONE_BYTES
MAX_SHAPE_DISTANCE = 60  # of 256 bits: copies measured at <= 48, distinct pictures at >= 72
MAX_TONE_DISTANCE = 12  # of 255 levels, per cell and channel: copies measured at <= 7, grey copies at >= 18
SAMPLED_SIDE = 320  # pictures with a shorter side of twice this or more are sampled before averaging
FLAT = 1e-6  # DCT coefficients this close to 0 are rounding noise (a ripple of one grey level makes 45)

# Rows searched at a time, against themselves and the rows after them. Bounds faiss's result buffers: a thousand
# pictures alike (black frames) make _BATCH x 1000 results.
_BATCH = 1024


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II as a matrix: D = M @ X @ M.T is the 2-D DCT of X."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m[:LOW]  # only the frequencies kept: D[:LOW, :LOW] = M[:LOW] @ X @ M[:LOW].T


_DCT = _dct_matrix(SIDE)
_YCBCR = np.array(  # BT.601 full range, as JPEG uses: rows are R, G, B weights of Y, Cb, Cr
    [[0.299, -0.168736, 0.5], [0.587, -0.331264, -0.418688], [0.114, 0.5, -0.081312]]
)
_LUMA = _YCBCR[:, 0]
_TONE_OFFSET = np.array([0.0, 128.0, 128.0])


def picture_hash(image: Image.Image) -> bytes:
    """The HASH_BYTES-byte perceptual hash of an upright picture (see the module docstring for its layout).

    Costs a box average of the picture to 64x64 and two 16x64 matrix products: about 0.5 ms for a 597x448 picture on
    a Zen 4 core. A box average touches every pixel (1.2 ms for the 1000x750 that a 12 MP JPEG is draft-decoded to,
    20 ms for a full 12 MP picture, which is how HEIC, PNG and WebP reach the indexer), so a picture whose shorter
    side is 2 x SAMPLED_SIDE or more is first sampled every k-th pixel, k = shorter side // SAMPLED_SIDE: any
    picture then costs about as much as a 448-pixel one. Measured on the samples enlarged to 12 MP (with a sensor's
    noise), against their JPEG, half-size, 1024- and 448-pixel and 2%-cropped copies: the largest distance of a copy
    to its original stayed within 4 bits of the full average's, except a brick wall's (50 bits against 42: a regular
    pattern aliases).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    k = min(w, h) // SAMPLED_SIDE
    if k >= 2:
        image = image.resize((w // k, h // k), Image.Resampling.NEAREST)
    small = np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float64)
    return _shape_bits(_product("ijc,c->ij", small, _LUMA)) + _tone(small)


def _product(spec: str, *operands: np.ndarray) -> np.ndarray:
    """A small matrix product in numpy's own loops, never BLAS: the hash runs on the decode threads, where BLAS's
    worker threads would spin on cores the model is using (measured: 5% of `index` throughput, against 1% here)."""
    return np.einsum(spec, *operands, optimize=False)


def _shape_bits(luma: np.ndarray) -> bytes:
    coefficients = _product("fj,gj->fg", _product("fi,ij->fj", _DCT, luma), _DCT).ravel()
    coefficients[np.abs(coefficients) < FLAT] = 0.0
    return np.packbits(coefficients > np.median(coefficients)).tobytes()


def _tone(rgb: np.ndarray) -> bytes:
    half = SIDE // 2
    cells = _product("rsc,cy->rsy", rgb.reshape(2, half, 2, half, 3).mean(axis=(1, 3)), _YCBCR) + _TONE_OFFSET
    return np.clip(np.rint(cells), 0, 255).astype(np.uint8).tobytes()


def hash_array(hashes: Sequence[bytes]) -> np.ndarray:
    """Stored hashes as one (N, HASH_BYTES) uint8 array, the input of `copy_pairs` and `copy_groups`."""
    if any(len(h) != HASH_BYTES for h in hashes):
        raise ValueError(f"a picture hash is {HASH_BYTES} bytes")
    return np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), HASH_BYTES)


def shape_distance(a: bytes, b: bytes) -> int:
    """Hamming distance between two hashes' shape bits (0..256)."""
    x = np.frombuffer(a[:SHAPE_BYTES], np.uint8) ^ np.frombuffer(b[:SHAPE_BYTES], np.uint8)
    return int(np.unpackbits(x).sum())


def tone_distance(a: bytes, b: bytes) -> int:
    """The largest difference between two hashes' tone values (0..255)."""
    x = np.frombuffer(a[SHAPE_BYTES:HASH_BYTES], np.uint8).astype(np.int16)
    y = np.frombuffer(b[SHAPE_BYTES:HASH_BYTES], np.uint8).astype(np.int16)
    return int(np.abs(x - y).max())


def is_copy(a: bytes, b: bytes) -> bool:
    """Whether two hashes are of the same picture: the decision `copy_pairs` makes for each pair."""
    return shape_distance(a, b) <= MAX_SHAPE_DISTANCE and tone_distance(a, b) <= MAX_TONE_DISTANCE


def copy_pairs(
    hashes: np.ndarray, max_shape: int = MAX_SHAPE_DISTANCE, max_tone: int = MAX_TONE_DISTANCE
) -> np.ndarray:
    """Every pair (i, j), i < j, of rows of a (N, HASH_BYTES) uint8 array that are copies: (P, 2) int64, by i then j.

    Exact: each block of rows is searched against itself and the rows after it only, so each pair is measured once.
    """
    shapes = np.ascontiguousarray(_checked(hashes)[:, :SHAPE_BYTES])
    found = [_pairs_from(shapes, start, max_shape) for start in range(0, len(shapes), _BATCH)]
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    tones = hashes[:, SHAPE_BYTES:].astype(np.int16)
    agree = np.abs(tones[pairs[:, 0]] - tones[pairs[:, 1]]).max(axis=1, initial=0) <= max_tone
    return pairs[agree]


def _checked(hashes: np.ndarray) -> np.ndarray:
    if hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES or hashes.dtype != np.uint8:
        raise ValueError(f"hashes must be a (N, {HASH_BYTES}) uint8 array, not {hashes.dtype} {hashes.shape}")
    return hashes


def any_copy(
    hashes: np.ndarray, rows: np.ndarray, max_shape: int = MAX_SHAPE_DISTANCE, max_tone: int = MAX_TONE_DISTANCE
) -> bool:
    """Whether any of `rows` (indices into a (N, HASH_BYTES) array) has a copy among all the others: the check that
    lets a few new pictures skip deciding every group again when none of them has a copy."""
    import faiss  # heavy, and only `dupes` needs it

    hashes = _checked(hashes)
    shapes = np.ascontiguousarray(hashes[:, :SHAPE_BYTES])
    index = faiss.IndexBinaryFlat(SHAPE_BITS)
    index.add(shapes)
    limits, _, found = index.range_search(shapes[rows], max_shape + 1)  # faiss: distance < radius
    counts: np.ndarray = np.diff(np.asarray(limits, dtype=np.int64))
    queries = np.repeat(np.asarray(rows, dtype=np.int64), counts)
    found = found.astype(np.int64)
    other = found != queries
    tones = hashes[:, SHAPE_BYTES:].astype(np.int16)
    gaps = np.abs(tones[queries[other]] - tones[found[other]])
    return bool((gaps.max(axis=1, initial=0) <= max_tone).any())


def _pairs_from(shapes: np.ndarray, start: int, max_shape: int) -> np.ndarray:
    """The pairs (i, j), start <= i < start + _BATCH, i < j, within max_shape bits."""
    import faiss  # heavy, and only `dupes` needs it

    index = faiss.IndexBinaryFlat(SHAPE_BITS)
    index.add(shapes[start:])
    limits, _, found = index.range_search(shapes[start : start + _BATCH], max_shape + 1)  # faiss: distance < radius
    counts: np.ndarray = np.diff(np.asarray(limits, dtype=np.int64))
    rows = np.repeat(np.arange(len(counts)), counts)
    later = found > rows
    return np.stack([rows[later], found[later]], axis=1).astype(np.int64) + start


def copy_groups(
    hashes: np.ndarray, max_shape: int = MAX_SHAPE_DISTANCE, max_tone: int = MAX_TONE_DISTANCE
) -> list[list[int]]:
    """Groups of row indices (two or more each) that are copies of one picture, each group's leader first.

    Stars, not connected components (see the module docstring): every member is a copy of its group's leader. The
    picture with the most copies leads first (ties: the lower index), and takes all its copies not yet in a group;
    groups come in their leaders' order, and members follow their leader in index order.
    """
    pairs = copy_pairs(hashes, max_shape, max_tone)
    return star_groups(len(hashes), pairs)


def star_groups(count: int, pairs: np.ndarray) -> list[list[int]]:
    """Star groups of `count` items from their (P, 2) pairs of copies."""
    if len(pairs) == 0:
        return []
    ends = np.concatenate([pairs[:, 0], pairs[:, 1]])
    others = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((others, ends))
    ends, others = ends[order], others[order]
    starts = np.searchsorted(ends, np.arange(count + 1))
    degree = np.diff(starts)
    taken = np.zeros(count, bool)
    groups = []
    for leader in np.lexsort((np.arange(count), -degree))[: np.count_nonzero(degree)]:
        if taken[leader]:
            continue
        near = others[starts[leader] : starts[leader + 1]]
        near = near[~taken[near]]
        if len(near):
            taken[near] = taken[leader] = True
            groups.append([int(leader), *near.tolist()])
    return groups


# Which copy is best ---------------------------------------------------------------------------------------------

CAMERA_FORMATS = frozenset({".jpg", ".jpeg", ".heic", ".heif", ".hif"})  # what cameras and phones write


@dataclass(frozen=True)
class Candidate:
    """One file of a group of copies, as the index knows it. `camera`: the make and model its header names (what a
    camera or phone writes, and what an export may keep); `taken`: the capture time, 'YYYY-MM-DDTHH:MM:SS', when the
    header (or name) tells it; `mtime`: the file's modification time (seconds since the epoch)."""

    path: str
    width: int
    height: int
    camera: str | None = None
    taken: str | None = None
    mtime: float | None = None

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.path)[1].lower()

    @property
    def origin(self) -> int:
        """How likely this file is what the camera wrote: 3 RAW, 2 a camera format naming a camera, 1 a camera
        format with no camera in its header (re-saved, or stripped), 0 anything else (PNG, WebP, TIFF...)."""
        if self.suffix in RAW_SUFFIXES:
            return 3
        if self.suffix in CAMERA_FORMATS:
            return 2 if self.camera else 1
        return 0


@dataclass(frozen=True)
class Ranked:
    """A candidate in its place, with why it is not the best ("" for the best copy)."""

    candidate: Candidate
    reason: str


def rank_copies(candidates: Sequence[Candidate]) -> list[Ranked]:
    """The copies best first: most pixels, then the most original file (RAW, then a camera format whose header
    names a camera, then one without, then any other format), then the oldest capture time, then the oldest mtime
    (unknown times last), then the path. Each other copy says where it lost to the best one."""
    ordered = sorted(candidates, key=_rank_key)
    if not ordered:
        return []
    best = ordered[0]
    return [Ranked(best, "")] + [Ranked(c, _reason(c, best)) for c in ordered[1:]]


def _rank_key(c: Candidate) -> tuple[int, int, bool, str, bool, float, str]:
    return (
        -c.width * c.height,
        -c.origin,
        c.taken is None,
        c.taken or "",
        c.mtime is None,
        c.mtime or 0.0,
        c.path,
    )


def _reason(c: Candidate, best: Candidate) -> str:
    """Why c comes after best: the first criterion where it is behind."""
    if c.width * c.height != best.width * best.height:
        return f"smaller: {c.width}x{c.height} vs {best.width}x{best.height}"
    if c.origin != best.origin:
        lost = "not the RAW" if c.origin == 2 else "re-encoded"  # a camera's own JPEG or HEIC beside its RAW
        return f"{lost}: {_describe(c)} vs {_describe(best)}"
    if c.taken != best.taken:
        return f"capture time unknown vs {best.taken}" if c.taken is None else f"newer: taken {c.taken} vs {best.taken}"
    if c.mtime != best.mtime:
        if c.mtime is None:
            return f"modification time unknown vs {_when(best.mtime)}"
        return f"newer: modified {_when(c.mtime)} vs {_when(best.mtime)}"
    return f"same size, format and times: the path sorts after {best.path}"


_FORMAT_NAMES = {".jpg": "JPEG", ".jpeg": "JPEG", ".heif": "HEIC", ".hif": "HEIC", ".tif": "TIFF"}


def _describe(c: Candidate) -> str:
    kind = "RAW" if c.suffix in RAW_SUFFIXES else _FORMAT_NAMES.get(c.suffix, c.suffix.lstrip(".").upper() or "?")
    if c.origin == 2:
        return f"{kind} from {c.camera}"
    return f"{kind} without camera" if c.origin == 1 else kind


def _when(mtime: float | None) -> str:
    if mtime is None:
        return "unknown"
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

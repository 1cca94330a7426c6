"""Near-identical shots (bursts, the same scene a moment later) by CLIP distance, in the model's own scale.

What `dupes --similar` adds to the copies the pixel hashes find. CLIP's cosine has no fixed meaning across models:
two unrelated pictures may sit near 0.45 with one model and at 0.9998 with some random weights. So the distance is
measured against the library's own: a pair is similar when its distance (1 - cosine) is at most RELATIVE times the
median distance between two of its pictures drawn at random (0.1: ten times closer than a typical pair; at a
typical cosine of 0.45 that is 0.945 or more, at 0.9998 it is 0.99998). Pairs are found by an exact range search
(faiss), grouped as stars around the picture with the most neighbours (as copies are, imgsearch.dupes: no chains).
"""

from __future__ import annotations

import numpy as np

from imgsearch import dupes

RELATIVE = 0.1
SAMPLE = 4096  # random pairs that measure the library's typical distance
_BATCH = 2048


def groups(vectors: np.ndarray, relative: float = RELATIVE, seed: int = 0) -> list[list[int]]:
    """Star groups of row indices of unit vectors (N, dim) whose distance is within `relative` of the typical."""
    n = len(vectors)
    if n < 2:
        return []
    threshold = 1.0 - relative * typical_distance(vectors, seed)
    return dupes.star_groups(n, pairs(vectors, threshold))


def typical_distance(vectors: np.ndarray, seed: int = 0) -> float:
    """The median of 1 - cosine over random pairs of distinct rows."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(vectors), SAMPLE)
    b = (a + rng.integers(1, len(vectors), SAMPLE)) % len(vectors)
    return float(np.median(1.0 - np.einsum("ij,ij->i", vectors[a], vectors[b])))


def pairs(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Every pair (i, j), i < j, whose cosine is at least threshold: (P, 2) int64."""
    import faiss

    data = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    found = []
    for start in range(0, len(data), _BATCH):
        limits, _, ids = index.range_search(data[start : start + _BATCH], threshold)
        bounds = np.asarray(limits, dtype=np.int64)  # faiss gives size_t: numpy will not repeat by those
        counts = bounds[1:] - bounds[:-1]
        rows = np.repeat(np.arange(start, start + len(limits) - 1), counts)
        later = ids > rows
        found.append(np.stack([rows[later], ids[later].astype(np.int64)], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)

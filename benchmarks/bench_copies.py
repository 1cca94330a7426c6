#!/usr/bin/env python3
"""Duplicates at library scale, through the index as `imgsearch` uses it: deciding the groups of copies over
100k images (what the end of an `index` run does), `imgsearch dupes` listing them, and what collapsing copies
adds to a search; and what hashing adds to indexing, against the decode it follows, at the sizes `index` decodes.

    python benchmarks/bench_copies.py                  # 100k rows, 2% of them in planted groups of copies
    python benchmarks/bench_copies.py --rows 200000

The rows are written straight into a SQLite database as `index` leaves them (a pixel hash each; random hashes,
which sit ~128 bits apart like distinct pictures, plus planted groups whose members differ from their original
by up to 40 of 256 shape bits and a few colour levels, as real copies do), with clustered vectors for the search.
The hash-cost part decodes a 12 MP and a 2 MP camera JPEG the way `index` does (JPEG draft to twice a 224-pixel
model input) and hashes the result. benchmarks/bench_dupes.py times the hash search itself on bare arrays.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import insert

from imgsearch import Library, dupes, images, load_settings
from imgsearch.embed.cpu import cpu_info
from imgsearch.indexer import copies
from imgsearch.store.repository import NewImage, Store, _row_values
from imgsearch.store.schema import images as images_table


def planted_hashes(n: int, share: float, rng: np.random.Generator) -> tuple[list[bytes], int]:
    """n hashes, `share` of them in groups of 2-4 copies. Returns (hashes, groups planted)."""
    shapes = rng.integers(0, 256, (n, dupes.SHAPE_BYTES), dtype=np.uint8)
    tones = rng.integers(0, 256, (n, dupes.TONE_BYTES), dtype=np.uint8)
    groups, i = 0, 0
    while i < int(n * share):
        size = int(rng.integers(2, 5))
        for j in range(i + 1, min(i + size, n)):
            bits = np.unpackbits(shapes[i])
            flip = rng.choice(dupes.SHAPE_BITS, int(rng.integers(0, 41)), replace=False)
            bits[flip] ^= 1
            shapes[j] = np.packbits(bits)
            tones[j] = np.clip(tones[i].astype(int) + rng.integers(-3, 4, dupes.TONE_BYTES), 0, 255)
        groups, i = groups + 1, i + size
    return [bytes(s) + bytes(t) for s, t in zip(shapes, tones, strict=True)], groups


def fill(store: Store, n: int, share: float, rng: np.random.Generator) -> int:
    hashes, planted = planted_hashes(n, share, rng)
    centres = rng.standard_normal((64, 512)).astype(np.float32)
    with store.write() as conn:
        conn.execute(images_table.delete())
        store.claim_model(conn, "bench", 512)
        for first in range(0, n, 20_000):
            count = min(20_000, n - first)
            x = centres[rng.integers(0, len(centres), count)] + 0.6 * rng.standard_normal((count, 512))
            x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
            rows = []
            for i, v in enumerate(x, first):
                new = NewImage(f"/photos/{i:07d}.jpg", 1 + i, 1, f"{i:032x}", 4000, 3000, v, pixel_hash=hashes[i])
                rows.append(_row_values(new))
            conn.execute(insert(images_table), rows)
        store.bump_generation(conn)
    return planted


def bench_groups(work: Path, n: int, share: float) -> None:
    rng = np.random.default_rng(0)
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "imgsearch.db").unlink(missing_ok=True)
    (home / "vectors.faiss").unlink(missing_ok=True)
    store = Store(home / "imgsearch.db")
    started = time.perf_counter()
    planted = fill(store, n, share, rng)
    print(f"\n{n:,} images, {planted:,} planted groups of copies (written in {time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    found = copies.regroup(store, force=True)
    regroup = time.perf_counter() - started
    print(f"  deciding the groups (end of an index run): {regroup:.1f} s, {found:,} groups (planted {planted:,})")
    hashes, _ = planted_hashes(1, 0.0, rng)  # a new photo with no copy, as a `watch` pass adds
    with store.write() as conn:
        new = NewImage("/photos/new.jpg", 1, 1, "f" * 32, 4000, 3000, np.ones(512, np.float32) / 512**0.5)
        conn.execute(insert(images_table), [_row_values(dataclasses.replace(new, pixel_hash=hashes[0]))])
    started = time.perf_counter()
    copies.regroup(store, force=True, only_added=True)
    seconds = time.perf_counter() - started
    print(f"  a pass that adds one photo without a copy (looked up among all, groups kept): {seconds:.2f} s")
    store.close()
    with Library(load_settings(home, environ={})) as lib:
        started = time.perf_counter()
        listed = lib.dupes()
        listing = time.perf_counter() - started
        print(f"  imgsearch dupes (reads the groups, ranks each): {listing:.1f} s, {len(listed):,} groups")
        print(f"  regroup + dupes: {regroup + listing:.1f} s (target <= 60 s)")
        vectors = lib.store.all_vectors()[1][:200]
        times: dict[bool, list[float]] = {True: [], False: []}
        lib.search_vector(vectors[0], k=10)  # load the index
        for v in vectors:
            for every in (False, True):
                started = time.perf_counter()
                lib.search_vector(v, k=10, all_copies=every)
                times[every].append(time.perf_counter() - started)
        p50 = {every: statistics.median(t) * 1000 for every, t in times.items()}
        print(
            f"  search k=10: p50 {p50[True]:.1f} ms with every copy, {p50[False]:.1f} ms collapsed "
            f"(+{p50[False] - p50[True]:.1f} ms: one indexed lookup of the ids found)"
        )


def bench_hash_cost() -> None:
    rng = np.random.default_rng(1)
    print("\nwhat hashing adds to indexing (the hash runs on the decode threads, on what they decoded)")
    for width, height in ((4000, 3000), (1600, 1200)):
        noise = rng.integers(0, 255, (height // 40, width // 40, 3), dtype=np.uint8)
        picture = Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        decode, hashing = [], []
        for _ in range(15):
            started = time.perf_counter()
            decoded = images.decode(data, 200_000_000, 224)
            decode.append(time.perf_counter() - started)
            started = time.perf_counter()
            dupes.picture_hash(decoded)
            hashing.append(time.perf_counter() - started)
        d, h = statistics.median(decode) * 1000, statistics.median(hashing) * 1000
        print(
            f"  {width}x{height} JPEG: decode (draft, {decoded.width}x{decoded.height}) {d:.1f} ms, hash {h:.2f} ms: "
            f"{h / d:.1%} of the decode alone"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--share", type=float, default=0.02, help="share of the rows in planted groups")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-bench-copies")
    args = parser.parse_args()
    import faiss

    print(f"cpu: {cpu_info().describe()}")
    versions = f"numpy {np.__version__}, faiss {faiss.__version__}, Pillow {Image.__version__}"
    print(f"python {platform.python_version()}, {versions}")
    bench_hash_cost()
    bench_groups(args.work, args.rows, args.share)


if __name__ == "__main__":
    main()

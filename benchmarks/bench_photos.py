#!/usr/bin/env python3
"""Photo metadata: the backfill rate (headers of images indexed before revision 0005, no model), what reading a
header adds to indexing, and query latency with date, camera and place filters at 100k images.

    python benchmarks/bench_photos.py                     # 2,000 JPEGs for the backfill, 100k rows for queries
    python benchmarks/bench_photos.py --files 5000 --rows 100000 --queries 200

The backfill's files are real JPEGs with a camera's EXIF (make, model, lens, dates with offsets, GPS for a third
of them, a 24 KB maker note, as cameras write) at 1600x1200; their rows are written straight into a database as
an index from before the upgrade left them (photo fields empty), so that only the backfill is timed. The query
rows carry clustered vectors (no model is needed: the query vector is one of the clusters) and capture dates
spread over ten years, 20 cameras and 50 places; the vector index is what `auto` picks at that size (HNSW at 100k).
Recall@10 of each filtered search is checked against brute force among the images the filter allows.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from sqlalchemy import insert

from imgsearch import Library, load_settings, photometa, places
from imgsearch.embed.cpu import cpu_info
from imgsearch.indexer import backfill
from imgsearch.search.dates import photo_filter
from imgsearch.store.repository import NewImage, Store, _row_values
from imgsearch.store.schema import images
from imgsearch.types import PhotoMeta

CAMERAS = [f"Camera Model {i}" for i in range(20)]
PLACES = [f"Town {i}, Region {i % 7}, Country {i % 5}" for i in range(50)]


def camera_jpeg(i: int, rng: random.Random) -> bytes:
    """A JPEG as a camera writes it: EXIF with dates, offset, lens, a maker note, GPS for a third of them."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", f"Canon EOS {i % 7}D"
    when = datetime(2015, 1, 1) + timedelta(seconds=rng.randrange(10 * 365 * 86400))
    sub = exif.get_ifd(0x8769)
    sub.update({0x9003: when.strftime("%Y:%m:%d %H:%M:%S"), 0x9011: "+02:00", 0xA434: "EF24-105mm f/4L IS USM"})
    sub[0x927C] = rng.randbytes(24_000)  # the maker note: most of a real header's size
    if i % 3 == 0:
        lat, lon = rng.uniform(-60, 70), rng.uniform(-180, 180)
        gps = exif.get_ifd(0x8825)
        gps.update({1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W", 4: _dms(lon)})
    noise = np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    picture = Image.fromarray(noise).resize((1600, 1200), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85, exif=exif.tobytes())
    return out.getvalue()


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    d, m = int(value), int((value - int(value)) * 60)
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(round(((value - d) * 60 - m) * 6000), 100)


def bench_backfill(work: Path, n: int) -> None:
    folder = work / "camera"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    started = time.perf_counter()
    paths = []
    for i in range(n):
        path = folder / f"IMG_{i:05d}.JPG"
        if not path.exists():
            path.write_bytes(camera_jpeg(i, rng))
        paths.append(path)
    made = time.perf_counter() - started
    megabytes = sum(p.stat().st_size for p in paths) / 2**20
    store = Store(work / "backfill.db")
    with store.write() as conn:
        conn.execute(images.delete())
        store.claim_model(conn, "bench", 8)
        vector = np.ones(8, np.float32) / np.sqrt(8)
        rows = [
            _row_values(NewImage(str(p), st.st_size, st.st_mtime_ns, f"{i:032x}", 1600, 1200, vector))
            for i, p in enumerate(paths)
            for st in [p.stat()]
        ]
        conn.execute(insert(images), rows)
    if places.available():
        places.name(0.0, 0.0)  # load the geocoder first: its one-off second is not the rate
    started = time.perf_counter()
    filled = backfill.run(store, lambda p: None)
    seconds = time.perf_counter() - started
    counts = store.photo_counts()
    store.close()
    print(f"backfill: {n} JPEGs (1600x1200, {megabytes / n * 1024:.0f} KB each, made in {made:.0f} s), warm cache")
    print(f"  read {filled.read} headers in {seconds:.2f} s: {filled.read / seconds:,.0f} images/s")
    dated = sum(counts.taken.values())
    print(f"  dated {dated} (by source {counts.taken}), {counts.gps} with GPS, {counts.place} named")
    data = [p.read_bytes() for p in paths[:200]]
    started = time.perf_counter()
    for p, raw in zip(paths, data, strict=False):
        photometa.read(raw, str(p), 0)
    per = (time.perf_counter() - started) / len(data) * 1000
    print(f"  what `index` adds a file (the header parsed from the bytes it read): {per:.2f} ms")


def bench_queries(work: Path, n: int, queries: int) -> None:
    home = work / f"home-{n}"
    lib = Library(load_settings(home, environ={}))
    rng = np.random.default_rng(1)
    if lib.store.count() != n:
        fill(lib.store, n, rng)
    started = time.perf_counter()
    kind = lib.cache.loaded().index.kind  # builds (and saves) the vector index the first time
    print(f"\nqueries at {n:,} images ({kind} index, ready in {time.perf_counter() - started:.0f} s)")
    vectors = lib.store.all_vectors()[1]
    probes = vectors[rng.choice(len(vectors), queries, replace=False)]
    cases = [
        ("no filter", {}),
        ("--after 2020 (half)", {"after": "2020"}),
        ("a year (10%)", {"after": "2019", "before": "2019"}),
        ("a month (0.8%)", {"after": "2019-06", "before": "2019-06"}),
        ("a day (0.03%)", {"after": "2019-06-14", "before": "2019-06-14"}),
        ("--camera 'model 7' (5%)", {"camera": "model 7"}),
        ("--place 'town 42' + a year (0.2%)", {"place": "town 42", "after": "2021", "before": "2021"}),
    ]
    ids, stored = lib.store.all_vectors()
    for label, flags in cases:
        photo = photo_filter(**flags)
        allowed = lib.store.allowed_ids(None, (), photo)
        times, found, wanted = [], 0, 0
        for q in probes:
            began = time.perf_counter()
            hits = lib.engine.by_vector(q, 10, photo=photo)
            times.append(time.perf_counter() - began)
            mask = np.ones(len(ids), bool) if allowed is None else np.isin(ids, allowed)
            truth = ids[mask][np.argsort(-(stored[mask] @ q))[:10]]
            found += len(set(truth.tolist()) & {h.id for h in hits})
            wanted += len(truth)
        share = "" if allowed is None else f", {len(allowed):,} allowed"
        p50, p95 = statistics.median(times) * 1000, float(np.percentile(times, 95)) * 1000
        print(f"  {label:<36} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  recall@10 {found / max(1, wanted):.3f}{share}")
    times = []
    for _ in range(queries):
        began = time.perf_counter()
        lib.engine.listing(50, 0, photo=photo_filter("2019-06", "2019-06"), sort="date")
        times.append(time.perf_counter() - began)
    print(f"  listing a month by date (50 rows, no vector)  p50 {statistics.median(times) * 1000:6.1f} ms")
    lib.close()


def fill(store: Store, n: int, rng: np.random.Generator) -> None:
    """n rows: clustered vectors, capture dates over ten years, one of 20 cameras and 50 places each."""
    centres = rng.standard_normal((max(16, n // 200), 512)).astype(np.float32)
    start = datetime(2015, 1, 1)
    with store.write() as conn:
        conn.execute(images.delete())
        store.claim_model(conn, "bench", 512)
        for first in range(0, n, 20_000):
            count = min(20_000, n - first)
            noise = 0.6 * rng.standard_normal((count, 512)).astype(np.float32)
            x = centres[rng.integers(0, len(centres), count)] + noise
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            rows = []
            for i, v in enumerate(x, first):
                taken = (start + timedelta(seconds=int(rng.integers(0, 10 * 365 * 86400)))).isoformat()
                photo = PhotoMeta(taken, 60, "exif", CAMERAS[i % 20], place=PLACES[i % 50], version=photometa.VERSION)
                new = NewImage(f"/photos/{i:07d}.jpg", 1, 1, f"{i:032x}", 4000, 3000, v, photo=photo)
                rows.append(_row_values(new))
            conn.execute(insert(images), rows)
        store.bump_generation(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000, help="JPEGs for the backfill")
    parser.add_argument("--rows", type=int, default=100_000, help="images for the query latency")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-bench-photos")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"cpu: {cpu_info().describe()}; geocoder: {'reverse_geocoder' if places.available() else 'not installed'}")
    if args.files:
        bench_backfill(args.work, args.files)
    if args.rows:
        bench_queries(args.work, args.rows, args.queries)


if __name__ == "__main__":
    main()

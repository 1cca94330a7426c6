#!/usr/bin/env python3
"""The vector index at scale: the kind imgsearch picks for a collection size, its build time, memory, single-query
latency (p50/p95, through the product's FaissIndex.search) and recall@10 against exact search.

    python benchmarks/bench_ann.py                          # 1M vectors, the kind `auto` picks (IVF-SQ8)
    python benchmarks/bench_ann.py --sizes 100000 --kind hnsw
    python benchmarks/bench_ann.py --home ~/.local/share/imgsearch   # the embeddings of a real library

Recall is only meaningful on vectors with neighbourhoods (random 512-d vectors have none). No pretrained model
can be fetched here, so two synthetic sets stand in for real embeddings unless --home or --vectors gives some:
  clustered: centres plus isotropic noise as large as the centres' spread (hard: neighbours are nearly tied);
  low-rank:  centres plus variation along a few directions per cluster, decaying, plus small noise (closer to
             real CLIP embeddings, whose variance is concentrated in a few dozen directions).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from imgsearch.config import SearchSettings
from imgsearch.store import sync, vectors


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 200), dim)).astype(np.float32)
    out = centres[rng.integers(0, len(centres), n)]
    out += 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    return _unit(out)


def low_rank(n: int, dim: int, seed: int, rank: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clusters = max(16, n // 500)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    which = rng.integers(0, clusters, n)
    out = 0.08 * rng.standard_normal((n, dim), dtype=np.float32)
    spread = (0.9 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)
    for c in range(clusters):
        rows = np.flatnonzero(which == c)
        basis = rng.standard_normal((rank, dim)).astype(np.float32)
        coeffs = rng.standard_normal((len(rows), rank)).astype(np.float32) * spread
        out[rows] += centres[c] + coeffs @ basis
    return _unit(out)


def from_home(home: Path) -> np.ndarray:
    from imgsearch.store.repository import Store

    store = Store(home / "imgsearch.db")
    try:
        return store.all_vectors()[1]
    finally:
        store.close()


def measure(name: str, data: np.ndarray, queries: np.ndarray, kind: str, work: Path) -> None:
    n, dim = data.shape
    settings = SearchSettings(index_type=kind)
    params = sync.choose_params(settings, n)
    ids = np.arange(1, n + 1, dtype=np.int64)
    started = time.perf_counter()
    index = vectors.build(dim, ids, data, params)
    built = time.perf_counter() - started
    path = work / f"{name}-{n}.faiss"
    checksum = vectors.write_atomic(path, index.to_bytes())
    del index
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    mapped = vectors.read_checked(path, checksum, params, mapped=True)
    opened = time.perf_counter() - started
    assert mapped is not None
    exact = vectors.build(dim, ids, data, vectors.IndexParams("flat"))
    _, truth = exact.search(queries, 10)
    latency = []
    found = []
    for q in queries:
        t = time.perf_counter()
        _, hit = mapped.search(q, 10)
        latency.append(time.perf_counter() - t)
        found.append(hit[0])
    flat_latency = []
    for q in queries[:50]:
        t = time.perf_counter()
        exact.search(q, 10)
        flat_latency.append(time.perf_counter() - t)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    ms = np.array(latency) * 1000
    print(
        f"{name:>9} {n:>9,} x {dim}  {mapped.kind:<4} build {built:6.1f} s  file {path.stat().st_size / 2**20:7.0f} MB "
        f"({path.stat().st_size / n:.0f} B/vector)  open (checksum + map) {opened * 1000:5.0f} ms  "
        f"query p50 {np.percentile(ms, 50):6.2f} ms p95 {np.percentile(ms, 95):6.2f} ms  recall@10 {recall:.3f}  "
        f"(exact search: p50 {np.median(flat_latency) * 1000:.1f} ms; peak RSS so far {rss / 2**20:.1f} GB)"
    )
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--kind", default="auto", choices=["auto", *vectors.KINDS])
    parser.add_argument("--sets", nargs="+", default=["low-rank", "clustered"], choices=["low-rank", "clustered"])
    parser.add_argument("--home", type=Path, help="measure on the vectors of an imgsearch home instead")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print(f"CPU threads: {os.cpu_count()}; defaults: {SearchSettings()}")
    if args.home:
        data = from_home(args.home.expanduser())
        rng = np.random.default_rng(1)
        picks = rng.choice(len(data), min(args.queries, len(data)), replace=False)
        queries = _unit(data[picks] + 0.05 * rng.standard_normal(data[picks].shape).astype(np.float32))
        measure("library", data, queries, args.kind, args.work)
        return
    makers = {"clustered": clustered, "low-rank": low_rank}
    for n in args.sizes:
        for name in args.sets:
            both = makers[name](n + args.queries, 512, seed=0)  # queries drawn from the same distribution
            measure(name, both[:n], both[n:], args.kind, args.work)
            del both


if __name__ == "__main__":
    main()

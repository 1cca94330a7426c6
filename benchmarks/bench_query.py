#!/usr/bin/env python3
"""Query latency by collection size: cold `imgsearch query` (a new process) and warm queries through a
running `imgsearch serve` (p50/p95), at 10k and 100k indexed vectors (1M with --sizes).

    python benchmarks/bench_query.py                       # 10k and 100k, random-init ViT-B-32
    python benchmarks/bench_query.py --sizes 10000 100000 1000000

The vectors are written straight into the database (embedding 100k real photos would take hours here);
they are clustered (a few thousand centres plus noise), so the ANN index has neighbourhoods to find.
Latency does not depend on what the vectors mean; recall on real embeddings is measured elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import make_checkpoint


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 200), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(home: Path, env: dict[str, str], n: int) -> None:
    """A home whose database holds n images (fake paths, clustered vectors) for the configured model."""
    from imgsearch import load_settings
    from imgsearch.embed import configured_model_id
    from imgsearch.store.repository import NewImage, Store

    settings = load_settings(home, environ={k: v for k, v in env.items() if k.startswith("IMGSEARCH_")})
    store = Store(settings.database_path)
    if store.count() == n:
        return
    from sqlalchemy import insert

    from imgsearch.store.repository import _row_values
    from imgsearch.store.schema import images

    with store.write() as conn:
        store.claim_model(conn, configured_model_id(settings), 512)
        for start in range(0, n, 50_000):  # in slices: 1M vectors are 2 GB
            vectors = clustered(min(50_000, n - start), 512, seed=start)
            rows = [
                _row_values(NewImage(f"/photos/{i // 1000:04d}/{i:07d}.jpg", 1, 1, f"{i:032x}", 4000, 3000, v))
                for i, v in enumerate(vectors, start)
            ]
            conn.execute(insert(images), rows)
        store.bump_generation(conn)
    store.close()


def run(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        response.read()
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def measure(n: int, work: Path, checkpoint: Path) -> None:
    home = work / f"home-{n}"
    env = {**os.environ, "IMGSEARCH_HOME": str(home), "IMGSEARCH_MODEL__PRETRAINED": str(checkpoint)}
    started = time.perf_counter()
    fill(home, env, n)
    filled = time.perf_counter() - started
    query = [sys.executable, "-m", "imgsearch", "query", "-k", "10"]
    off = {**env, "IMGSEARCH_SERVE__QUERY_VIA_SERVER": "false"}
    first = run([*query, "a dog on a beach"], off)  # embeds the prompt, builds and saves the vector index
    cold_cached = [run([*query, "a dog on a beach"], off) for _ in range(5)]
    cold_new = [run([*query, f"a new prompt {i}"], off) for i in range(3)]
    status = json.loads(subprocess.run([sys.executable, "-m", "imgsearch", "status", "--json"], env=env,
                                       check=True, capture_output=True, text=True).stdout)  # fmt: skip
    server = subprocess.Popen([sys.executable, "-m", "imgsearch", "serve", "--port", "0"], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[1].rstrip("/")
        get(f"{url}/api/search?q=warm")
        time.sleep(5)  # serve warms the model and prunes thumbnails in a thread at start: measure after it
        prompts = [f"photo {i} of a thing" for i in range(30)]
        new = [get(f"{url}/api/search?limit=10&q={urllib.parse.quote(p)}") for p in prompts]
        again = [get(f"{url}/api/search?limit=10&q={urllib.parse.quote(p)}") for p in prompts * 2]
        via_cli = [run([*query, prompts[0]], env) for _ in range(5)]
    finally:
        server.terminate()
        server.wait(60)
    print(f"\nruntime: {status['runtime']} {status['precision']} ({status['precision_reason']}); cpu: {status['cpu']}")
    print(f"{n:,} vectors (index: {status['index_type']}, {status['index_bytes'] / 2**20:.0f} MB file; "
          f"filled in {filled:.0f} s; first query, building the index: {first:.1f} s)")  # fmt: skip
    print(f"  cold `imgsearch query`, prompt seen before: median {statistics.median(cold_cached):.2f} s")
    print(f"  cold `imgsearch query`, new prompt (loads the model): median {statistics.median(cold_new):.2f} s")
    print(f"  cold `imgsearch query` with `serve` running: median {statistics.median(via_cli):.2f} s")
    print(f"  warm GET /api/search, repeated prompt: p50 {pct(again, 50):.1f} ms, p95 {pct(again, 95):.1f} ms")
    print(f"  warm GET /api/search, new prompt: p50 {pct(new, 50):.1f} ms, p95 {pct(new, 95):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-bench-query")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint("ViT-B-32", args.work / "ViT-B-32-random.safetensors")
    print(f"ViT-B-32 (random init), CPU threads: {os.cpu_count()}")
    for n in args.sizes:
        measure(n, args.work, checkpoint)


if __name__ == "__main__":
    main()

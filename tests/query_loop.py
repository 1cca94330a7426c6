"""A query process for the concurrency checks: queries one home until a stop file appears, then prints a JSON summary.

    python -m tests.query_loop HOME STOP_FILE text|vector [KEY=VALUE ...]   (settings overrides, e.g. the tiny model)

Prints "ready" once it can query. Each round searches with the long-lived Library (as a server would): a
random caption (`text`: the whole query path, model included) or a random unit vector (`vector`: the
same reads of SQLite and the FAISS file, without loading torch, so that it starts in a second); every
5th round opens a new Library (as a new CLI process would) and also reads `status`. Every exception is
counted, never raised: the summary says how many, how many were "database is locked", and the first
few messages, with the latency of the queries (seconds).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from imgsearch import Hit, Library, load_settings

CAPTIONS = ["a red circle", "a green square", "a blue triangle", "a yellow circle", "red", "a square"]


def main() -> None:
    home, stop, mode, pairs = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    settings = load_settings(home, overrides=dict(p.split("=", 1) for p in pairs))
    lib = Library(settings)
    embedder = lib.embedder if mode == "text" else None
    dim = lib.store.model()[1] or 0
    print("ready", flush=True)
    rng = random.Random()
    latencies: list[float] = []
    errors: list[str] = []
    hits = 0
    while not stop.exists():
        started = time.perf_counter()
        try:
            if len(latencies) % 5 == 4:
                with Library(settings, embedder=embedder) as fresh:
                    fresh.status()
                    hits += len(search(fresh, mode, dim, rng))
            else:
                hits += len(search(lib, mode, dim, rng))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
        latencies.append(time.perf_counter() - started)
    lib.close()
    latencies.sort()
    summary = {
        "queries": len(latencies),
        "hits": hits,
        "errors": len(errors),
        "locked": sum("database is locked" in e for e in errors),
        "messages": sorted(set(errors))[:5],
        "p50": latencies[len(latencies) // 2] if latencies else None,
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "max": latencies[-1] if latencies else None,
    }
    print(json.dumps(summary), flush=True)


def search(lib: Library, mode: str, dim: int, rng: random.Random) -> list[Hit]:
    if mode == "text":
        return lib.query(rng.choice(CAPTIONS), k=5)
    vector = np.array([rng.gauss(0, 1) for _ in range(dim)], dtype=np.float32)
    return lib.search_vector(vector / np.linalg.norm(vector), k=5)


# the harness side: start query processes, stop them, read their summaries


def start(
    home: Path, count: int, stop: Path, mode: str, overrides: dict[str, str], env: dict[str, str]
) -> list[subprocess.Popen[str]]:
    """count query processes on home, each ready when this returns."""
    root = Path(__file__).resolve().parent.parent
    args = [f"{k}={v}" for k, v in overrides.items()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.query_loop", str(home), str(stop), mode, *args],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise AssertionError(f"query process did not start: {line!r}")
    return procs


def finish(procs: list[subprocess.Popen[str]], stop: Path) -> list[dict[str, Any]]:
    stop.touch()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A damaged FAISS file under real query processes: truncated and bit-flipped, N cases each.

    python benchmarks/fault_corrupt.py               # 30 truncations + 30 bit flips, 120 images
    python benchmarks/fault_corrupt.py --cases 100

Each case damages vectors.faiss (a truncation to a random length, 0 and size-1 included, or one random
bit flipped anywhere), checks that the product's loader rejects it (checksum), then runs
`python -m imgsearch query "a red circle" -k 5 --json` as a new process: it must exit 0 (a crash in
faiss would show as a signal), give exactly the answers of the undamaged index, and leave a current
FAISS file behind (the query rebuilt it from SQLite and saved it).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import crashkit, tinyclip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path(".pytest_cache/d/tinyclip"), help="the tiny model's cache")
    args = ap.parse_args()
    tiny = tinyclip.load_or_train(args.cache.resolve())
    env = crashkit.model_env(tiny)
    work = Path(tempfile.mkdtemp(prefix="imgsearch-corrupt-"))
    try:
        return run(work, env, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, env: dict[str, str], args: argparse.Namespace) -> int:
    folder, home = work / "pictures", work / "home"
    crashkit.make_pictures(folder, args.images, seed=args.seed)
    run_env = crashkit.child_env(env, home)
    crashkit.run_index(folder, run_env)
    path = home / "vectors.faiss"
    expected = query(run_env)
    size = path.stat().st_size
    print(f"{args.images} images, vectors.faiss {size} bytes; answers to 'a red circle': {len(expected)} hits")
    rng = random.Random(args.seed)
    failures = 0
    for kind in ("truncate", "bitflip"):
        counts = {"detected": 0, "rebuilt": 0, "exit 0": 0, "same answers": 0, "saved again": 0}
        for case in range(args.cases):
            where = damage(path, kind, rng, case)
            before = crashkit.audit(home)
            counts["detected"] += before.file_state == "unverified"
            counts["rebuilt"] += bool(before.product_rebuilt) and not crashkit.problems(before)
            done = subprocess.run(
                [sys.executable, "-m", "imgsearch", "query", "a red circle", "-k", "5", "--json"],
                env=run_env,
                capture_output=True,
                text=True,
            )
            counts["exit 0"] += done.returncode == 0
            got = answers(done.stdout) if done.returncode == 0 else None
            counts["same answers"] += got == expected
            after = crashkit.audit(home)
            counts["saved again"] += after.file_state == "current" and not after.product_rebuilt
            if done.returncode != 0 or got != expected:
                print(f"  {kind} case {case} ({where}): exit {done.returncode} {done.stderr.strip()[:300]}")
        failures += sum(args.cases - v for v in counts.values())
        print(f"{kind:8s} x{args.cases}: " + ", ".join(f"{k} {v}/{args.cases}" for k, v in counts.items()))
    return 1 if failures else 0


def damage(path: Path, kind: str, rng: random.Random, case: int) -> str:
    raw = bytearray(path.read_bytes())
    if kind == "truncate":
        keep = (0, len(raw) - 1)[case] if case < 2 else rng.randrange(len(raw))
        path.write_bytes(bytes(raw[:keep]))
        return f"kept {keep} of {len(raw)} bytes"
    at, bit = rng.randrange(len(raw)), rng.randrange(8)
    raw[at] ^= 1 << bit
    path.write_bytes(bytes(raw))
    return f"byte {at} bit {bit}"


def query(env: dict[str, str]) -> list[tuple[str, float]]:
    done = subprocess.run(
        [sys.executable, "-m", "imgsearch", "query", "a red circle", "-k", "5", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return answers(done.stdout)


def answers(stdout: str) -> list[tuple[str, float]]:
    return [(h["path"], round(h["score"], 5)) for h in json.loads(stdout)]


if __name__ == "__main__":
    sys.exit(main())

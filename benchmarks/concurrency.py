#!/usr/bin/env python3
"""Concurrent use of one home: a real `imgsearch watch` writing while query processes run, then two writers.

    python benchmarks/concurrency.py                          # 60 s, 4 query processes (text queries), 10 races
    python benchmarks/concurrency.py --seconds 300 --queriers 8 --mode vector

1. `imgsearch watch FOLDER` (a real process, the tiny test model, settle 0.3 s) while files arrive in bursts
   of 20; once a burst is indexed, 2 of its files are moved to another folder, 1 deleted and 1 redrawn.
   Meanwhile N query processes (tests/query_loop.py) query without pause; every 5th query opens a new
   Library and reads `status`. Counted: queries, errors, "database is locked", latency; at the end the
   index must equal the disk, every new or redrawn file embedded exactly once, the FAISS file current.
2. Two `imgsearch index FOLDER` started at the same instant on a fresh home, R times: one must index,
   the other exit 1 with its one line; no path or content indexed twice.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import crashkit, query_loop, tinyclip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--queriers", type=int, default=4)
    ap.add_argument("--mode", choices=["text", "vector"], default="text")
    ap.add_argument("--races", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=Path(".pytest_cache/d/tinyclip"), help="the tiny model's cache")
    args = ap.parse_args()
    tiny = tinyclip.load_or_train(args.cache.resolve())
    overrides = {
        "model.name": tiny.name,
        "model.config_file": str(tiny.config_path),
        "model.pretrained": str(tiny.checkpoint_path),
        "index.batch_size": "8",
    }
    env = {"IMGSEARCH_" + k.upper().replace(".", "__"): v for k, v in overrides.items()}
    work = Path(tempfile.mkdtemp(prefix="imgsearch-concurrency-"))
    try:
        ok = watch_with_queries(work / "watch", env, overrides, args)
        ok = races(work / "races", env, args.races) and ok
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def watch_with_queries(work: Path, env: dict[str, str], overrides: dict[str, str], args: argparse.Namespace) -> bool:
    folder, home, log = work / "watched", work / "home", work / "watch.log"
    crashkit.make_pictures(folder / "start", 40, seed=0)
    watch_env = crashkit.child_env(env, home) | {"IMGSEARCH_WATCH__SETTLE_SECONDS": "0.3"}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "imgsearch", "watch", str(folder), "--quiet", "--log-file", str(log)],
        env=watch_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait(lambda: log.exists() and "indexed 40 new" in log.read_text(), 120)
    query_env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")} | {"OMP_NUM_THREADS": "1"}
    stop = work / "stop"
    queriers = query_loop.start(home, args.queriers, stop, args.mode, overrides, query_env)
    started = time.monotonic()
    expected_embeds, bursts = 40, 0  # the first pass embeds the 40 start files
    (folder / "moved").mkdir()
    while time.monotonic() - started < args.seconds:
        burst = crashkit.make_pictures(folder / f"burst-{bursts}", 20, seed=1000 + bursts, prefix="n")
        expected_embeds += len(burst)
        wait(lambda b=burst: {str(p) for p in b} <= indexed(home), 120)  # type: ignore[misc]
        burst[0].rename(folder / "moved" / f"{bursts}-a.png")
        burst[1].rename(folder / "moved" / f"{bursts}-b.png")
        burst[2].unlink()
        tinyclip.draw("green", "triangle", __import__("random").Random(5000 + bursts)).save(burst[3])
        expected_embeds += 1
        bursts += 1
    writing = time.monotonic() - started
    on_disk = {str(p) for p in folder.rglob("*.png")}
    wait(lambda: indexed(home) == on_disk, 120)
    results = query_loop.finish(queriers, stop)
    watcher.send_signal(signal.SIGTERM)
    watcher.communicate(timeout=120)
    a = crashkit.audit(home)
    problems = crashkit.settled_problems(a, on_disk)
    embedded = sum(int(m) for m in re.findall(r"indexed (\d+) new or changed", log.read_text()))
    passes = log.read_text().count("indexed ")
    queries = sum(r["queries"] for r in results)
    errors = sum(r["errors"] for r in results)
    locked = sum(r["locked"] for r in results)
    print(f"watch + {args.queriers} query processes ({args.mode} queries), {writing:.0f} s of writes")
    print(f"  watcher: {bursts} bursts, {passes} passes, exit {watcher.returncode}")
    print(f"  embedded: {embedded} (each new or redrawn file once: {expected_embeds}; moves are not re-embedded)")
    print(f"  index == disk: {not problems} ({len(a.rows)} images); FAISS file {a.file_state}")
    print(f"  queries: {queries} ({queries / writing:.1f}/s), errors: {errors}, 'database is locked': {locked}")
    for i, r in enumerate(results):
        print(
            f"  query process {i}: {r['queries']} queries, {r['errors']} errors, latency p50 {r['p50'] * 1000:.0f} ms, "
            f"p99 {r['p99'] * 1000:.0f} ms, max {r['max'] * 1000:.0f} ms {r['messages'] or ''}"
        )
    for p in problems:
        print("  PROBLEM:", p)
    return not problems and errors == 0 and embedded == expected_embeds and watcher.returncode == 0


def races(work: Path, env: dict[str, str], rounds: int) -> bool:
    pictures = work / "pictures"
    crashkit.make_pictures(pictures, 48)
    outcomes: dict[str, int] = {}
    duplicates = 0
    for i in range(rounds):
        home = work / f"home-{i}"
        run_env = crashkit.child_env(env, home)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "imgsearch", "index", str(pictures), "--quiet"],
                env=run_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        ended = [(p.pid, p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
        codes = sorted(code for _, code, _ in ended)
        pids = {pid for pid, _, _ in ended}
        busy = re.compile(rf"imgsearch: {re.escape(str(home))} is being indexed by pid (\d+); wait for it to finish")
        lines = [err.splitlines() for _, code, err in ended if code == 1]
        matches = [busy.fullmatch(ls[0]) if len(ls) == 1 else None for ls in lines]
        message = bool(matches) and all(m is not None and int(m.group(1)) in pids for m in matches)
        key = f"exit codes {codes}" + (", one-line message naming the other pid" if message else "")
        outcomes[key] = outcomes.get(key, 0) + 1
        with sqlite3.connect(home / "imgsearch.db") as db:
            n, paths, hashes = db.execute(
                "select count(*), count(distinct path), count(distinct content_hash) from images"
            ).fetchone()
        duplicates += (n - paths) + (n - hashes) + abs(n - 48)
    print(f"two writers started together, {rounds} rounds: {json.dumps(outcomes)}")
    print(f"  rows duplicated (path or content) or missing: {duplicates}")
    good = "exit codes [0, 1], one-line message naming the other pid"
    return outcomes.get(good, 0) == rounds and duplicates == 0


def indexed(home: Path) -> set[str]:
    try:
        with sqlite3.connect(home / "imgsearch.db", timeout=60) as db:
            return {r[0] for r in db.execute("select path from images")}
    except sqlite3.OperationalError:
        return set()


def wait(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting")
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())

"""Concurrent use loses nothing: a watcher writing beside four query processes (no "database is locked"),
a second writer on the same home (one line, exit 1, nothing duplicated), and the SQLite version on show.
benchmarks/concurrency.py runs the long version (60 s, a real `imgsearch watch` process).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from imgsearch import Library, load_settings
from tests import crashkit, query_loop
from tests.conftest import tiny_env, tiny_overrides
from tests.test_watch import Running, settled, wait_for


def query_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    return env | {"OMP_NUM_THREADS": "1"}  # four model processes on a small machine: one thread each


def test_watcher_writing_beside_four_query_processes(home: Path, tmp_path: Path, tiny, tiny_embedder) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "watched"
    crashkit.make_pictures(folder, 8, prefix="start")
    overrides = dict(tiny_overrides(tiny), **{"watch.settle_seconds": "0.3"})
    lib = Library(load_settings(home, overrides=overrides), embedder=tiny_embedder)
    w = Running(lib, folder)
    stop = tmp_path / "stop"
    queriers = query_loop.start(home, 4, stop, "vector", tiny_overrides(tiny), query_env())
    try:
        created, passes, bursts = 0, len(w.reports), 0
        end = time.monotonic() + 8
        # Bursts for 8 s, and at least 5 (each waits until it is indexed: a machine under load runs fewer in 8 s).
        while time.monotonic() < end or bursts < 5:  # a burst; once indexed, one of its files moved and one deleted
            bursts += 1
            burst = crashkit.make_pictures(folder / f"b{created}", 12, seed=1000 + created, prefix="n")
            created += len(burst)
            wait_for(lambda b=burst: {str(p) for p in b} <= w.paths(), timeout=60)  # type: ignore[misc]
            burst[0].rename(folder / f"moved-{created}.png")
            burst[1].unlink()
        on_disk = {str(p) for p in folder.rglob("*.png")}
        wait_for(lambda: w.paths() == on_disk, timeout=60)
        settled(w)
    finally:
        results = query_loop.finish(queriers, stop)
        w.stop.set()
        w.thread.join(timeout=30)
        lib.close()
    assert len(w.reports) - passes >= 5, "the watcher wrote while the queries ran"
    assert w.embedded_since_start() == created, "each new file embedded once; a move is not a re-embed"
    assert all(r["queries"] > 0 and r["hits"] > 0 for r in results), results
    assert [r["errors"] for r in results] == [0, 0, 0, 0], [r["messages"] for r in results]
    a = crashkit.audit(home)
    assert crashkit.settled_problems(a, on_disk) == []


def test_second_writer_exits_with_one_line_and_nothing_is_duplicated(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    """The first `index` is frozen (SIGSTOP) while it holds the writer lock, so the second surely meets it."""
    folder, home = tmp_path / "pictures", tmp_path / "home"
    crashkit.make_pictures(folder, 48)
    env = crashkit.child_env(tiny_env(tiny), home)
    first = crashkit.start_index(folder, env)
    lock = home / "writer.lock"
    wait_for(lambda: lock.exists() and lock.read_text() == f"pid {first.pid}", timeout=120)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "imgsearch", "index", str(folder)], env=env, capture_output=True, text=True
        )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 1
    busy = f"imgsearch: {home} is being indexed by pid {first.pid}; wait for it to finish"
    assert second.stderr.splitlines() == [busy]
    a = crashkit.audit(home)
    assert crashkit.settled_problems(a, {str(p) for p in folder.iterdir()}) == []
    with sqlite3.connect(home / "imgsearch.db") as db:
        counts = db.execute("select count(*), count(distinct path), count(distinct content_hash) from images")
        assert counts.fetchone() == (48, 48, 48)
    assert crashkit.run_index(folder, env)["embedded"] == 0


def test_status_reports_the_sqlite_library_version(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    """SQLite below 3.51.3 has the WAL-reset bug (two connections writing or checkpointing at once); the
    writer lock keeps one writing process, and `status` shows the version so that users can check."""
    from imgsearch import render

    folder, _ = shapes
    lib.index([folder])
    status = lib.status()
    with sqlite3.connect(lib.settings.database_path) as db:  # the library that opens this database, asked apart
        running = db.execute("SELECT sqlite_version()").fetchone()[0]
    assert status.sqlite_version == running and re.fullmatch(r"\d+\.\d+\.\d+", running)
    assert ["sqlite", running] in [line.split() for line in render.status(status).splitlines()]
    assert '"sqlite_version": "' + running + '"' in render.to_json(status)

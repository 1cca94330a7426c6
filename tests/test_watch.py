"""The watcher on real filesystem events (inotify through watchdog), with the tiny model."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgsearch import IndexReport, Library, load_settings
from tests import tinyclip
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.both_stores


class Running:
    def __init__(self, lib: Library, folder: Path):
        self.lib = lib
        self.reports: list[IndexReport] = []
        self.notices: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=lib.watch,
            args=([folder],),
            kwargs={
                "stop": self.stop,
                "on_pass": self.reports.append,
                "on_notice": self.notices.append,
            },
        )
        self.thread.start()
        wait_for(lambda: len(self.reports) >= 1)  # the reconciliation pass is done

    def embedded_since_start(self) -> int:
        return sum(r.embedded for r in self.reports[1:])

    def paths(self) -> set[str]:
        return set(self.lib.store.paths_of(self.lib.store.all_vectors()[0].tolist()).values())


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def settled(w: Running, quiet: float = 1.5) -> None:
    """Wait until no pass has happened for `quiet` seconds."""
    last = (len(w.reports), time.monotonic())
    while time.monotonic() - last[1] < quiet:
        time.sleep(0.1)
        if len(w.reports) != last[0]:
            last = (len(w.reports), time.monotonic())


def draw(path: Path, color: str = "red", shape: str = "circle", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tinyclip.draw(color, shape, random.Random(seed)).save(path)
    return path


@pytest.fixture
def watching(home: Path, tiny, tiny_embedder, tmp_path: Path) -> Iterator[tuple[Running, Path]]:  # type: ignore[no-untyped-def]
    folder = tmp_path / "watched"
    folder.mkdir()
    draw(folder / "start.png", "blue", "square")
    overrides = dict(tiny_overrides(tiny), **{"watch.settle_seconds": "0.3"})
    lib = Library(load_settings(home, overrides=overrides), embedder=tiny_embedder)
    w = Running(lib, folder)
    yield w, folder
    w.stop.set()
    w.thread.join(timeout=30)
    assert not w.thread.is_alive()
    lib.close()


def test_created_modified_deleted(watching) -> None:  # type: ignore[no-untyped-def]
    w, folder = watching
    new = draw(folder / "sub" / "new.png", seed=1)
    wait_for(lambda: str(new) in w.paths())
    draw(new, "green", "triangle", seed=2)
    wait_for(lambda: w.embedded_since_start() == 2)
    new.unlink()
    wait_for(lambda: str(new) not in w.paths())
    settled(w)
    assert w.embedded_since_start() == 2
    assert w.paths() == {str(folder / "start.png")}


def test_atomic_save_is_one_re_embed_and_the_temp_file_is_never_indexed(watching) -> None:  # type: ignore[no-untyped-def]
    w, folder = watching
    target = folder / "start.png"
    before = {p: i for i, p in w.lib.store.paths_of(w.lib.store.all_vectors()[0].tolist()).items()}
    tmp = draw(folder / ".start.png.tmp1234.png", "yellow", "circle", seed=3)
    os.replace(tmp, target)
    wait_for(lambda: w.embedded_since_start() >= 1)
    settled(w)
    assert w.embedded_since_start() == 1
    assert w.paths() == {str(target)}
    assert w.lib.skipped() == []
    after = {p: i for i, p in w.lib.store.paths_of(w.lib.store.all_vectors()[0].tolist()).items()}
    assert list(after) == [str(target)] and after[str(target)] > before[str(target)], "new content: a new id"


def test_moves_inside_the_tree_keep_rows_and_are_not_re_embedded(watching) -> None:  # type: ignore[no-untyped-def]
    w, folder = watching
    for i in range(40):
        draw(folder / "a" / f"{i}.png", seed=100 + i)
    wait_for(lambda: len(w.paths()) == 41)
    settled(w)
    embedded = w.embedded_since_start()
    ids = {p: i for i, p in w.lib.store.paths_of(w.lib.store.all_vectors()[0].tolist()).items()}
    (folder / "a").rename(folder / "b")
    (folder / "b" / "0.png").rename(folder / "zero.png")
    wait_for(lambda: str(folder / "zero.png") in w.paths() and str(folder / "b" / "1.png") in w.paths())
    settled(w)
    assert w.embedded_since_start() == embedded, "a move is not a re-embed"
    now = {p: i for i, p in w.lib.store.paths_of(w.lib.store.all_vectors()[0].tolist()).items()}
    assert len(now) == 41
    assert now[str(folder / "zero.png")] == ids[str(folder / "a" / "0.png")]
    assert now[str(folder / "b" / "7.png")] == ids[str(folder / "a" / "7.png")]


def test_move_out_is_a_delete_and_move_in_is_a_create(watching, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w, folder = watching
    outside = tmp_path / "outside.png"
    shutil.move(folder / "start.png", outside)
    wait_for(lambda: w.paths() == set())
    shutil.move(outside, folder / "back.png")
    wait_for(lambda: w.paths() == {str(folder / "back.png")})


def test_slow_write_is_embedded_once_at_its_final_content(watching) -> None:  # type: ignore[no-untyped-def]
    w, folder = watching
    source = draw(folder.parent / "source.png", "green", "square", seed=5).read_bytes()
    target = folder / "slow.png"
    with open(target, "wb") as f:
        for i in range(0, len(source), max(1, len(source) // 6)):
            f.write(source[i : i + max(1, len(source) // 6)])
            f.flush()
            time.sleep(0.2)
    wait_for(lambda: str(target) in w.paths())
    settled(w)
    assert w.embedded_since_start() == 1
    assert w.lib.skipped() == []


def test_burst_of_files_ends_with_index_equal_to_disk(watching) -> None:  # type: ignore[no-untyped-def]
    w, folder = watching
    for i in range(300):
        draw(folder / f"burst-{i // 100}" / f"{i}.png", seed=1000 + i)
    expected = {str(p) for p in folder.rglob("*.png")}
    wait_for(lambda: w.paths() == expected, timeout=60)
    settled(w)
    assert w.embedded_since_start() == 300
    assert w.lib.store.count() == 301


def test_cli_watch_stops_cleanly_on_sigterm_and_queries_work_meanwhile(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys

    from tests.conftest import tiny_env

    folder = tmp_path / "pics"
    draw(folder / "first.png")
    home = tmp_path / "h"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    env |= {"IMGSEARCH_HOME": str(home), "IMGSEARCH_WATCH__SETTLE_SECONDS": "0.3", **tiny_env(tiny)}
    log = tmp_path / "watch.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsearch", "watch", str(folder), "--log-file", str(log)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: log.exists() and "indexed 1 new" in log.read_text(), timeout=120)
        draw(folder / "second.png", "yellow", "triangle", seed=9)
        reader = Library(load_settings(home, overrides=tiny_overrides(tiny)))
        wait_for(lambda: reader.store.count() == 2)
        assert [h.path for h in reader.query("a yellow triangle", k=1)] == [str(folder / "second.png")]
        reader.close()
        busy = subprocess.run(
            [sys.executable, "-m", "imgsearch", "index", str(folder)], env=env, capture_output=True, text=True
        )
        assert busy.returncode == 1 and "being indexed by pid" in busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err


def test_lost_events_mean_a_full_reconciliation(tmp_path: Path) -> None:
    """When the kernel queue overflows, watchdog only logs it; the next pass must then reconcile everything."""
    import logging

    from imgsearch.indexer.watch import Watcher

    watcher = Watcher([str(tmp_path)], ["png"], [".*"], settle_seconds=0.2)
    watcher.start()
    stop = threading.Event()
    try:
        draw(tmp_path / "seen.png")
        first = watcher.next_pass(stop)
        assert first is not None and str(tmp_path / "seen.png") in first
        draw(tmp_path / "dropped.png", seed=1)
        wait_for(lambda: bool(watcher.changes.paths))
        watcher.changes.take(list(watcher.changes.paths))  # as if the kernel had dropped the events
        logging.getLogger("watchdog.observers.inotify_buffer").warning("Inotify queue overflowed; events were lost")
        assert watcher.next_pass(stop) is None
    finally:
        watcher.stop()


def test_mid_burst_a_moved_file_goes_with_its_source(tmp_path: Path) -> None:
    """During a long burst, complete files are indexed in chunks before the tree is quiet; a moved file among
    them must take its source along, or the pass would see a copy of a row that is still there (a new id)."""
    from imgsearch.indexer.watch import BURST_CHUNK, Watcher

    watched, moved = tmp_path / "watched", tmp_path / "moved"
    watched.mkdir()
    moved.mkdir()
    watcher = Watcher([str(watched)], ["png"], [".*"], settle_seconds=2.0)
    watcher.start()
    try:
        pairs = {}
        for i in range(BURST_CHUNK + 10):
            (moved / f"{i}.png").write_bytes(b"x")
            pairs[str(moved / f"{i}.png")] = str(watched / f"{i}.png")
            watcher.changes.add_move(pairs[str(moved / f"{i}.png")], str(moved / f"{i}.png"))
        long_ago = time.monotonic() - 10
        watcher.changes.paths.update(dict.fromkeys(watcher.changes.paths, long_ago))  # settled halves of moves
        watcher.changes.add(str(watched / "still-copying.png"))  # the burst goes on: not quiet
        ready = watcher.next_pass(threading.Event())
        assert ready == set(pairs) | set(pairs.values())
        assert list(watcher.changes.paths) == [str(watched / "still-copying.png")] and not watcher.changes.sources
    finally:
        watcher.stop()


def test_burst_and_mass_move_with_a_query_process_beside(watching, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Thousands of new files, then 1,000 moved between folders: index equals disk, moves are not
    re-embedded, and a separate query process sees no 'database is locked' meanwhile."""
    import subprocess
    import sys

    w, folder = watching
    script = tmp_path / "queries.py"
    script.write_text(
        "import sys, time\n"
        "from imgsearch import Library, load_settings\n"
        "lib = Library(load_settings(sys.argv[1], overrides=dict(a.split('=', 1) for a in sys.argv[3:])))\n"
        "lib.embedder\n"
        "print('ready', flush=True)\n"
        "errors = queries = 0\n"
        "end = time.monotonic() + float(sys.argv[2])\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        lib.query('a red circle', k=5); queries += 1\n"
        "    except Exception as exc:\n"
        "        errors += 1; print('error', exc, flush=True)\n"
        "print('queries', queries, 'errors', errors, flush=True)\n"
    )
    args = [f"{k}={v}" for k, v in tiny_overrides(tiny).items()]
    proc = subprocess.Popen(
        [sys.executable, str(script), str(w.lib.settings.home), "25", *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    for i in range(2000):
        draw(folder / f"in-{i // 500}" / f"{i}.png", seed=5000 + i)
    expected = {str(p) for p in folder.rglob("*.png")}
    wait_for(lambda: w.paths() == expected, timeout=120)
    burst_seconds = time.monotonic() - started
    settled(w)
    assert w.embedded_since_start() == 2000
    ids_before = {p: i for i, p in w.lib.store.paths_of(w.lib.store.all_vectors()[0].tolist()).items()}
    (folder / "moved").mkdir()
    for i in range(1000):
        (folder / f"in-{i // 500}" / f"{i}.png").rename(folder / "moved" / f"{i}.png")
    expected = {str(p) for p in folder.rglob("*.png")}
    wait_for(lambda: w.paths() == expected, timeout=120)
    settled(w)
    out, _ = proc.communicate(timeout=120)
    assert w.embedded_since_start() == 2000, "moves are not re-embedded"
    now = {p: i for i, p in w.lib.store.paths_of(w.lib.store.all_vectors()[0].tolist()).items()}
    assert len(now) == 2001 == w.lib.store.count()
    assert all(
        now[str(folder / "moved" / f"{i}.png")] == ids_before[str(folder / f"in-{i // 500}" / f"{i}.png")]
        for i in range(1000)
    )
    last = out.strip().splitlines()[-1].split()
    assert last[0] == "queries" and int(last[1]) > 0 and last[3] == "0", out
    print(f"burst: 2000 files indexed {burst_seconds:.1f} s after the first was written; {last[1]} queries meanwhile")


def test_sigterm_mid_pass_then_restart_loses_nothing(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    import signal
    import sqlite3
    import subprocess
    import sys

    from tests.conftest import tiny_env

    folder, home = tmp_path / "pics", tmp_path / "h"
    draw(folder / "first.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    env |= {"IMGSEARCH_HOME": str(home), "IMGSEARCH_WATCH__SETTLE_SECONDS": "0.3", **tiny_env(tiny)}
    env["IMGSEARCH_INDEX__BATCH_SIZE"] = "2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsearch", "watch", str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def count() -> int:
        try:
            with sqlite3.connect(home / "imgsearch.db", timeout=30) as db:
                return int(db.execute("select count(*) from images").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    try:
        wait_for(lambda: count() == 1, timeout=120)
        for i in range(600):
            draw(folder / f"{i}.png", seed=i)
        wait_for(lambda: count() > 20, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    at_stop = count()
    assert 1 < at_stop < 601, "the signal should land part-way through the pass"
    resumed = subprocess.run(
        [sys.executable, "-m", "imgsearch", "index", str(folder), "--json"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    import json

    report = json.loads(resumed.stdout)
    assert report["embedded"] == 601 - at_stop and report["unchanged"] == at_stop
    with sqlite3.connect(home / "imgsearch.db") as db:
        paths = [r[0] for r in db.execute("select path from images")]
    assert sorted(paths) == sorted(str(p) for p in folder.glob("*.png"))


def test_watch_says_when_events_were_lost_and_rescans(watching) -> None:  # type: ignore[no-untyped-def]
    import logging

    w, _ = watching
    passes = len(w.reports)
    logging.getLogger("watchdog.observers.inotify_buffer").warning("Inotify queue overflowed; events were lost")
    wait_for(lambda: len(w.reports) > passes)
    assert w.notices and "events were lost" in w.notices[0]
    assert w.reports[-1].unchanged == 1, "the pass after lost events reconciles the whole tree"


def test_a_dead_emitter_is_noticed_and_means_a_full_reconciliation(tmp_path: Path) -> None:
    from imgsearch.indexer.watch import Watcher

    watcher = Watcher([str(tmp_path)], ["png"], [".*"], settle_seconds=0.2)
    watcher.start()
    try:
        for emitter in list(watcher.observer.emitters):
            emitter.stop()  # as an OSError inside the emitter thread would
            emitter.join(5)
        assert not watcher.alive()
        assert watcher.next_pass(threading.Event()) is None
        assert watcher.alive(), "the observer was restarted"
        draw(tmp_path / "after.png")
        wait_for(lambda: str(tmp_path / "after.png") in watcher.changes.paths)
    finally:
        watcher.stop()


def test_unwatchable_folder_is_a_one_line_error(tmp_path: Path) -> None:
    from imgsearch.errors import WatchError
    from imgsearch.indexer.watch import Watcher

    watcher = Watcher([str(tmp_path / "gone")], ["png"], [], settle_seconds=0.2)
    with pytest.raises(WatchError, match="^watch: cannot watch"):
        watcher.start()


@pytest.mark.faiss_file
def test_a_large_index_file_is_written_every_so_many_changes_and_on_stopping(
    home: Path, tiny, tiny_embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Rewriting a file of hundreds of MB for each photo that arrives is what watch must not do: the index stays
    in memory between passes, the file is written once enough has changed, and queries meanwhile add the images
    it lacks. Here every file counts as large and 3 changes are enough."""
    from imgsearch.store import cache, sync

    monkeypatch.setattr(cache, "DEFER_BYTES", 0)
    monkeypatch.setattr(cache, "SAVE_AFTER_CHANGES", 3)
    reads: list[int] = []
    from_file = sync.from_file
    monkeypatch.setattr(sync, "from_file", lambda *a, **k: reads.append(k["mapped"]) or from_file(*a, **k))
    folder = tmp_path / "watched"
    draw(folder / "start.png", "blue", "square")
    overrides = dict(tiny_overrides(tiny), **{"watch.settle_seconds": "0.3"})
    settings = load_settings(home, overrides=overrides)
    lib = Library(settings, embedder=tiny_embedder)
    w = Running(lib, folder)
    written = settings.vector_index_path.stat().st_mtime_ns
    reader = Library(settings, embedder=tiny_embedder)  # another process's view: the file plus what it lacks
    try:
        for i, color in enumerate(("red", "green")):
            draw(folder / f"new-{i}.png", color, "circle", seed=i)
            wait_for(lambda n=i + 2: lib.store.count() == n)
            settled(w, 0.8)
            assert settings.vector_index_path.stat().st_mtime_ns == written, "2 changes: the file is left as it was"
            assert reader.query(f"a {color} circle", k=1)[0].path == str(folder / f"new-{i}.png")
        os.remove(folder / "start.png")  # the third change
        wait_for(lambda: lib.store.count() == 2)
        settled(w, 0.8)
        assert settings.vector_index_path.stat().st_mtime_ns != written
        assert reads.count(False) == 0, "passes go on with the index in memory: the writer never reads the file"
        loaded = sync.load(lib.store, settings.vector_index_path, settings.search)
        assert loaded.exact and len(loaded.index) == 2
        written = settings.vector_index_path.stat().st_mtime_ns
        draw(folder / "last.png", "blue", "triangle")
        wait_for(lambda: lib.store.count() == 3)
        settled(w, 0.8)
        assert settings.vector_index_path.stat().st_mtime_ns == written
    finally:
        w.stop.set()
        w.thread.join(timeout=30)
        reader.close()
    loaded = sync.load(lib.store, settings.vector_index_path, settings.search)
    assert loaded.exact and len(loaded.index) == 3, "stopping writes what was left unsaved"
    lib.close()

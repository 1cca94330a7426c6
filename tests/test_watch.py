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


class Running:
    def __init__(self, lib: Library, folder: Path):
        self.lib = lib
        self.reports: list[IndexReport] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=lib.watch,
            args=([folder],),
            kwargs={
                "stop": self.stop,
                "on_pass": self.reports.append,
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
    assert after[str(target)] == before[str(target)]


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

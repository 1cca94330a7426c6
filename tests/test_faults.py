"""Crashes and bad files lose nothing: kill -9 of a real `imgsearch index` (mid-run and inside the index
save), a damaged FAISS file (30 truncations, 30 bit flips), a full disk or failing write during the save
(simulated, and for real on a small tmpfs when running as root). benchmarks/fault_kill.py runs many more kills.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Library, load_settings
from imgsearch.errors import StoreError
from imgsearch.store import sync, vectors
from tests import crashkit
from tests.conftest import tiny_env, tiny_overrides

CAPTIONS = ["a red circle", "a green square", "a blue triangle", "a yellow circle"]


# kill -9 of a real index process


def test_kill_9_mid_run_then_restart_loses_nothing(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    """Killed with its third batch embedded but not committed: the restart embeds that batch again and
    every file not committed, nothing else (benchmarks/fault_kill.py kills at random moments)."""
    folder = tmp_path / "pictures"
    crashkit.make_pictures(folder, 48)
    hook = crashkit.install_hook(tmp_path / "hook")
    t = crashkit.trial(folder, tmp_path / "home", tiny_env(tiny), hook, crashkit.kill_after(0), "batch-embedded")
    assert t.problems == []
    assert 0 < t.rows_at_kill < 48 and t.restart_embedded == t.uncommitted == 48 - t.rows_at_kill
    assert 0 < t.lost <= 8, "a kill throws away the batch in flight, and only that"


@pytest.mark.parametrize(
    ("point", "state", "rebuilt"),
    [("before-rename", "stale", False), ("meta-uncommitted", "unverified", True)],
)
def test_kill_9_inside_the_index_save_then_restart_loses_nothing(  # type: ignore[no-untyped-def]
    tmp_path: Path, tiny, tiny_embedder, point: str, state: str, rebuilt: bool
) -> None:
    """Killed with the new file written but not renamed (a temp file is left): the old file is intact and used,
    its 4 deleted images dropped from results. Killed with it renamed into place but its checksum not
    committed: the old checksum no longer matches, so the file is rebuilt, never trusted."""
    folder, home = tmp_path / "pictures", tmp_path / "home"
    files = crashkit.make_pictures(folder, 40)
    with Library(load_settings(home, overrides=tiny_overrides(tiny)), embedder=tiny_embedder) as lib:
        lib.index([folder])
    for f in files[:4]:  # the run to kill removes them, then saves (and needs no model: it starts fast)
        f.unlink()
    hook = crashkit.install_hook(tmp_path / "hook")
    t = crashkit.trial(folder, home, tiny_env(tiny), hook, crashkit.kill_after(0), kill_at=point)
    assert t.problems == []
    assert (t.rows_at_kill, t.uncommitted, t.restart_embedded) == (36, 0, 0), "the removal was committed"
    assert t.file_state_at_kill == state and t.rebuilt_at_kill == rebuilt
    assert t.temp_files_at_kill == (point == "before-rename")


# a damaged FAISS file


Answers = dict[str, list[tuple[int, float]]]


@pytest.fixture
def indexed(lib: Library, tmp_path: Path) -> Iterator[tuple[Library, dict[str, np.ndarray], Answers]]:
    folder = tmp_path / "pictures"
    crashkit.make_pictures(folder, 40)
    lib.index([folder])
    queries = {c: lib.query_vector(lib.parse_query(c)) for c in CAPTIONS}
    yield lib, queries, answers(lib, queries)


def answers(lib: Library, queries: dict[str, np.ndarray]) -> Answers:
    return {c: [(h.id, round(h.score, 5)) for h in lib.search_vector(v, k=5)] for c, v in queries.items()}


def damage(path: Path, kind: str, rng: random.Random, case: int) -> None:
    raw = bytearray(path.read_bytes())
    if kind == "truncate":
        raw = raw[: (0, len(raw) - 1)[case] if case < 2 else rng.randrange(len(raw))]
    else:
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", ["truncate", "bitflip"])
def test_damaged_index_file_is_detected_rebuilt_and_answers_stay_right(indexed, kind: str) -> None:  # type: ignore[no-untyped-def]
    """30 cases each: the checksum catches every one (faiss never parses a damaged file, so it cannot crash),
    the index is rebuilt from SQLite, the answers are the same, and the query saves the rebuilt file."""
    lib, queries, expected = indexed
    path = lib.settings.vector_index_path
    rng = random.Random(kind)
    for case in range(30):
        damage(path, kind, rng, case)
        checksum = lib.store.get_meta("vectors_checksum") or ""
        assert vectors.read_checked(path, checksum, sync.choose_params(lib.settings.search, 40)) is None
        fresh = Library(lib.settings, embedder=lib.embedder)  # as a new process would, it reads the file afresh
        try:
            assert sync.load(fresh.store, path, lib.settings.search).rebuilt, f"case {case}: not detected"
            assert answers(fresh, queries) == expected, f"case {case}"
        finally:
            fresh.close()
        assert not sync.load(lib.store, path, lib.settings.search).rebuilt, "the query saved the rebuilt file"


# a full disk or a failing write during the save


def _enospc(*args: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _eio(*args: object) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


class _FailingOs:
    """`os` as imgsearch.store.vectors sees it, with some calls replaced."""

    def __init__(self, **replaced: object):
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


def _write_half_then_enospc() -> object:
    calls = []

    def write(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) > 1:
            _enospc()
        return os.write(fd, bytes(data[: len(data) // 2]))

    return write


FAILURES = {
    "write ENOSPC": ("write", lambda: _enospc),
    "short write then ENOSPC": ("write", _write_half_then_enospc),
    "write claims success, writes nothing": ("write", lambda: lambda fd, data: len(data)),
    "fsync ENOSPC": ("fsync", lambda: _enospc),
    "rename EIO": ("replace", lambda: _eio),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failed_save_is_one_error_and_the_previous_index_still_loads(  # type: ignore[no-untyped-def]
    lib: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    folder = tmp_path / "pictures"
    crashkit.make_pictures(folder, 24)
    lib.index([folder])
    path = lib.settings.vector_index_path
    before, checksum = path.read_bytes(), lib.store.get_meta("vectors_checksum") or ""
    crashkit.make_pictures(folder, 8, seed=1, prefix="new")
    name, make = FAILURES[failure]
    with monkeypatch.context() as m:
        m.setattr(vectors, "os", _FailingOs(**{name: make()}))
        with pytest.raises(StoreError) as info:
            lib.index([folder])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot save the vector index {path}: ")
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.glob("vectors.faiss*")) == [path.name]
    previous = vectors.read_checked(path, checksum, sync.choose_params(lib.settings.search, 24))
    now = sync.load(lib.store, path, lib.settings.search)
    assert not now.rebuilt and len(now.extra_ids) == 8, "queries use the previous file, and the 8 new images beside it"
    assert previous is not None and crashkit.ids_of(previous) == crashkit.ids_of(now.index)
    assert lib.store.count() == 32, "the batches were committed before the save"
    assert {h.path for h in lib.query("a red circle", k=32)} == {str(p) for p in folder.iterdir()}
    again = lib.index([folder])
    assert again.embedded == 0 and not sync.load(lib.store, path, lib.settings.search).rebuilt


def test_a_run_with_nothing_to_do_rewrites_no_index_file(lib: Library, tmp_path: Path) -> None:
    """Fewer writes, fewer windows for a crash: an unchanged index (verified when loaded) is not written again."""
    folder = tmp_path / "pictures"
    files = crashkit.make_pictures(folder, 16)
    lib.index([folder])
    path = lib.settings.vector_index_path
    before = path.stat()
    assert lib.index([folder]).unchanged == 16
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    files[0].unlink()
    lib.index([folder])
    assert path.stat().st_ino != before.st_ino and not sync.load(lib.store, path, lib.settings.search).rebuilt


def test_cli_failed_save_exits_1_with_one_line(  # type: ignore[no-untyped-def]
    tmp_path: Path, home: Path, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from imgsearch.cli import cli

    for name, value in tiny_env(tiny).items():
        monkeypatch.setenv(name, value)
    folder = tmp_path / "pictures"
    crashkit.make_pictures(folder, 8)
    monkeypatch.setattr(vectors, "os", _FailingOs(fsync=_enospc))
    result = CliRunner().invoke(cli, ["index", str(folder), "--quiet"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"imgsearch: cannot save the vector index {home / 'vectors.faiss'}: No space left on device "
        "(what was indexed is kept in the database; the index is rebuilt from it when it is next needed)"
    ]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only): a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    st = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _home_with_vectors(home: Path, tiny, tiny_embedder, paths: list[str]) -> Library:  # type: ignore[no-untyped-def]
    """A home holding random vectors for paths (no files: quick to make, and large: about 264 bytes each)."""
    from imgsearch.embed import configured_model_id
    from imgsearch.store.repository import NewImage

    lib = Library(load_settings(home, overrides=tiny_overrides(tiny)), embedder=tiny_embedder)
    data = np.random.default_rng(0).standard_normal((len(paths), 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    with lib.store.write() as conn:
        lib.store.claim_model(conn, configured_model_id(lib.settings), 64)
        for i, (path, vec) in enumerate(zip(paths, data, strict=True)):
            lib.store.insert_image(conn, NewImage(path, 1, 1, f"h{i}", 64, 64, vec))
        lib.store.bump_generation(conn)
    return lib


def test_really_full_disk_during_the_save(small_disk: Path, tmp_path: Path, tiny, tiny_embedder) -> None:  # type: ignore[no-untyped-def]
    """A real process on a really full tmpfs: the removal commits (SQLite has room), the 530 KB index does not
    fit: exit 1 with one line, the previous file still loads, and a run after space is freed completes."""
    home, folder = small_disk / "home", tmp_path / "pictures"
    files = crashkit.make_pictures(folder, 4)
    elsewhere = [f"/elsewhere/{i}.png" for i in range(2000)]  # an index of folder leaves them alone
    lib = _home_with_vectors(home, tiny, tiny_embedder, elsewhere)
    lib.index([folder])
    path = lib.settings.vector_index_path
    before, checksum = path.read_bytes(), lib.store.get_meta("vectors_checksum") or ""
    filler = _fill(small_disk, len(before) // 2)
    files[0].unlink()
    env = crashkit.child_env(tiny_env(tiny), home)
    done = subprocess.run(
        [sys.executable, "-m", "imgsearch", "index", str(folder)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"imgsearch: cannot save the vector index {path}: No space left on device "
        "(what was indexed is kept in the database; the index is rebuilt from it when it is next needed)"
    ]
    a = crashkit.audit(home)
    assert crashkit.problems(a) == [] and a.row_count == 2003 and a.file_state == "stale" and a.temp_files == []
    assert path.read_bytes() == before
    previous = vectors.read_checked(path, checksum, sync.choose_params(lib.settings.search, 2004))
    assert previous is not None and len(previous) == 2004
    assert [h.path for h in lib.query(images=[files[1]], k=1)] == [str(files[1])], "queries work on a full disk"
    lib.close()
    filler.unlink()
    assert crashkit.run_index(folder, env)["embedded"] == 0
    on_disk = {str(p) for p in files[1:]} | set(elsewhere)
    assert crashkit.settled_problems(crashkit.audit(home), on_disk) == []


def test_really_full_disk_during_a_commit_is_one_line(small_disk: Path, tmp_path: Path, tiny, tiny_embedder) -> None:  # type: ignore[no-untyped-def]
    home, folder = small_disk / "home", tmp_path / "pictures"
    folder.mkdir()
    gone = [str(folder / f"{i}.png") for i in range(2000)]  # removing them needs more room in the WAL than is left
    _home_with_vectors(home, tiny, tiny_embedder, gone).close()
    _fill(small_disk, 64 * 1024)
    done = subprocess.run(
        [sys.executable, "-m", "imgsearch", "index", str(folder)],
        env=crashkit.child_env(tiny_env(tiny), home),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert crashkit.problems(crashkit.audit(home)) == []

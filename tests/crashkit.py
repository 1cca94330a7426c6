"""Crash kit: run `python -m imgsearch index` as a real process, kill -9 it, and audit what it left.

Used by tests/test_faults.py (a few kills) and benchmarks/fault_kill.py (many). Nothing here is in the
product. A `sitecustomize` module put on the child's PYTHONPATH (scaffolding, see HOOK) can

* log the size of every batch the model embedded (CRASHKIT_EMBED_LOG), to count work a kill threw away, and
* SIGKILL the process at a named point (CRASHKIT_KILL_AT): "batch-embedded" (the third batch embedded, not yet
  committed) or one of SAVE_POINTS, inside the vector-index save.

`audit` reads the home the way an independent observer would (sqlite3 for the rows and the integrity
check, the product's own loader for the FAISS file) and `problems` lists every invariant that fails.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests import tinyclip

ROOT = Path(__file__).resolve().parent.parent

# Where the save can be cut short: the temp file written but not fsynced; fsynced but not renamed;
# renamed into place but its checksum not yet committed to SQLite; the checksum written, uncommitted.
SAVE_POINTS = ("tmp-written", "before-rename", "after-rename", "meta-uncommitted")

HOOK = '''"""crashkit scaffolding, loaded by the child through PYTHONPATH (see tests/crashkit.py)."""
import os
import signal
import threading


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


_log = os.environ.get("CRASHKIT_EMBED_LOG")
_at = os.environ.get("CRASHKIT_KILL_AT")
if _log:
    from imgsearch.indexer.pipeline import LazyEmbedder  # not the model's module: a run that embeds nothing stays quick

    _get = LazyEmbedder.get
    _lock = threading.Lock()  # reader threads ask for the embedder too
    _calls = []

    def _get_logged(self):
        embedder = _get(self)
        with _lock:
            if hasattr(embedder, "_crashkit"):
                return embedder
            embedder._crashkit = embed = embedder.embed_prepared

            def logged(batch):
                out = embed(batch)
                fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(fd, b"%d\\n" % len(batch))
                os.close(fd)
                _calls.append(len(batch))
                if _at == "batch-embedded" and len(_calls) == 3:
                    _die()
                return out

            embedder.embed_prepared = logged
            return embedder

    LazyEmbedder.get = _get_logged
if _at in ("tmp-written", "before-rename", "after-rename", "meta-uncommitted"):
    from imgsearch.store import repository, vectors

    class _Os:
        """The vector module's view of `os`, with a kill at the chosen point."""

        def __getattr__(self, name):
            return getattr(os, name)

        def fsync(self, fd):
            if _at == "tmp-written":
                _die()
            return os.fsync(fd)

        def replace(self, src, dst):
            if _at == "before-rename":
                _die()
            os.replace(src, dst)
            if _at == "after-rename":
                _die()

    vectors.os = _Os()
    if _at == "meta-uncommitted":
        _set_meta = repository.Store.set_meta

        def _set_then_die(self, conn, key, value):
            _set_meta(self, conn, key, value)
            if key == "vectors_checksum":
                _die()

        repository.Store.set_meta = _set_then_die
'''


def install_hook(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(HOOK)
    return directory


def model_env(tiny: tinyclip.TinyCheckpoint) -> dict[str, str]:
    """The IMGSEARCH_* variables that point a child process at the tiny model."""
    return {
        "IMGSEARCH_MODEL__NAME": tiny.name,
        "IMGSEARCH_MODEL__CONFIG_FILE": str(tiny.config_path),
        "IMGSEARCH_MODEL__PRETRAINED": str(tiny.checkpoint_path),
    }


def child_env(
    model_env: Mapping[str, str],
    home: Path,
    hook: Path | None = None,
    embed_log: Path | None = None,
    kill_at: str | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGSEARCH_", "CRASHKIT_"))}
    env |= {"IMGSEARCH_HOME": str(home), **model_env}
    if hook is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(hook), str(ROOT)])
    if embed_log is not None:
        env["CRASHKIT_EMBED_LOG"] = str(embed_log)
    if kill_at is not None:
        env["CRASHKIT_KILL_AT"] = kill_at
    return env


def start_index(folder: Path, env: Mapping[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imgsearch", "index", str(folder), "--quiet", *extra],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def run_index(folder: Path, env: Mapping[str, str]) -> dict[str, object]:
    """An index run to completion; its --json report."""
    done = subprocess.run(
        [sys.executable, "-m", "imgsearch", "index", str(folder), "--json"],
        env=dict(env),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise AssertionError(f"index exited {done.returncode}: {done.stderr.strip()}")
    report: dict[str, object] = json.loads(done.stdout)
    return report


def make_pictures(folder: Path, count: int, seed: int = 0, prefix: str = "p") -> list[Path]:
    """count pictures of distinct content (so each one is embedded, none is a copy)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seen = {hashlib.blake2b(p.read_bytes()).digest() for p in folder.iterdir() if p.is_file()}
    paths: list[Path] = []
    while len(paths) < count:
        color, shape = rng.choice(list(tinyclip.COLORS)), rng.choice(tinyclip.SHAPES)
        path = folder / f"{prefix}{len(paths):04d}-{color}-{shape}.png"
        tinyclip.draw(color, shape, rng).save(path)
        digest = hashlib.blake2b(path.read_bytes()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        paths.append(path)
    return paths


# the audit


@dataclass(frozen=True)
class Row:
    id: int
    indexed_at: float
    vector_sha: str


@dataclass
class Audit:
    integrity: str = "ok"
    rows: dict[str, Row] = field(default_factory=dict)
    row_count: int = 0
    file_state: str = "missing"  # current | stale (valid, older generation) | unverified (checksum differs) | missing
    file_ids: set[int] | None = None  # ids in the file when it is current
    product_rebuilt: bool | None = None  # sync.load: False = the file was used as it is
    product_ids: set[int] = field(default_factory=set)  # the ids a query can find (see _audit_file)
    temp_files: list[str] = field(default_factory=list)

    @property
    def ids(self) -> set[int]:
        return {r.id for r in self.rows.values()}


def audit(home: Path) -> Audit:
    """What a kill left in home: checked with sqlite3 and with the product's own loader."""
    result = Audit(temp_files=sorted(p.name for p in home.glob("vectors.faiss.*")))
    db = home / "imgsearch.db"
    if not db.exists():
        return result
    with sqlite3.connect(db, timeout=60) as conn:
        result.integrity = ";".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        if "images" not in tables:
            return result
        rows = conn.execute("select id, path, indexed_at, vector from images").fetchall()
        meta = dict(conn.execute("select key, value from meta").fetchall())
    result.row_count = len(rows)
    result.rows = {p: Row(i, t, hashlib.sha256(v).hexdigest()) for i, p, t, v in rows}
    _audit_file(home, result, meta)
    return result


def _audit_file(home: Path, result: Audit, meta: dict[str, str]) -> None:
    from imgsearch.config import load_settings
    from imgsearch.store import sync, vectors
    from imgsearch.store.repository import Store

    settings = load_settings(home, environ={})
    path = settings.vector_index_path
    params = sync.choose_params(settings.search, result.row_count)
    if path.exists():
        index = vectors.read_checked(path, meta.get("vectors_checksum", ""), params)
        if index is None:
            result.file_state = "unverified"
        elif meta.get("vectors_generation") == meta.get("generation", "0"):
            result.file_state, result.file_ids = "current", ids_of(index)
        else:
            result.file_state = "stale"
    if not result.rows:
        return
    store = Store(settings.database_path)
    try:
        loaded = sync.load(store, path, settings.search)
    finally:
        store.close()
    # A file behind the database answers with what changed since: the ids it holds that are gone are dropped
    # from results (they must number exactly `dropped`), and the images added since come from SQLite.
    held = ids_of(loaded.index) | set(loaded.extra_ids.tolist())
    result.product_rebuilt, result.product_ids = loaded.rebuilt, held & result.ids
    if len(held - result.ids) != loaded.dropped:
        result.product_ids.add(-1)  # reported as an extra id


def ids_of(index: object) -> set[int]:
    """The image ids held by a FaissIndex (its IndexIDMap2's id map)."""
    from imgsearch.store.vectors import faiss

    return {int(i) for i in faiss.vector_to_array(index.index.id_map)}  # type: ignore[attr-defined]


def problems(a: Audit) -> list[str]:
    """Invariants that hold at every instant, a kill -9 included."""
    found = []
    if a.integrity != "ok":
        found.append(f"integrity_check: {a.integrity}")
    if len(a.rows) != a.row_count:
        found.append(f"{a.row_count - len(a.rows)} duplicate paths")
    if a.file_state == "current" and a.file_ids != a.ids:
        found.append(f"the FAISS file passes its checks but holds other ids ({_diff(a.file_ids or set(), a.ids)})")
    if a.rows and a.product_ids != a.ids:
        found.append(f"sync.load gives other ids than SQLite ({_diff(a.product_ids, a.ids)})")
    return found


def settled_problems(a: Audit, on_disk: set[str]) -> list[str]:
    """Invariants after a run that finished: also current, complete and tidy."""
    found = problems(a)
    if a.file_state != "current" or a.product_rebuilt:
        found.append(f"the FAISS file is {a.file_state} after a completed run (sync.load rebuilt: {a.product_rebuilt})")
    if set(a.rows) != on_disk:
        found.append(f"index != disk: {len(set(a.rows) - on_disk)} extra, {len(on_disk - set(a.rows))} missing")
    if a.temp_files:
        found.append(f"temp files left: {a.temp_files}")
    return found


def _diff(got: set[int], want: set[int]) -> str:
    return f"{len(got - want)} extra, {len(want - got)} missing"


# kills


def kill_after(seconds: float) -> Callable[[subprocess.Popen[str], Path], str]:
    def kill(proc: subprocess.Popen[str], home: Path) -> str:
        try:
            proc.wait(seconds)
            return "finished first"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            return f"at {seconds:.2f} s"

    return kill


def kill_when_committed(rows: int, timeout: float = 120) -> Callable[[subprocess.Popen[str], Path], str]:
    """Kill once at least `rows` images are committed: mid-run, whatever the machine's speed."""

    def kill(proc: subprocess.Popen[str], home: Path) -> str:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if count_rows(home / "imgsearch.db") >= rows:
                proc.send_signal(signal.SIGKILL)
                return f"after {rows}+ rows"
            time.sleep(0.01)
        return "finished first"

    return kill


def count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=60) as conn:
            return int(conn.execute("select count(*) from images").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def kill_when_created(prefix: str, timeout: float = 120) -> Callable[[subprocess.Popen[str], Path], str]:
    """Kill as soon as inotify reports a file named prefix* in the home (the save's temp file): no hook."""

    def kill(proc: subprocess.Popen[str], home: Path) -> str:
        with Inotify(home) as watch:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if any(name.startswith(prefix) for name in watch.read(0.2)):
                    proc.send_signal(signal.SIGKILL)
                    return "on temp file creation"
        return "finished first"

    return kill


class Inotify:
    """IN_CREATE events of one folder, through libc (Linux)."""

    IN_CREATE = 0x100

    def __init__(self, folder: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(folder).encode(), self.IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def read(self, timeout: float) -> list[str]:
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        data, names, offset = os.read(self.fd, 65536), [], 0
        while offset < len(data):
            _, _, _, length = struct.unpack_from("iIII", data, offset)
            names.append(data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode())
            offset += 16 + length
        return names

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# one trial: a killed run, then a restart


@dataclass
class Trial:
    how: str
    rows_before: int = 0  # committed before the killed run began
    rows_at_kill: int = 0
    embedded_by_killed: int = 0  # images the model embedded in the killed run
    lost: int = 0  # of those, not committed: the restart embeds them again
    uncommitted: int = 0  # files on disk without a row at the kill
    restart_embedded: int = 0
    file_state_at_kill: str = ""
    temp_files_at_kill: int = 0
    rebuilt_at_kill: bool | None = None
    problems: list[str] = field(default_factory=list)


def trial(
    folder: Path,
    home: Path,
    model_env: Mapping[str, str],
    hook: Path,
    kill: Callable[[subprocess.Popen[str], Path], str],
    kill_at: str | None = None,
    scratch: Path | None = None,
) -> Trial:
    """Start `imgsearch index folder`, kill it with `kill` (or at the save point kill_at), audit, restart, audit."""
    scratch = scratch or home.parent
    log = scratch / f"embedded-{time.monotonic_ns()}.log"
    home.mkdir(parents=True, exist_ok=True)
    before = audit(home)
    proc = start_index(folder, child_env(model_env, home, hook, log, kill_at))
    how = kill(proc, home) if kill_at is None else f"at {kill_at}"
    _, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"the run to kill failed (exit {proc.returncode}): {err.strip()}")
    if proc.returncode == 0 and kill_at is None:
        how = "finished first"
    at_kill = audit(home)
    on_disk = {str(p) for p in folder.iterdir()}
    committed = {p: r for p, r in at_kill.rows.items() if p in on_disk}
    embedded = sum(int(n) for n in log.read_text().split()) if log.exists() else 0
    t = Trial(
        how=how,
        rows_before=len(before.rows),
        rows_at_kill=len(at_kill.rows),
        embedded_by_killed=embedded,
        lost=embedded - len(set(at_kill.rows) - set(before.rows)),
        uncommitted=len(on_disk - set(committed)),
        file_state_at_kill=at_kill.file_state,
        temp_files_at_kill=len(at_kill.temp_files),
        rebuilt_at_kill=at_kill.product_rebuilt,
    )
    t.problems += [f"at kill: {p}" for p in problems(at_kill)]
    report = run_index(folder, child_env(model_env, home))
    t.restart_embedded = int(report["embedded"])  # type: ignore[call-overload]
    after = audit(home)
    t.problems += [f"after restart: {p}" for p in settled_problems(after, on_disk)]
    batch = int(model_env.get("IMGSEARCH_INDEX__BATCH_SIZE", "32"))
    if t.lost > batch:
        t.problems.append(f"the kill threw away {t.lost} embedded images, more than a batch ({batch})")
    if t.restart_embedded != t.uncommitted:
        t.problems.append(f"restart embedded {t.restart_embedded}, but {t.uncommitted} files were not committed")
    changed = [p for p, r in committed.items() if after.rows.get(p) != r]
    if changed:
        t.problems.append(f"{len(changed)} committed rows were re-embedded or rewritten, e.g. {changed[0]}")
    return t

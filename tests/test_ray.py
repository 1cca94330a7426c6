"""`imgsearch index --ray`: decode and embed on a real Ray cluster, results as the plain pipeline's.

One cluster for the whole file (tests/raycluster.py: a head and a worker node, each its own `ray start`
process, in a network namespace with only loopback). The driver is `imgsearch index --ray` run as a
subprocess inside that namespace, as a user runs it, so it reaches the head without any test process
joining the namespace; the test then reads the result from the database, outside it.

Each embedding actor asks for 2 CPUs (index.ray_cpus_per_actor) on nodes of 2: one actor per node, so
killing the worker node kills an actor with work in flight.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Library, load_settings
from imgsearch.indexer.distributed import plan_actors
from tests import raycluster, tinyclip
from tests.conftest import SAMPLES, draw_shapes, tiny_env, tiny_overrides

# Not imported here: the test of `index` without --ray looks for it in a fresh process anyway.
pytestmark = pytest.mark.skipif(find_spec("ray") is None, reason="Ray is not installed: pip install -e '.[ray]'")

IMGSEARCH = Path(sys.executable).with_name("imgsearch")
NODE_CPUS = 2


@pytest.fixture(scope="session")
def cluster(tiny_embedder) -> Iterator[raycluster.Cluster]:  # type: ignore[no-untyped-def]
    """Depends on tiny_embedder: the tiny model's ONNX export exists before any actor loads the model."""
    reason = raycluster.unavailable()
    if reason:
        pytest.skip(reason)
    with raycluster.Cluster() as made:
        made.add_node(NODE_CPUS)
        made.add_node(NODE_CPUS)
        yield made


def ray_index(
    cluster: raycluster.Cluster,
    home: Path,
    folder: Path,
    tiny: tinyclip.TinyCheckpoint,
    extra_env: dict[str, str] | None = None,
    **index: str,
) -> subprocess.Popen[str]:
    """`imgsearch index FOLDER --ray HEAD --json`, started inside the cluster's namespace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")} | tiny_env(tiny)
    env |= {"IMGSEARCH_HOME": str(home), "IMGSEARCH_INDEX__RAY_CPUS_PER_ACTOR": str(NODE_CPUS)}
    env |= {"IMGSEARCH_INDEX__" + k.upper(): v for k, v in index.items()} | (extra_env or {})
    command = cluster.command(str(IMGSEARCH), "index", str(folder), "--ray", cluster.address, "--json")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report_of(process: subprocess.Popen[str], timeout: float = 120, exit_code: int = 0) -> dict[str, object]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == exit_code, err[-3000:]
    report: dict[str, object] = json.loads(out)
    return report


def rows(home: Path) -> dict[str, tuple[str, int, int, np.ndarray]]:
    """path -> (content hash, width, height, vector), failing on any path stored twice."""
    with sqlite3.connect(home / "imgsearch.db") as db:
        found = db.execute("SELECT path, content_hash, width, height, vector FROM images").fetchall()
    paths = [r[0] for r in found]
    assert len(paths) == len(set(paths)), "a path was written twice"
    return {r[0]: (r[1], r[2], r[3], np.frombuffer(r[4], dtype=np.float32)) for r in found}


def assert_same_index(ray_home: Path, plain_home: Path) -> None:
    ray, plain = rows(ray_home), rows(plain_home)
    assert set(ray) == set(plain)
    for path, (digest, width, height, vector) in plain.items():
        assert ray[path][:3] == (digest, width, height), path
        assert float(ray[path][3] @ vector) > 1 - 1e-5, path  # unit vectors: cosine


def test_ray_index_is_the_plain_index_and_a_second_run_embeds_nothing(  # type: ignore[no-untyped-def]
    cluster: raycluster.Cluster, lib: Library, shapes, tiny: tinyclip.TinyCheckpoint, tiny_embedder, tmp_path: Path
) -> None:
    folder, labels = shapes
    shutil.copy(SAMPLES / "astronaut.jpg", folder)  # 512 px: decoded at reduced scale, its own size recorded
    ray_home = tmp_path / "ray-home"
    first = report_of(ray_index(cluster, ray_home, folder, tiny))
    plain = lib.index([folder])
    assert (first["embedded"], first["skipped"]) == (plain.embedded, []) == (len(labels) + 1, [])
    assert_same_index(ray_home, lib.settings.home)

    with Library(load_settings(ray_home, overrides=tiny_overrides(tiny)), embedder=tiny_embedder) as ray_lib:
        for caption in sorted(set(labels.values())):
            assert [h.path for h in ray_lib.query(caption, k=5)] == [h.path for h in lib.query(caption, k=5)]

    second = report_of(ray_index(cluster, ray_home, folder, tiny))
    assert (second["embedded"], second["unchanged"]) == (0, len(labels) + 1)


def test_renames_copies_changes_and_bad_files_as_the_plain_pipeline(  # type: ignore[no-untyped-def]
    cluster: raycluster.Cluster, lib: Library, shapes, tiny: tinyclip.TinyCheckpoint, tmp_path: Path
) -> None:
    folder, labels = shapes
    ray_home = tmp_path / "ray-home"
    report_of(ray_index(cluster, ray_home, folder, tiny))
    lib.index([folder])
    paths = sorted(labels)
    tinyclip.draw("blue", "square", random.Random(99)).save(paths[0])  # changed
    os.utime(paths[0], ns=(1, 1))
    Path(paths[1]).unlink()  # deleted
    Path(paths[2]).rename(folder / "renamed.png")
    (folder / "copies").mkdir()
    shutil.copy(paths[3], folder / "copies" / "copy.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello")

    ray = report_of(ray_index(cluster, ray_home, folder, tiny), exit_code=3)  # 3: files were skipped
    plain = lib.index([folder])
    counts = ("embedded", "removed", "renamed", "copied", "touched", "unchanged")
    assert {k: ray[k] for k in counts} == {k: getattr(plain, k) for k in counts}
    assert (plain.embedded, plain.renamed, plain.copied) == (1, 1, 1)
    assert sorted((s["path"], s["reason"]) for s in ray["skipped"]) == sorted(  # type: ignore[attr-defined]
        (s.path, s.reason) for s in plain.skipped
    )
    assert_same_index(ray_home, lib.settings.home)


def test_a_node_killed_mid_run_still_writes_every_file_exactly_once(  # type: ignore[no-untyped-def]
    cluster: raycluster.Cluster, tiny: tinyclip.TinyCheckpoint, tmp_path: Path
) -> None:
    """A third node joins for this test alone and is killed (its raylet, SIGKILL) once the first batch is
    committed: its actor dies with batches in flight, which Ray retries on the actors left."""
    folder = tmp_path / "many"
    labels = draw_shapes(folder, per_class=25)  # 300 small files in batches of 2: a run of several seconds
    victim = cluster.add_node(NODE_CPUS)
    home = tmp_path / "home"
    job = ray_index(cluster, home, folder, tiny, batch_size="2")
    committed = _wait_for_rows(home / "imgsearch.db", job)
    cluster.kill(victim)
    out, err = job.communicate(timeout=180)
    assert job.returncode == 0, err[-3000:]
    report = json.loads(out)  # Ray's notices of the dead node went to stderr
    assert committed < len(labels), "the run ended before the kill: nothing was in flight"
    assert report["embedded"] == len(labels)
    assert set(rows(home)) == set(labels)  # every file once: rows() fails on a path stored twice


def _wait_for_rows(db: Path, job: subprocess.Popen[str], timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                count = int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
        except sqlite3.Error:  # not created yet
            count = 0
        if count:
            return count
        time.sleep(0.02)
    raise AssertionError(f"no batch committed (job exit {job.poll()})")


def test_an_error_on_the_cluster_is_one_line(  # type: ignore[no-untyped-def]
    cluster: raycluster.Cluster, shapes, tiny: tinyclip.TinyCheckpoint, tmp_path: Path
) -> None:
    """The actors cannot load the model (an unknown model.device, which only loading the model checks, and
    the driver never does): Ray's tracebacks and notices stay off the terminal; imgsearch's one line, exit 1."""
    folder, _ = shapes
    bad = {"IMGSEARCH_MODEL__DEVICE": "nodevice", "IMGSEARCH_MODEL__BACKEND": "open_clip"}
    failed = ray_index(cluster, tmp_path / "home", folder, tiny, extra_env=bad)
    out, err = failed.communicate(timeout=120)
    assert failed.returncode == 1, err[-3000:]
    assert "Traceback" not in err and not out
    assert err.strip().splitlines()[-1].startswith("imgsearch: on the Ray cluster: model.device: unknown device")


def test_an_unreachable_address_is_one_line_at_once(tmp_path: Path, shapes) -> None:  # type: ignore[no-untyped-def]
    """Nothing listens on port 1: refused at once (Ray itself would wait minutes for a head)."""
    folder, _ = shapes
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")} | {"IMGSEARCH_HOME": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run(
        [str(IMGSEARCH), "index", str(folder), "--ray", "127.0.0.1:1"], env=env, capture_output=True, text=True
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    message = "imgsearch: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"
    assert done.stderr.strip().splitlines() == [message]


def test_index_without_ray_never_imports_ray(tmp_path: Path, tiny: tinyclip.TinyCheckpoint, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    script = (
        "import sys\n"
        "from imgsearch.cli import cli\n"
        f"try:\n    cli(['index', {str(folder)!r}, '-q'], prog_name='imgsearch')\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print('ray' in sys.modules, any(m.startswith('ray.') for m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")} | tiny_env(tiny)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env | {"IMGSEARCH_HOME": str(tmp_path)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["False", "False"]
    assert f"indexed {len(labels)}" in done.stdout


@pytest.mark.parametrize(
    ("nodes", "gpus", "per_actor", "expected"),
    [
        ([2.0, 2.0], 0.0, 1.0, (4, 1.0, 0.0)),
        ([2.0, 2.0], 0.0, 2.0, (2, 2.0, 0.0)),
        ([16.0], 0.0, 4.0, (4, 4.0, 0.0)),
        ([2.0, 1.0], 0.0, 8.0, (1, 2.0, 0.0)),  # never more CPUs than the largest node has
        ([8.0, 8.0], 2.0, 4.0, (2, 4.0, 1.0)),  # one actor a GPU
    ],
)
def test_actors_one_per_gpu_else_per_cpus(
    nodes: list[float], gpus: float, per_actor: float, expected: tuple[int, float, float]
) -> None:
    assert plan_actors(nodes, gpus, per_actor) == expected

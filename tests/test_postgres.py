"""PostgreSQL with pgvector as the store (store.url), on a real throwaway server: what only it does.

The behaviour tests shared with SQLite (index, incremental, moves, tags, queries, watch) run on both stores
through the both_stores marker; here: several writers on several machines (processes with their own homes)
into one database, migrating SQLite to PostgreSQL and back, HNSW recall, and the one-line errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select

from imgsearch import Library, load_settings
from imgsearch.cli import cli
from imgsearch.errors import ConfigError, StoreError
from imgsearch.store.repository import Store
from imgsearch.store.schema import images
from tests import pgserver
from tests.conftest import draw_shapes, tiny_env, tiny_overrides


def open_lib(home: Path, tiny, embedder, url: str = "") -> Library:  # type: ignore[no-untyped-def]
    overrides = {**tiny_overrides(tiny), "store.url": url}
    return Library(load_settings(home, overrides=overrides, environ={}), embedder=embedder)


def ranking(lib: Library, text: str) -> list[tuple[str, float]]:
    return [(Path(h.path).name, round(h.score, 4)) for h in lib.query(text, k=8)]


def test_migrate_sqlite_to_postgresql_and_back_keeps_everything(  # type: ignore[no-untyped-def]
    postgres: pgserver.PgServer, tiny, tiny_embedder, shapes, tmp_path: Path
) -> None:
    folder, _ = shapes
    local = open_lib(tmp_path / "a", tiny, tiny_embedder)
    local.index([folder])
    local.set_tag("favourite", [next(iter(sorted(folder.iterdir())))])
    expected = ranking(local, "a red circle")
    rows = sorted((i, p) for i, p in local.store.paths_of(local.store.all_vectors()[0].tolist()).items())

    url = postgres.new_database()
    report = local.migrate(url)
    assert report.images == len(rows) and report.use == f"store.url={url}"
    assert local.store.count() == len(rows), "the source is left as it was"

    shared = open_lib(tmp_path / "b", tiny, tiny_embedder, url)
    assert sorted(shared.store.paths_of([i for i, _ in rows]).items()) == rows, "ids and paths carried over"
    assert ranking(shared, "a red circle") == expected
    assert [h.path for h in shared.tagged(["FAVOURITE"])] == [h.path for h in local.tagged(["favourite"])]
    assert not shared.settings.vector_index_path.exists(), "PostgreSQL searches its own vectors: no FAISS file"
    assert shared.index([folder]).embedded == 0, "incremental indexing carries on where SQLite left off"
    new = folder / "new.png"
    draw_shapes(tmp_path / "more", per_class=1, seed=9)
    os.replace(next((tmp_path / "more").iterdir()), new)
    shared.index([folder])
    assert shared.image_id_of(new) == max(i for i, _ in rows) + 1, "new ids continue after the copied ones"

    back = shared.migrate("sqlite")
    assert back.images == len(rows) + 1
    home_b = open_lib(tmp_path / "b", tiny, tiny_embedder)  # store.url unset again: the home's SQLite file
    assert home_b.store.count() == len(rows) + 1
    assert ranking(home_b, "a red circle")[:4] == ranking(shared, "a red circle")[:4]
    for lib in (local, shared, home_b):
        lib.close()


def test_migrate_refuses_a_target_that_holds_images(postgres, tiny, shapes, home: Path) -> None:  # type: ignore[no-untyped-def]
    folder, captions = shapes
    env = tiny_env(tiny)
    runner = CliRunner(env=env)
    assert runner.invoke(cli, ["index", str(folder)]).exit_code == 0
    url = postgres.new_database()
    assert runner.invoke(cli, ["migrate", "--to", url, "-q"]).exit_code == 0
    again = runner.invoke(cli, ["migrate", "--to", url])
    assert again.exit_code == 2, again.output
    assert again.output.strip().startswith("imgsearch: migrate:") and "already holds" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert Store(url).count() == len(captions)
    same = runner.invoke(cli, ["migrate", "--to", "sqlite"])
    assert same.exit_code == 2 and "already the database in use" in same.output
    other = runner.invoke(cli, ["migrate", "--to", "mysql://me@host/db"])
    assert other.exit_code == 2 and other.output.startswith("imgsearch: migrate: --to takes a postgresql://")


def test_bad_store_urls_are_one_line_errors(home: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner(env=tiny_env(tiny))
    wrong = runner.invoke(cli, ["--set", "store.url=mysql://me@host/db", "status"])
    assert wrong.exit_code == 2
    assert wrong.output.strip().splitlines() == [
        "imgsearch: --set: store.url must be empty (SQLite in the home folder) or a postgresql://user@host/database"
        " URL, got 'mysql://me@host/db'"
    ]
    nobody = f"postgresql://me:secret@127.0.0.1:{pgserver.free_port()}/db"
    started = time.monotonic()
    refused = runner.invoke(cli, ["--set", f"store.url={nobody}", "status"])
    assert time.monotonic() - started < 15, "an unreachable server fails fast"
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert "cannot open the database postgresql://me:***@127.0.0.1" in refused.output
    assert "secret" not in refused.output
    with pytest.raises(ConfigError, match="store.url"):
        Store("sqlite:///x.db")
    with pytest.raises(StoreError):
        Store(nobody)


def test_writers_on_several_machines_share_one_database(  # type: ignore[no-untyped-def]
    postgres: pgserver.PgServer, tiny, tmp_path: Path
) -> None:
    """Three `index` processes, each with its own home (as on three machines), index overlapping folders into
    one database at once while a fourth process queries it: one row per file, none lost, queries answered."""
    photos = tmp_path / "photos"
    draw_shapes(photos / "a", per_class=3, seed=1)
    draw_shapes(photos / "b", per_class=3, seed=2)
    url = postgres.new_database()
    env = {**os.environ, **tiny_env(tiny), "IMGSEARCH_STORE__URL": url, "IMGSEARCH_TAGGING__AUTO": "false"}
    seed = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch",
            "--home",
            str(tmp_path / "h0"),
            "index",
            str(photos / "a" / "red-circle-0.png"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert seed.returncode == 0, seed.stderr
    jobs = [photos, photos / "a", photos / "b"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "imgsearch", "--home", str(tmp_path / f"h{n + 1}"), "index", "-q", str(job)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, job in enumerate(jobs)
    ]
    answers = []
    while any(p.poll() is None for p in procs):
        query = [sys.executable, "-m", "imgsearch", "--home", str(tmp_path / "q"), "query", "a red circle", "--json"]
        answers.append(subprocess.run(query, env=env, capture_output=True, text=True))
    for p in procs:
        assert p.wait() == 0, p.stderr.read() if p.stderr else ""
    assert answers and all(a.returncode == 0 for a in answers), [a.stderr for a in answers if a.returncode]
    files = sorted(str(p) for p in photos.rglob("*.png"))
    store = Store(url)
    with store.read() as conn:
        paths = sorted(conn.execute(select(images.c.path)).scalars())
    assert paths == files, "every file exactly once"
    store.close()


def clustered(n: int, dim: int) -> np.ndarray:
    """Unit vectors around 200 centres with varied spread: neighbourhoods like image embeddings have."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    spread = rng.uniform(0.3, 0.8, size=(n, 1)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hnsw_search_finds_the_exact_neighbours(postgres: pgserver.PgServer) -> None:
    """pgvector's HNSW index against brute force: recall@10 over 10k clustered vectors, with and without a
    path filter that leaves 5% of them (which the iterative scan must still fill to k)."""
    n, dim, k = 10_000, 128, 10
    drawn = clustered(n + 50, dim)
    vectors, queries = drawn[:n], drawn[n:]  # queries from the same distribution, not in the index
    store = Store(postgres.new_database())
    with store.write() as conn:
        store.claim_model(conn, "synthetic", dim)
        store.prepare_bulk_load(conn, dim)
        rows = [
            {
                "path": f"/p/{'few' if i % 20 == 0 else 'many'}/{i:05d}.jpg",
                "size": 1,
                "mtime_ns": 1_700_000_000_000_000_000 + i,  # beyond 32 bits: BIGINT
                "content_hash": f"{i:032x}",
                "width": 1,
                "height": 1,
                "vector": vectors[i].tobytes(),
                "indexed_at": 0.0,
            }
            for i in range(n)
        ]
        conn.execute(insert(images), rows)
        store.finish_bulk_load(conn)
    assert store.sizes()[1] > 0, "the HNSW index exists"
    ids = {p: int(Path(p).stem) for p in store.paths_of(range(1, n + 1)).values()}
    found = exact = filtered_found = filtered_exact = 0
    few = np.arange(0, n, 20)
    for q in queries:
        truth = set(np.argsort(-vectors @ q)[:k].tolist())
        hits = store.nearest(q, k)
        found += len(truth & {ids[p] for _, p, _ in hits})
        exact += k
        scores = [s for _, _, s in hits]
        assert scores == sorted(scores, reverse=True)
        truth_few = set(few[np.argsort(-vectors[few] @ q)[:k]].tolist())
        hits_few = store.nearest(q, k, root="/p/few")
        assert len(hits_few) == k and all("/few/" in p for _, p, _ in hits_few)
        filtered_found += len(truth_few & {ids[p] for _, p, _ in hits_few})
        filtered_exact += k
    assert found / exact >= 0.95, found / exact
    assert filtered_found / filtered_exact >= 0.95, filtered_found / filtered_exact
    with store.read() as conn:
        assert conn.execute(select(func.max(images.c.mtime_ns))).scalar() == 1_700_000_000_000_000_000 + n - 1
    store.close()


def test_status_names_the_database_without_its_password(postgres: pgserver.PgServer, tiny, home: Path) -> None:  # type: ignore[no-untyped-def]
    url = postgres.new_database().replace("imgsearch@", "imgsearch:hunter2@")  # trust auth ignores it
    result = CliRunner(env={**tiny_env(tiny), "IMGSEARCH_STORE__URL": url}).invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    assert "pgvector-hnsw" in result.output and "imgsearch:***@127.0.0.1" in result.output
    assert "hunter2" not in result.output


def test_blank_postgresql_database_upgrades_to_head_without_drift(postgres: pgserver.PgServer) -> None:
    """The same Alembic revisions as SQLite, dialect-aware where they must be; the only difference from the
    schema is the vector column's dimension and its HNSW index, which the first model to write sets."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from imgsearch.store.schema import metadata

    store = Store(postgres.new_database())
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() == "0006"
        assert compare_metadata(context, metadata) == []
        columns = "SELECT table_name || '.' || column_name, udt_name FROM information_schema.columns"
        types = dict(conn.exec_driver_sql(columns).all())
    assert types["images.vector"] == "vector" and types["text_vectors.vector"] == "bytea"
    assert types["image_tags.label"] == "citext" and types["images.mtime_ns"] == types["skipped.size"] == "int8"
    with store.write() as conn:
        store.claim_model(conn, "m", 8)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d[0] for d in diff] == ["remove_index"] and diff[0][1].name == "ix_images_vector"
    store.close()

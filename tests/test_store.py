"""The database: Alembic migrations at open, no drift from the schema, newer databases refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from imgsearch.errors import ModelMismatchError, SchemaTooNewError
from imgsearch.store import repository
from imgsearch.store.repository import NewImage, Store
from imgsearch.store.schema import metadata


def test_blank_database_upgrades_to_head_without_drift(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() == "0006"
        assert compare_metadata(context, metadata) == []
    store.close()


def test_the_head_revision_the_store_knows_is_the_newest_migration() -> None:
    """Opening a current database skips Alembic by comparing with repository.HEAD: it must not fall behind."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(repository.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == repository.HEAD


def test_opening_a_current_database_does_not_import_alembic_nor_postgresql(tmp_path: Path) -> None:
    """Cold queries pay for every import: neither Alembic nor SQLAlchemy's PostgreSQL dialect (45 ms) for SQLite."""
    Store(tmp_path / "db.sqlite").close()
    code = (
        "import sys; from pathlib import Path; from imgsearch.store.repository import Store; "
        f"Store(Path({str(tmp_path / 'db.sqlite')!r})).close(); "
        "print('alembic' in sys.modules, 'sqlalchemy.dialects.postgresql' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "False False\n"


def test_wal_mode_and_reopen_is_a_no_op(tmp_path: Path) -> None:
    Store(tmp_path / "db.sqlite").close()
    store = Store(tmp_path / "db.sqlite")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaTooNewError, match="newer imgsearch"):
        Store(path)


def _image(path: str, seed: int) -> NewImage:
    vec = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return NewImage(path, 1, 1, f"h{seed}", 2, 2, vec / np.linalg.norm(vec))


def test_vectors_round_trip_and_model_is_claimed_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with store.write() as conn:
        store.claim_model(conn, "m1", 8)
        a = store.insert_image(conn, _image("/p/a.jpg", 1))
        b = store.insert_image(conn, _image("/p/b.jpg", 2))
        store.bump_generation(conn)
    ids, vecs = store.all_vectors()
    assert list(ids) == [a, b]
    np.testing.assert_array_equal(vecs[0], _image("x", 1).vector)
    with pytest.raises(ModelMismatchError, match="--rebuild"), store.write() as conn:
        store.claim_model(conn, "m2", 8)
    assert store.model() == ("m1", 8)
    assert store.generation() == 1
    store.close()


def test_ids_are_never_reused_after_delete(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with store.write() as conn:
        first = store.insert_image(conn, _image("/p/a.jpg", 1))
        store.delete_images(conn, [first])
        second = store.insert_image(conn, _image("/p/a.jpg", 1))
    assert second > first
    store.close()


def test_prefix_queries_do_not_match_sibling_folders(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with store.write() as conn:
        inside = store.insert_image(conn, _image("/p/cats/a.jpg", 1))
        store.insert_image(conn, _image("/p/cats2/b.jpg", 2))
        store.insert_image(conn, _image("/p/cats_x/c.jpg", 3))
        store.insert_image(conn, _image("/p/cat%/d.jpg", 4))
    assert list(store.ids_under("/p/cats")) == [inside]
    with store.read() as conn:
        assert list(store.images_under(conn, "/p/cats/")) == ["/p/cats/a.jpg"]
    store.close()

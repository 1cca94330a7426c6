"""`export --format clip-retrieval` and `import`: the files are what clip-retrieval writes and its readers
expect, a round trip into a fresh home loses nothing (and a later `index` embeds nothing), an output made
by clip-retrieval itself (no sidecar) imports, and every bad input is one line that leaves the index alone."""

from __future__ import annotations

import json
import random
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from imgsearch import Library, load_settings
from imgsearch.cli import cli
from imgsearch.errors import IndexEmptyError, InterruptedRun, ModelMismatchError, UsageError
from imgsearch.store import sync
from tests import tinyclip
from tests.conftest import tiny_env, tiny_overrides

pytestmark = pytest.mark.both_stores

OUR_COLUMNS = ["image_path", "id", "width", "height", "content_hash", "size", "mtime_ns", "generated"]
PHOTO_COLUMNS = ["taken", "taken_source", "camera", "lens", "place", "lat", "lon", "photo_notes", "photo_version"]


@pytest.fixture
def fresh(tmp_path: Path, tiny, tiny_embedder, backend: str, request: pytest.FixtureRequest) -> Iterator[Library]:  # type: ignore[no-untyped-def]
    """A second, empty home with the same model (and a database of its own): where an export is brought back."""
    overrides = tiny_overrides(tiny)
    if backend == "postgresql":
        overrides["store.url"] = request.getfixturevalue("postgres").new_database()
    library = Library(load_settings(tmp_path / "home2", overrides=overrides), embedder=tiny_embedder)
    yield library
    library.close()


@pytest.fixture
def indexed(lib: Library, shapes) -> tuple[Path, dict[str, str]]:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    assert lib.index([folder]).embedded == len(labels)
    return folder, labels


def rows_by_path(lib: Library) -> dict[str, tuple[np.ndarray, tuple[int, int, int, str, bool]]]:
    """{path: (vector, (width, height, bytes, content_hash, generated))} of everything indexed."""
    ids, vectors = lib.store.all_vectors()
    out = {}
    for i, v in zip(ids.tolist(), vectors, strict=True):
        info = lib.store.image_info(i)
        assert info is not None
        out[info.path] = (v, (info.width, info.height, info.bytes, info.content_hash, info.generated))
    return out


def npy_header(path: Path) -> tuple[int, int, str]:
    """(rows, dim, descr) parsed from the first line of a .npy file, the way embedding-reader reads it."""
    first = path.read_bytes()[:300].split(b"\n")[0].decode("latin-1")
    shape = re.search(r"'shape': \((\d+), (\d+)\)", first)
    descr = re.search(r"'descr': '([<f0-9]+)'", first)
    assert shape and descr, first
    return int(shape.group(1)), int(shape.group(2)), descr.group(1)


def test_round_trip_into_a_fresh_home(lib: Library, fresh: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, labels = indexed
    out = tmp_path / "export"
    exported = lib.export_embeddings(out, shard_size=7)
    assert (exported.images, exported.shards, exported.replaced) == (len(labels), 4, False)

    report = fresh.import_embeddings(out)
    assert (report.imported, report.missing, report.changed, report.skipped) == (len(labels), 0, 0, [])
    assert report.model_checked and report.model_id == lib.store.model()[0]
    assert fresh.store.model() == lib.store.model()

    before, after = rows_by_path(lib), rows_by_path(fresh)
    assert after.keys() == before.keys() == set(labels)
    for path, (vector, facts) in before.items():
        assert after[path][1] == facts, path  # width, height, bytes, content hash, generated
        assert np.abs(after[path][0] - vector).max() < 2e-3, "float16 keeps about three decimal digits"
        assert abs(np.linalg.norm(after[path][0]) - 1) < 1e-5

    ours, theirs = lib.query("a blue circle", k=len(labels)), fresh.query("a blue circle", k=len(labels))
    assert labels[theirs[0].path] == "a blue circle"
    assert [h.path for h in theirs[:2]] == [h.path for h in ours[:2]]
    score = {h.path: h.score for h in ours}
    assert all(abs(h.score - score[h.path]) < 2e-3 for h in theirs)

    # The FAISS cache was written for the import (SQLite), and the imported rows are what `index` would have written.
    if not fresh.store.postgres:
        loaded = sync.load(fresh.store, fresh.settings.vector_index_path, fresh.settings.search)
        assert not loaded.rebuilt and len(loaded.index) == len(labels)
    again = fresh.index([folder])
    assert (again.embedded, again.copied, again.unchanged, again.removed) == (0, 0, len(labels), 0)


def test_files_are_laid_out_as_clip_retrieval_writes_them(lib: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, labels = indexed
    out = tmp_path / "export"
    report = lib.export_embeddings(out, shard_size=2)  # 12 shards: numbers padded to two digits
    assert report.shards == 12
    names = [f"{i:02d}" for i in range(12)]
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [f"img_emb_{n}.npy" for n in names]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [f"metadata_{n}.parquet" for n in names]
    assert sorted(p.name for p in out.iterdir()) == ["img_emb", "imgsearch.json", "metadata"]

    # As embedding-reader (autofaiss) pairs them: both folders listed in sorted order, zipped by position.
    model_id, dim = lib.store.model()
    npys, parquets = sorted((out / "img_emb").glob("*.npy")), sorted((out / "metadata").glob("*.parquet"))
    vectors, paths = [], []
    for npy, parquet in zip(npys, parquets, strict=True):
        rows, width, descr = npy_header(npy)
        assert (width, descr) == (dim, "<f2")
        array = np.load(npy)
        assert array.dtype == np.float16 and array.shape == (rows, dim) and array.flags.c_contiguous
        table = pq.read_table(parquet)
        assert table.column_names == OUR_COLUMNS + PHOTO_COLUMNS and table.num_rows == rows
        assert table.schema.field("image_path").type == pa.string()
        vectors.append(array)
        paths += table.column("image_path").to_pylist()
    stacked = np.concatenate(vectors).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(stacked, axis=1), 1.0, atol=2e-3)
    ids, stored = lib.store.all_vectors()
    assert paths == [lib.store.paths_of(ids.tolist())[i] for i in ids.tolist()], "id order, rows aligned"
    np.testing.assert_allclose(stacked, stored, atol=2e-3)

    assert sorted(pq.read_table(out / "metadata").column("image_path").to_pylist()) == sorted(labels)
    sidecar = json.loads((out / "imgsearch.json").read_text())
    assert sidecar | {"exported_at": 0} == {
        "format": "clip-retrieval",
        "version": 1,
        "model_id": model_id,
        "dim": dim,
        "count": len(labels),
        "shards": 12,
        "path_prefix": None,
        "complete": True,
        "exported_at": 0,
    }


def test_default_shard_is_one_file_and_an_earlier_export_is_replaced(lib: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, labels = indexed
    out = tmp_path / "export"
    lib.export_embeddings(out, shard_size=5)
    (out / "index").mkdir()
    (out / "index" / "knn.index").write_bytes(b"built by autofaiss")  # something of the user's: kept
    report = lib.export_embeddings(out, path_prefix=folder)
    assert (report.shards, report.replaced, report.images) == (1, True, len(labels))
    assert [p.name for p in (out / "img_emb").iterdir()] == ["img_emb_0.npy"]
    assert [p.name for p in (out / "metadata").iterdir()] == ["metadata_0.parquet"]
    assert (out / "index" / "knn.index").exists()

    some = sorted(labels)[0]
    one = lib.export_embeddings(tmp_path / "one", path_prefix=some)
    assert (
        one.images == 1 and pq.read_table(tmp_path / "one/metadata/metadata_0.parquet")["image_path"][0].as_py() == some
    )


def test_export_refusals(lib: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    with pytest.raises(UsageError, match="is not empty and holds no earlier export"):
        lib.export_embeddings(foreign)
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    with pytest.raises(UsageError, match="no indexed image under"):
        lib.export_embeddings(tmp_path / "out", path_prefix=tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="unknown format"):
        lib.export_embeddings(tmp_path / "out", "laion")


def test_export_of_an_empty_index_is_refused(lib: Library, tmp_path: Path) -> None:
    with pytest.raises(IndexEmptyError):
        lib.export_embeddings(tmp_path / "out")


def write_clip_retrieval(out: Path, vectors: np.ndarray, paths: list[str], shard_size: int = 10) -> None:
    """A folder as `clip-retrieval inference` leaves it: no sidecar, metadata with image_path (and a caption)."""
    (out / "img_emb").mkdir(parents=True)
    (out / "metadata").mkdir()
    (out / "stats").mkdir()  # clip-retrieval's logger writes here; import ignores it
    for i, start in enumerate(range(0, len(paths), shard_size)):
        np.save(out / "img_emb" / f"img_emb_{i}.npy", vectors[start : start + shard_size].astype(np.float16))
        part = paths[start : start + shard_size]
        table = pa.table({"image_path": part, "caption": ["a picture"] * len(part)})
        pq.write_table(table, out / "metadata" / f"metadata_{i}.parquet")


def test_a_clip_retrieval_output_without_sidecar_imports(lib: Library, fresh: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, labels = indexed
    before = rows_by_path(lib)
    paths = sorted(before)
    # Embedded on another machine, where the pictures were under /data/photos; not quite unit length.
    remote = [p.replace(str(folder), "/data/photos") for p in paths]
    out = tmp_path / "from-spark"
    write_clip_retrieval(out, np.stack([before[p][0] * 3 for p in paths]), remote)

    report = fresh.import_embeddings(out, map_prefix=("/data/photos", str(folder)))
    assert (report.imported, report.missing, report.model_checked) == (len(labels), 0, False)
    after = rows_by_path(fresh)
    for path in paths:
        assert after[path][1] == before[path][1], "width and height read from the file's header"
        assert abs(np.linalg.norm(after[path][0]) - 1) < 1e-5, "vectors are normalised again"
    assert fresh.index([folder]).embedded == 0

    # Without the mapping, nothing here has those paths: all missing, counted and listed, not an error.
    other = fresh.import_embeddings(out)
    assert (other.imported, other.missing, sorted(other.missing_paths)) == (0, len(labels), sorted(remote))


def test_no_sidecar_and_another_dimension_is_refused(lib: Library, fresh: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, labels = indexed
    out = tmp_path / "from-elsewhere"
    write_clip_retrieval(out, np.ones((len(labels), 7)), sorted(labels))
    with pytest.raises(UsageError, match="have 7 dimensions"):
        fresh.import_embeddings(out)
    assert fresh.store.count() == 0


def test_missing_changed_and_already_indexed_files(lib: Library, fresh: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, labels = indexed
    out = tmp_path / "export"
    lib.export_embeddings(out)
    paths = sorted(labels)
    for gone in paths[:3]:
        Path(gone).unlink()
    tinyclip.draw("green", "square", random.Random(5)).save(paths[3])  # not what was embedded any more
    (folder / "sub").mkdir()
    shutil.copy(paths[4], folder / "sub" / "copy.png")  # not in the export: left for `index`

    report = fresh.import_embeddings(out)
    assert (report.imported, report.missing, report.changed) == (len(labels) - 4, 3, 1)
    assert sorted(report.missing_paths) == paths[:3]
    generation = fresh.store.generation()
    again = fresh.import_embeddings(out)
    assert (again.imported, again.unchanged) == (0, len(labels) - 4)
    assert fresh.store.generation() == generation, "nothing written: the vector cache stays valid"

    run = fresh.index([folder])
    assert (run.embedded, run.copied, run.unchanged) == (1, 1, len(labels) - 4)  # the changed file, the copy


def test_import_of_a_file_already_indexed_with_other_content_replaces_it(lib: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, labels = indexed
    path = sorted(labels)[0]
    out = tmp_path / "export"
    lib.export_embeddings(out)
    old_id = lib.store.id_of(path)
    with lib.store.write() as conn:  # the index holds an older picture at that path
        from sqlalchemy import update

        from imgsearch.store.schema import images

        conn.execute(update(images).where(images.c.id == old_id).values(content_hash="0" * 32))
    report = lib.import_embeddings(out)
    assert (report.imported, report.unchanged) == (1, len(labels) - 1)
    new_id = lib.store.id_of(path)
    assert new_id is not None and old_id is not None and new_id > old_id, "new content, new id (as `index` does)"


@pytest.fixture
def runner(home: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> CliRunner:  # type: ignore[no-untyped-def]
    for name, value in tiny_env(tiny).items():
        monkeypatch.setenv(name, value)
    return CliRunner()


def test_cli_export_import_json(runner: CliRunner, shapes, tmp_path: Path, backend: str, request) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    # The second home has its own database (with PostgreSQL: another one on the server).
    other = ["--set", f"store.url={request.getfixturevalue('postgres').new_database()}"] if backend != "sqlite" else []
    assert runner.invoke(cli, ["index", str(folder)]).exit_code == 0
    out = tmp_path / "export"
    result = runner.invoke(cli, ["export", str(out), "--format", "clip-retrieval", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == len(labels)
    text = runner.invoke(cli, ["export", str(out), "--path-prefix", str(folder)])
    assert text.exit_code == 0 and "replacing the earlier export" in text.output

    Path(sorted(labels)[0]).unlink()
    result = runner.invoke(cli, ["--home", str(tmp_path / "home2"), *other, "import", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["imported"], report["missing"], report["missing_paths"]) == (len(labels) - 1, 1, sorted(labels)[:1])
    text = runner.invoke(cli, ["--home", str(tmp_path / "home2"), *other, "import", str(out)])
    assert text.exit_code == 0, text.output
    assert (
        text.output.startswith(f"imported 0 of {len(labels)} vectors") and f"missing {sorted(labels)[0]}" in text.output
    )


def test_cli_bad_inputs_are_one_line_and_leave_the_index_alone(runner: CliRunner, shapes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, _ = shapes
    assert runner.invoke(cli, ["index", str(folder)]).exit_code == 0
    good = tmp_path / "good"
    assert runner.invoke(cli, ["export", str(good), "--shard-size", "10"]).exit_code == 0
    model_id = json.loads((good / "imgsearch.json").read_text())["model_id"]

    def variant(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(good, copy)
        return copy

    cases: list[tuple[list[str], int, str]] = [
        (["import", str(tmp_path / "nowhere")], 2, "no such folder"),
        (["import", str(folder)], 2, "not a clip-retrieval output"),
        (["export", str(folder)], 2, "is not empty and holds no earlier export"),
    ]
    garbage = variant("garbage")
    (garbage / "img_emb" / "img_emb_1.npy").write_bytes(b"not numpy at all")
    cases.append((["import", str(garbage)], 2, "img_emb_1.npy is not a readable .npy file"))
    truncated = variant("truncated")
    npy = truncated / "img_emb" / "img_emb_2.npy"
    npy.write_bytes(npy.read_bytes()[:-10])
    cases.append((["import", str(truncated)], 2, "img_emb_2.npy is truncated"))
    corrupt = variant("corrupt")
    (corrupt / "metadata" / "metadata_0.parquet").write_bytes(b"PAR1 but not really")
    cases.append((["import", str(corrupt)], 2, "metadata_0.parquet is not a readable parquet file"))
    short = variant("short")
    pq.write_table(pa.table({"image_path": ["a.png"] * 3}), short / "metadata" / "metadata_1.parquet")
    cases.append((["import", str(short)], 2, "metadata_1.parquet has 3 rows but"))
    unpaired = variant("unpaired")
    (unpaired / "metadata" / "metadata_2.parquet").unlink()
    cases.append((["import", str(unpaired)], 2, "img_emb_2.npy has no metadata/metadata_2.parquet beside it"))
    no_path = variant("no-path")
    pq.write_table(pa.table({"url": ["a"] * 10}), no_path / "metadata" / "metadata_0.parquet")
    cases.append((["import", str(no_path)], 2, "has no image_path column"))
    other_model = variant("other-model")
    sidecar = json.loads((other_model / "imgsearch.json").read_text())
    (other_model / "imgsearch.json").write_text(json.dumps(sidecar | {"model_id": "ViT-L-14:openai"}))
    cases.append(
        (["import", str(other_model)], 1, f"holds vectors of model ViT-L-14:openai, but the settings select {model_id}")
    )
    unfinished = variant("unfinished")
    (unfinished / "imgsearch.json").write_text(json.dumps(sidecar | {"complete": False}))
    cases.append((["import", str(unfinished)], 2, "is an export that stopped part-way"))
    wide = variant("wide")
    for shard in (wide / "img_emb").iterdir():
        np.save(shard, np.ones((np.load(shard).shape[0], 3), np.float16))
    (wide / "imgsearch.json").unlink()
    cases.append((["import", str(wide)], 2, "have 3 dimensions"))

    status = runner.invoke(cli, ["status", "--json"]).output
    for args, code, message in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert runner.invoke(cli, ["status", "--json"]).output == status, args
    bad_option = runner.invoke(cli, ["import", str(good), "--map-prefix", "nothing"])  # click's usage message
    assert bad_option.exit_code == 2 and "expected OLD=NEW" in bad_option.output


def test_mismatching_model_in_the_library_api(lib: Library, fresh: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "export"
    lib.export_embeddings(out)
    sidecar = json.loads((out / "imgsearch.json").read_text())
    (out / "imgsearch.json").write_text(json.dumps(sidecar | {"model_id": "ViT-B-32:laion2b_s34b_b79k"}))
    with pytest.raises(ModelMismatchError):
        fresh.import_embeddings(out)
    assert fresh.store.count() == 0


def test_rows_index_would_not_hold_are_skipped(lib: Library, fresh: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, _ = indexed
    before = rows_by_path(lib)
    paths = sorted(before)[:2]
    notes = folder / "notes.txt"
    notes.write_text("not a picture")
    vectors = np.stack([before[paths[0]][0], np.zeros_like(before[paths[1]][0]), before[paths[0]][0]])
    out = tmp_path / "odd"
    write_clip_retrieval(out, vectors, [paths[0], paths[1], str(notes)])
    report = fresh.import_embeddings(out)
    assert report.imported == 1
    assert {(s.path, s.reason.split(" (")[0]) for s in report.skipped} == {
        (paths[1], "its vector is zero or not finite"),
        (str(notes), "not a file `index` would list"),
    }


def test_interrupted_import_keeps_its_batches(lib: Library, fresh: Library, indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, labels = indexed
    out = tmp_path / "export"
    lib.export_embeddings(out, shard_size=5)
    stop = threading.Event()
    stop.set()  # as Ctrl-C does: the batch in flight is committed, then the import stops
    with pytest.raises(InterruptedRun, match="imported and saved"):
        fresh.import_embeddings(out, stop=stop)
    assert fresh.store.count() == 5
    report = fresh.import_embeddings(out)
    assert (report.imported, report.unchanged) == (len(labels) - 5, 5)

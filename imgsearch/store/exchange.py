"""Embeddings in and out of the store in clip-retrieval's layout (what `clip-retrieval inference` writes and
autofaiss, embedding-reader and `clip-retrieval index` read):

    OUT/img_emb/img_emb_{i}.npy          float16 [n, dim], one unit vector a row
    OUT/metadata/metadata_{i}.parquet    one row per vector, in the same order: image_path, then our own columns
    OUT/imgsearch.json                   our sidecar: format, version, model_id, dim, count, shards, complete

Shards are numbered from 0, zero-padded to the digits of the shard count (clip-retrieval's rule), so that the
lexical order readers list them in is their numeric order. A shard holds at most SHARD_SIZE rows.

Export streams the library in id order, CHUNK rows at a time, inside one read transaction (a consistent
snapshot in SQLite); no shard is ever held in memory. Import checks every shard's header, row count and
columns before it writes anything, then goes through the files one batch at a time, each batch one
transaction, with rows written by the Store exactly as the indexer writes them.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, select

from imgsearch.errors import ImgSearchError, InterruptedRun, ModelMismatchError, StoreError, UsageError
from imgsearch.store.repository import PHOTO_COLUMNS, NewImage, Store, chunks, first_line, photo_of, under
from imgsearch.store.schema import images
from imgsearch.types import EmbeddingExportReport, EmbeddingImportReport, PhotoMeta, Progress, Skipped

FORMAT = "clip-retrieval"
VERSION = 1
SIDECAR = "imgsearch.json"
# clip-retrieval's own default (write_batch_size). Shards are written as a stream, so their size costs no
# memory here; readers (autofaiss, embedding-reader) read pieces of a file, so it costs none there either.
SHARD_SIZE = 1_000_000
CHUNK = 10_000  # rows read from the database at a time on export (20 MB of vectors at 512 dimensions)
BATCH = 1_000  # rows a transaction on import
MAX_LISTED = 1_000  # missing files listed by name in a report; the rest are counted

# Our columns after clip-retrieval's image_path: enough to bring a library back without losing anything.
COLUMNS = ("image_path", "id", "width", "height", "content_hash", "size", "mtime_ns", "generated")
# The photo fields (imgsearch.types.PhotoMeta) after them: taken is ISO 8601, with its UTC offset when known.
PHOTO = ("taken", "taken_source", "camera", "lens", "place", "lat", "lon", "photo_notes", "photo_version")
_NPY = re.compile(r"img_emb_(\d+)\.npy")
_PARQUET = re.compile(r"metadata_(\d+)\.parquet")

OnProgress = Callable[[Progress], None]


def _quiet(_: Progress) -> None:
    pass


def _pyarrow(verb: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{verb}: the clip-retrieval format needs pyarrow: pip install pyarrow") from None
    return pq


# export


def export(
    store: Store, out: Path, root: str | None, shard_size: int = SHARD_SIZE, on_progress: OnProgress = _quiet
) -> EmbeddingExportReport:
    """Write the indexed images (under root) to out as clip-retrieval shards with our sidecar.

    out must be new, empty, or an earlier export (it has our sidecar): then its shards and sidecar are
    replaced and anything else in it is left alone. Any other folder is refused.
    """
    pq = _pyarrow("export")
    started = time.monotonic()
    with store.read(snapshot=True) as conn:  # one moment of the library, even in a shared PostgreSQL
        model_id, dim = store.model(conn)
        total = _count(conn, root)
        if not total or model_id is None or dim is None:
            raise UsageError(f"export: no indexed image under {root}" if root else "export: nothing is indexed")
        replaced = _prepare_folder(out)  # only now: an earlier export is not removed for nothing
        shards = -(-total // shard_size)
        width = len(str(shards))
        sidecar = {"format": FORMAT, "version": VERSION, "model_id": model_id, "dim": dim, "count": total}
        sidecar |= {"shards": shards, "path_prefix": root, "complete": False}
        _write_json(out / SIDECAR, sidecar)  # first, so that an export cut short is still ours to overwrite
        rows = _Rows(_chunks(conn, root, dim))
        for i in range(shards):
            n = min(shard_size, total - i * shard_size)
            _write_shard(pq, out, str(i).zfill(width), rows.take(n), n, dim)
            on_progress(Progress("export", i * shard_size + n, total))
    _write_json(out / SIDECAR, sidecar | {"complete": True, "exported_at": time.time()})
    return EmbeddingExportReport(str(out), FORMAT, model_id, dim, total, shards, replaced, time.monotonic() - started)


def _prepare_folder(out: Path) -> bool:
    """Make out ready for shards; True when an earlier export's shards were removed."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"export: {out} is a file, not a folder")
    try:
        if out.exists() and any(out.iterdir()):
            if read_sidecar(out) is None:
                refused = f"export: {out} is not empty and holds no earlier export; choose a new or empty folder"
                raise UsageError(refused)
            for old in _our_files(out):
                old.unlink()
            return True
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImgSearchError(f"export: cannot write to {out} ({exc.strerror or exc})") from None
    return False


def _our_files(out: Path) -> list[Path]:
    found = [*(out / "img_emb").glob("img_emb_*.npy*"), *(out / "metadata").glob("metadata_*.parquet*")]
    return [p for p in found if p.is_file()]


def read_sidecar(folder: Path) -> dict[str, Any] | None:
    """Our sidecar in folder, or None when there is none or it is not ours."""
    try:
        data = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    part = path.with_name(path.name + ".part")
    try:
        part.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(part, path)
    except OSError as exc:
        raise ImgSearchError(f"export: cannot write {path} ({exc.strerror or exc})") from None


def _count(conn: Connection, root: str | None) -> int:
    stmt = select(func.count()).select_from(images)
    if root is not None:
        stmt = stmt.where(under(images.c.path, root))
    return int(conn.execute(stmt).scalar_one())


@dataclass
class _Chunk:
    """Rows read together: the metadata columns (COLUMNS) and their vectors."""

    columns: dict[str, list[Any]]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.vectors)

    def split(self, n: int) -> tuple[_Chunk, _Chunk]:
        head = _Chunk({k: v[:n] for k, v in self.columns.items()}, self.vectors[:n])
        return head, _Chunk({k: v[n:] for k, v in self.columns.items()}, self.vectors[n:])


def _chunks(conn: Connection, root: str | None, dim: int) -> Iterator[_Chunk]:
    """Every image (under root) in id order, CHUNK rows at a time."""
    c = images.c
    cols = (c.path, c.id, c.width, c.height, c.content_hash, c.size, c.mtime_ns, c.generated, c.vector, *PHOTO_COLUMNS)
    after = 0
    while True:
        stmt = select(*cols).where(c.id > after).order_by(c.id).limit(CHUNK)
        if root is not None:
            stmt = stmt.where(under(c.path, root))
        rows = conn.execute(stmt).all()
        if not rows:
            return
        columns = {name: [r[i] for r in rows] for i, name in enumerate(COLUMNS)}
        columns["generated"] = [bool(g) for g in columns["generated"]]
        columns |= _photo_columns([photo_of(r[len(COLUMNS) + 1 :]) for r in rows])
        vectors = np.frombuffer(b"".join(r.vector for r in rows), dtype="<f4").reshape(len(rows), dim)
        yield _Chunk(columns, vectors)
        after = int(rows[-1].id)


def _photo_columns(photos: list[PhotoMeta]) -> dict[str, list[Any]]:
    return {
        "taken": [p.taken_iso for p in photos],
        "taken_source": [p.source for p in photos],
        "camera": [p.camera for p in photos],
        "lens": [p.lens for p in photos],
        "place": [p.place for p in photos],
        "lat": [p.lat for p in photos],
        "lon": [p.lon for p in photos],
        "photo_notes": [p.notes or None for p in photos],
        "photo_version": [p.version or None for p in photos],
    }


def _carried(columns: dict[str, list[Any]], i: int) -> PhotoMeta | None:
    """The photo fields of row i as an export of ours wrote them; None when the source has none (clip-retrieval's
    own output, an export from before them) or they were never read there: then `index` reads the header."""
    version = columns.get("photo_version", [None] * (i + 1))[i]
    if not isinstance(version, int):
        return None
    taken, offset = _split_iso(columns["taken"][i])
    text = {k: v if isinstance(v := columns[k][i], str) else None for k in ("taken_source", "camera", "lens", "place")}
    lat, lon = (float(v) if isinstance(v := columns[k][i], float | int) else None for k in ("lat", "lon"))
    return PhotoMeta(
        taken=taken,
        offset=offset,
        source=text["taken_source"],
        camera=text["camera"],
        lens=text["lens"],
        lat=lat,
        lon=lon,
        place=text["place"],
        notes=columns["photo_notes"][i] or "",
        version=version,
    )


def _split_iso(value: Any) -> tuple[str | None, int | None]:
    """'2019-07-14T16:20:05+09:00' -> ('2019-07-14T16:20:05', 540); anything else -> (None, None)."""
    if not isinstance(value, str) or len(value) < 19:
        return None, None
    zone = value[19:]
    if len(zone) == 6 and zone[0] in "+-" and zone[1:3].isdigit() and zone[4:6].isdigit():
        minutes = int(zone[1:3]) * 60 + int(zone[4:6])
        return value[:19], -minutes if zone[0] == "-" else minutes
    return value[:19], None


class _Rows:
    """Hands out exactly n rows at a time from the chunk stream, whatever the chunks' sizes."""

    def __init__(self, source: Iterator[_Chunk]):
        self.source = source
        self.held: _Chunk | None = None

    def take(self, n: int) -> Iterator[_Chunk]:
        while n > 0:
            chunk = self.held or next(self.source, None)
            if chunk is None:  # cannot happen in a snapshot; never write a short shard all the same
                raise StoreError("export: images were removed from the index while exporting; export again")
            head, rest = chunk.split(n)
            self.held = rest if len(rest) else None
            n -= len(head)
            yield head


def _write_shard(pq: Any, out: Path, name: str, rows: Iterator[_Chunk], n: int, dim: int) -> None:
    """img_emb_{name}.npy and metadata_{name}.parquet with the n rows, each written under a temporary
    name and renamed into place, so a reader listing *.npy never sees half a file."""
    import pyarrow as pa

    npy = out / "img_emb" / f"img_emb_{name}.npy"
    parquet = out / "metadata" / f"metadata_{name}.parquet"
    schema = pa.schema(
        [
            ("image_path", pa.string()),
            ("id", pa.int64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("content_hash", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("generated", pa.bool_()),
            ("taken", pa.string()),
            ("taken_source", pa.string()),
            ("camera", pa.string()),
            ("lens", pa.string()),
            ("place", pa.string()),
            ("lat", pa.float64()),
            ("lon", pa.float64()),
            ("photo_notes", pa.string()),
            ("photo_version", pa.int32()),
        ]
    )
    try:
        npy.parent.mkdir(exist_ok=True)
        parquet.parent.mkdir(exist_ok=True)
        npy_part, parquet_part = _part(npy), _part(parquet)
        with open(npy_part, "wb") as f, pq.ParquetWriter(str(parquet_part), schema) as writer:
            header = {"descr": "<f2", "fortran_order": False, "shape": (n, dim)}
            np.lib.format.write_array_header_1_0(f, header)
            for chunk in rows:
                f.write(np.ascontiguousarray(chunk.vectors, dtype="<f2").tobytes())
                writer.write_table(pa.table(chunk.columns, schema=schema))
        os.replace(npy_part, npy)
        os.replace(parquet_part, parquet)
    except OSError as exc:
        raise ImgSearchError(f"export: cannot write {npy.parent.parent} ({exc.strerror or exc})") from None


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


# import


@dataclass(frozen=True)
class Shard:
    """One pair of files of a source, checked: the vectors' layout in the .npy file and the parquet beside it."""

    npy: Path
    parquet: Path
    rows: int
    dim: int
    dtype: np.dtype[Any]
    offset: int  # where the vectors start in the .npy file


@dataclass(frozen=True)
class Source:
    """A clip-retrieval output folder, checked before anything is imported from it."""

    folder: Path
    shards: list[Shard]
    dim: int
    model_id: str | None  # from our sidecar; None when the folder has none (made by clip-retrieval itself)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


@dataclass(frozen=True)
class LocalFile:
    """A source row's image_path as found on this machine: its identity as the indexer records it, or why not.

    width and height are 0 unless they were asked for.
    """

    path: str
    size: int = 0
    mtime_ns: int = 0
    content_hash: str = ""
    width: int = 0
    height: int = 0
    generated: bool = False
    missing: bool = False
    error: str | None = None


# (image_path as the source has it, whether its pixel size is wanted) -> the file here
Inspect = Callable[[str, bool], LocalFile]


def open_source(folder: Path) -> Source:
    """The shards of a clip-retrieval output folder, each .npy paired with its parquet and both checked
    (readable, float vectors of one dimension, equal row counts, an image_path column). Raises UsageError."""
    if not folder.is_dir():
        raise UsageError(f"import: no such folder: {folder}")
    sidecar = _source_sidecar(folder)
    pairs = _pairs(folder)
    pq = _pyarrow("import")
    shards = [_check_shard(pq, folder, npy, parquet) for npy, parquet in pairs]
    dims = {s.dim for s in shards}
    if len(dims) > 1:
        raise UsageError(f"import: the shards in {folder} have vectors of different sizes ({sorted(dims)})")
    dim = dims.pop()
    model_id = None
    if sidecar is not None:
        model_id = str(sidecar["model_id"])
        if int(sidecar["dim"]) != dim:
            raise UsageError(f"import: {folder / SIDECAR} says {sidecar['dim']} dimensions, the vectors have {dim}")
    return Source(folder, shards, dim, model_id)


def _source_sidecar(folder: Path) -> dict[str, Any] | None:
    path = folder / SIDECAR
    if not path.exists():
        return None
    data = read_sidecar(folder)
    if data is None or not isinstance(data.get("model_id"), str) or not isinstance(data.get("dim"), int):
        raise UsageError(f"import: {path} is not an imgsearch export sidecar (unreadable, or model_id/dim missing)")
    if not data.get("complete"):
        raise UsageError(f"import: {folder} is an export that stopped part-way; export it again")
    return data


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(npy, parquet) by shard number; any stray or unpaired file is an error naming it."""
    npys = _numbered(folder / "img_emb", "*.npy", _NPY)
    parquets = _numbered(folder / "metadata", "*.parquet", _PARQUET)
    if not npys:
        raise UsageError(f"import: {folder} has no img_emb/img_emb_N.npy files (not a clip-retrieval output)")
    for key, parquet in parquets.items():
        if key not in npys:
            raise UsageError(f"import: {parquet} has no img_emb/img_emb_{key}.npy beside it")
    for key, npy in npys.items():
        if key not in parquets:
            raise UsageError(f"import: {npy} has no metadata/metadata_{key}.parquet beside it")
    return [(npys[k], parquets[k]) for k in sorted(npys, key=lambda k: (int(k), k))]


def _numbered(folder: Path, pattern: str, name: re.Pattern[str]) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.glob(pattern)):
        match = name.fullmatch(path.name)
        if match is None:
            raise UsageError(f"import: unexpected file {path} (clip-retrieval names them {name.pattern})")
        found[match.group(1)] = path
    return found


def _check_shard(pq: Any, folder: Path, npy: Path, parquet: Path) -> Shard:
    rows, dim, dtype, offset = _npy_layout(npy)
    try:
        meta = pq.ParquetFile(str(parquet))
        count, schema = meta.metadata.num_rows, meta.schema_arrow
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"import: {parquet} is not a readable parquet file ({first_line(exc)})") from None
    if "image_path" not in schema.names:
        raise UsageError(f"import: {parquet} has no image_path column")
    if not _is_text(schema.field("image_path").type):
        raise UsageError(f"import: the image_path column of {parquet} is not text")
    if count != rows:
        raise UsageError(f"import: {parquet} has {count} rows but {npy} has {rows} vectors")
    return Shard(npy, parquet, rows, dim, dtype, offset)


def _npy_layout(npy: Path) -> tuple[int, int, np.dtype[Any], int]:
    """(rows, dim, dtype, data offset) of a .npy file of float vectors, its length checked against its header."""
    try:
        with open(npy, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read[version](f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"import: {npy} is not a readable .npy file ({first_line(exc)})") from None
    if len(shape) != 2 or fortran or dtype.kind != "f":
        raise UsageError(f"import: {npy} does not hold float vectors as rows (shape {shape}, dtype {dtype})")
    if size != offset + shape[0] * shape[1] * dtype.itemsize:
        raise UsageError(f"import: {npy} is truncated or has extra bytes (its header says {shape[0]} x {shape[1]})")
    return int(shape[0]), int(shape[1]), dtype, offset


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def import_source(
    store: Store,
    source: Source,
    model_id: str,
    dim: int,
    inspect: Inspect,
    *,
    workers: int = 4,
    on_progress: OnProgress = _quiet,
    stop: threading.Event | None = None,
) -> EmbeddingImportReport:
    """Add the source's rows whose files exist here, with their vectors, as indexed images of model_id.

    The source must name model_id (or no model: clip-retrieval's own output) and have dim dimensions.
    A path indexed already with the same content is left as it is; a row whose file differs from what
    the export says it embedded (content_hash) is left for `imgsearch index`. Each batch is committed on
    its own, so an interrupted import keeps what it wrote, and running it again finishes it.
    """
    if source.model_id is not None and source.model_id != model_id:
        raise ModelMismatchError(
            f"import: {source.folder} holds vectors of model {source.model_id}, but the settings select "
            f"{model_id}: set model.name/model.pretrained to that model to import them"
        )
    if source.dim != dim:
        raise UsageError(f"import: the vectors in {source.folder} have {source.dim} dimensions; {model_id} makes {dim}")
    started = time.monotonic()
    report = EmbeddingImportReport(str(source.folder), model_id, source.model_id is not None, dim)
    report.shards, report.rows = len(source.shards), source.rows
    done = 0
    with cf.ThreadPoolExecutor(max(1, workers), "imgsearch-import") as pool:
        for shard in source.shards:
            for batch in _read_shard(shard):
                files = list(pool.map(inspect, batch.paths, batch.need_size))
                _write_batch(store, model_id, dim, batch, files, report)
                done += len(batch.paths)
                on_progress(Progress("import", done, source.rows))
                if stop is not None and stop.is_set():
                    raise InterruptedRun(
                        f"interrupted: {report.imported} images imported and saved; import again to finish"
                    )
    report.seconds = time.monotonic() - started
    return report


@dataclass
class _Batch:
    """Rows of one shard as read: image_path, unit vectors (None: unusable), and what the parquet says."""

    paths: list[str]
    vectors: list[np.ndarray | None]
    sizes: list[tuple[int, int] | None]
    hashes: list[str | None]
    need_size: list[bool] = field(default_factory=list)
    photos: list[PhotoMeta | None] = field(default_factory=list)


def _read_shard(shard: Shard) -> Iterator[_Batch]:
    if not shard.rows:
        return
    shape = (shard.rows, shard.dim)
    vectors = np.memmap(shard.npy, dtype=shard.dtype, mode="r", offset=shard.offset, shape=shape)
    at = 0
    for columns in _metadata(shard.parquet):
        n = len(columns["image_path"])
        yield _batch(columns, np.asarray(vectors[at : at + n], dtype=np.float32))
        at += n


def _metadata(parquet: Path) -> Iterator[dict[str, list[Any]]]:
    """The columns import uses, BATCH rows at a time (a file found damaged part-way is a UsageError)."""
    pq = _pyarrow("import")
    try:
        meta = pq.ParquetFile(str(parquet))
        wanted = ("image_path", "width", "height", "content_hash", *PHOTO)
        names = [c for c in wanted if c in meta.schema_arrow.names]
        records = meta.iter_batches(batch_size=BATCH, columns=names)
        while (record := next(records, None)) is not None:
            yield record.to_pydict()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"import: cannot read {parquet} ({first_line(exc)})") from None


def _batch(columns: dict[str, list[Any]], raw: np.ndarray) -> _Batch:
    n = len(raw)
    norms = np.linalg.norm(raw, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    unit = raw / np.where(usable, norms, 1.0)[:, None]
    none: list[Any] = [None] * n
    widths, heights, hashes = columns.get("width", none), columns.get("height", none), columns.get("content_hash", none)
    sizes = [_pixels(w, h) for w, h in zip(widths, heights, strict=True)]
    batch = _Batch(
        paths=[p if isinstance(p, str) else "" for p in columns["image_path"]],
        vectors=[unit[i] if usable[i] else None for i in range(n)],
        sizes=sizes,
        hashes=[h if isinstance(h, str) and h else None for h in hashes],
    )
    batch.need_size = [s is None for s in sizes]
    batch.photos = [_carried(columns, i) for i in range(n)]
    return batch


def _pixels(width: Any, height: Any) -> tuple[int, int] | None:
    """A usable pixel size from the metadata, or None (then it is read from the file's header)."""
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    return None


def _write_batch(
    store: Store, model_id: str, dim: int, batch: _Batch, files: Sequence[LocalFile], report: EmbeddingImportReport
) -> None:
    todo: list[NewImage] = []
    for i, f in enumerate(files):
        vector, size, exported, photo = batch.vectors[i], batch.sizes[i], batch.hashes[i], batch.photos[i]
        if f.missing:
            report.missing += 1
            if len(report.missing_paths) < MAX_LISTED:
                report.missing_paths.append(f.path)
        elif f.error is not None:
            report.skipped.append(Skipped(f.path, f.error))
        elif vector is None:
            report.skipped.append(Skipped(f.path, "its vector is zero or not finite"))
        elif exported is not None and exported != f.content_hash:
            report.changed += 1
        else:
            width, height = size or (f.width, f.height)
            photo = photo if exported is not None else None  # what was read of that very content, or nothing
            new = NewImage(f.path, f.size, f.mtime_ns, f.content_hash, width, height, vector, f.generated, photo)
            todo.append(new)
    if todo:
        _write(store, model_id, dim, todo, report)


def _write(store: Store, model_id: str, dim: int, todo: list[NewImage], report: EmbeddingImportReport) -> None:
    with store.write() as conn:
        store.claim_model(conn, model_id, dim)
        indexed = _indexed(conn, [new.path for new in todo])
        written = []
        for new in todo:
            old = indexed.get(new.path)
            if old is not None and old[1] == new.content_hash:
                report.unchanged += 1
                continue
            image_id = store.insert_image(conn, new) if old is None else store.replace_image(conn, old[0], new)
            indexed[new.path] = (image_id, new.content_hash)
            written.append(new.path)
        if written:
            store.forget_skipped(conn, written)
            store.bump_generation(conn)
    report.imported += len(written)


def _indexed(conn: Connection, paths: list[str]) -> dict[str, tuple[int, str]]:
    """{path: (id, content_hash)} of those paths that are indexed."""
    found: dict[str, tuple[int, str]] = {}
    for part in chunks(sorted(set(paths)), 500):
        stmt = select(images.c.path, images.c.id, images.c.content_hash).where(images.c.path.in_(part))
        found.update({r.path: (int(r.id), r.content_hash) for r in conn.execute(stmt)})
    return found

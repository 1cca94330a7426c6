"""The reader stage on a Ray cluster (`imgsearch index --ray ADDRESS`): Ray Data reads, decodes and embeds.

    driver    plan (as always) -> the paths to read -> Ray Data -> rows -> Read -> Writer (a transaction a batch)
    cluster   embedding actors: read, hash, decode, preprocess (threads), embed (the model loaded once per
              actor: one actor per GPU, else per `index.ray_cpus_per_actor` CPUs)

One stage, not read tasks before the actors: read tasks with CPUs of their own stall the pipeline when a
node dies, as the dead node's actor is restarted on the CPUs the reads were left (measured: 576 of 600
files, then nothing); without CPUs they are not bounded at all. The actor reads on its decode threads,
as the plain Reader does beside the model, and the files' bytes never cross the cluster. Decoding needs
the model anyway: preprocessing is the model's own (`Embedder.prepare`), and a large JPEG is decoded at a
scale chosen for its input size. A file whose content hash is probably indexed already (a rename, a copy:
a filter of 64-bit hash prefixes) is hashed but not decoded; the driver decides for certain against the
store, as the plain reader does.

Exactly once: Ray Data retries the task of a worker that died (actor tasks are retried, actors
restarted); the driver accepts each path once, whatever arrives twice, and a path Ray never returned (or
one it skipped as known that the store no longer holds) goes through the local Reader at the end. Only
the driver writes, through the same Writer as the plain pipeline: renames, copies, skips and the FAISS
cache behave exactly as there.

Every node needs imgsearch installed and the files at the same paths (a shared folder). This module is
imported only when `index.ray` is set, and it imports Ray only then.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from imgsearch import images
from imgsearch.config import IndexSettings, Settings
from imgsearch.errors import ClusterError, ImageDecodeError, ImgSearchError
from imgsearch.indexer.pipeline import LazyEmbedder, MakeReader, Read, Reader, Todo
from imgsearch.indexer.scan import FileEntry
from imgsearch.raw import is_raw
from imgsearch.store.repository import Store, StoredImage

CONNECT_TIMEOUT = 5.0  # seconds; Ray itself waits for an absent head far longer than anyone would
MAX_BLOCKS = 10_000

Row = dict[str, Any]


def reader(settings: Settings, store: Store) -> MakeReader:
    """The pipeline's reader stage for `pipeline.run(make_reader=...)`, on the cluster at `index.ray`."""
    return partial(RayReader, settings, store)


class RayReader:
    """Turns what the cluster sends back into the reader stage's `Read`s, each path once."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        embedder: LazyEmbedder,
        index: IndexSettings,
        lookup: Callable[[str], list[StoredImage]],
    ):
        self.settings = settings
        self.store = store
        self.lookup = lookup
        self.local = Reader(embedder, index, lookup)

    def run(self, items: Iterable[Todo]) -> Iterator[list[Read]]:
        pending = {entry.path: (entry, old) for entry, old in items}
        if not pending:
            return
        leftovers: list[Todo] = []
        known = _prefixes(self.store.content_hashes())
        with connected(self.settings.index.ray):
            for rows in _stream(self.settings, list(pending), known):
                ready = []
                for row in rows:
                    item = pending.pop(os.fsdecode(row["path"]), None)
                    if item is None:  # a retried block's second copy: written already
                        continue
                    read = self._read(row, *item)
                    if read is None:
                        leftovers.append(item)
                    else:
                        ready.append(read)
                if ready:
                    yield ready
        leftovers.extend(pending.values())
        if leftovers:
            yield from self.local.run(leftovers)

    def _read(self, row: Row, entry: FileEntry, old: StoredImage | None) -> Read | None:
        """What Reader.read would have found, from a row; None: read it here instead."""
        if row["gone"]:
            return Read(entry, old, gone=True)
        digest = str(row["hash"])
        if not digest:  # the file could not be read
            return Read(entry, old, error=str(row["error"]))
        entry = FileEntry(entry.path, int(row["size"]), int(row["mtime_ns"]))
        generated = bool(row["generated"])
        if old is not None and old.content_hash == digest:
            return Read(entry, old, digest, touched=True)
        duplicates = self.lookup(digest)
        if duplicates:
            return Read(entry, old, digest, duplicates=duplicates, generated=generated)
        if row["error"]:
            return Read(entry, old, digest, error=str(row["error"]))
        if not row["embedded"]:  # skipped as known, and no longer is (a replaced file's old content)
            return None
        width, height = int(row["width"]), int(row["height"])
        vector = np.array(row["vector"], dtype=np.float32)
        return Read(
            entry,
            old,
            digest,
            width=width,
            height=height,
            generated=generated,
            vector=vector,
            model_id=str(row["model_id"]),
        )


@contextmanager
def connected(address: str) -> Iterator[None]:
    """Connected to the Ray cluster at address for the duration; ClusterError at once if it cannot be reached."""
    try:
        import ray
    except ImportError:
        raise ClusterError("index.ray is set but Ray is not installed: pip install 'imgsearch[ray]'") from None
    if ray.is_initialized():  # a program using imgsearch as a library connected already: use its connection
        yield
        return
    _check_reachable(address)
    # Ray's core (C++) writes notes about its own internals across the progress bar (a RAY_BACKEND_LOG_LEVEL
    # the user set wins); failures that matter come back as exceptions.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {_last_line(exc)}") from None
    try:
        _quiet(ray)
        with _no_notices():
            yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """A head that is not there fails here in seconds (ray.init would wait for it for minutes)."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"index.ray must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _quiet(ray: Any) -> None:
    """The driver shows one progress bar, imgsearch's: none of Ray Data's bars, banners or stats."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    # Its errors too: one that ends the run comes back as an exception, said in one line (all of it with --debug).
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


@contextmanager
def _no_notices() -> Iterator[None]:
    """Ray prints the cluster's notices (a node died, a task is retried, a worker's traceback) on the driver,
    from a thread, on stdout: across the progress bar and into `index --json`'s report. They are dropped
    here: what ends the run comes back as an exception, a retried batch needs no notice, and the head's
    session logs keep them all. The function is Ray's private one: if it has moved, they stay."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        yield
        return
    setattr(worker, "print_to_stdstream", lambda *args, **kwargs: None)  # noqa: B010
    try:
        yield
    finally:
        setattr(worker, "print_to_stdstream", original)  # noqa: B010


def _stream(settings: Settings, paths: list[str], known: np.ndarray) -> Iterator[list[Row]]:
    """Rows for paths, a batch at a time as the actors finish them (in no particular order)."""
    import ray

    batch = settings.index.batch_size
    gpus = ray.cluster_resources().get("GPU", 0.0)
    actors, cpus, gpus_each = plan_actors(_node_cpus(ray), gpus, settings.index.ray_cpus_per_actor)
    items = [{"path": os.fsencode(p)} for p in paths]
    blocks = min(MAX_BLOCKS, -(-len(items) // batch))
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _Embed,
        batch_size=batch,
        fn_constructor_kwargs={"settings": settings, "known": known, "cpus": cpus},
        # Two calls at once per actor: one reads and decodes while the other embeds.
        compute=ray.data.ActorPoolStrategy(
            size=min(actors, blocks), max_concurrent_calls_per_actor=2, enable_true_multi_threading=True
        ),
        num_cpus=cpus,
        num_gpus=gpus_each,
    )
    try:
        for columns in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield [{key: values[i] for key, values in columns.items()} for i in range(len(columns["path"]))]
    except ImgSearchError:
        raise
    except Exception as exc:
        raise _failure(exc) from exc


def plan_actors(node_cpus: list[float], gpus: float, cpus_per_actor: float) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each): one per GPU, else one per cpus_per_actor CPUs of each node. An actor
    never asks for more CPUs than the largest node has."""
    if not any(c > 0 for c in node_cpus):
        raise ClusterError("the Ray cluster has no CPUs for imgsearch's actors")
    cpus = min(cpus_per_actor, max(node_cpus))
    if gpus >= 1:
        return int(gpus), cpus, 1.0
    return max(1, sum(int(c // cpus) for c in node_cpus)), cpus, 0.0


def _node_cpus(ray: Any) -> list[float]:
    return [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]


def _failure(exc: BaseException) -> ImgSearchError:
    """An error raised on the cluster: an imgsearch error as itself (bad weights on a node, say), else ClusterError."""
    seen: BaseException | None = exc
    for _ in range(20):  # Ray wraps the worker's exception (`cause`) in its own, and those in others
        if seen is None or isinstance(seen, ImgSearchError):
            break
        seen = getattr(seen, "cause", None) or seen.__cause__
    if isinstance(seen, ImgSearchError):
        return seen
    return ClusterError(f"on the Ray cluster: {_last_line(exc)} (what was written stays: run again to finish)")


def _last_line(exc: BaseException) -> str:
    """The line that says what went wrong: Ray's messages end with the worker's exception, as `module.Type: text`."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.removeprefix("imgsearch.errors.").split(": ", 1)[-1] if last.startswith("imgsearch.") else last[:300]


def _prefixes(hashes: Iterable[str]) -> np.ndarray:
    """Sorted 64-bit prefixes of content hashes: a compact filter (8 bytes an image) the actors share."""
    return np.unique(np.fromiter((int(h[:16], 16) for h in hashes), dtype=np.uint64))


# The cluster side: these run in Ray's worker processes.


def _maybe_known(digest: str, known: np.ndarray) -> bool:
    key = np.uint64(int(digest[:16], 16))
    i = int(np.searchsorted(known, key))
    return i < len(known) and known[i] == key


def _read_one(path: str, known: np.ndarray, max_bytes: int) -> tuple[Row, bytes | None]:
    """What reading finds of a file: its row, and its bytes if the model should see them."""
    row: Row = {
        "path": os.fsencode(path),
        "size": 0,
        "mtime_ns": 0,
        "hash": "",
        "generated": False,
        "gone": False,
        "error": "",
        "embedded": False,
        "width": 0,
        "height": 0,
    }
    try:
        found = images.read_file(path, max_bytes)
    except FileNotFoundError:
        return row | {"gone": True}, None
    except ImageDecodeError as exc:
        return row | {"error": str(exc)}, None
    row |= {"size": found.size, "mtime_ns": found.mtime_ns, "hash": found.digest, "generated": found.generated}
    return row, None if _maybe_known(found.digest, known) else found.data


class _Embed:
    """The actor: reads, hashes, decodes and preprocesses on threads (as the plain Reader does), then embeds."""

    def __init__(self, settings: Settings, known: np.ndarray, cpus: float):
        from imgsearch.embed import load_embedder

        self.embedder = load_embedder(settings)
        self.settings = settings.index
        self.known = known
        self.draft = self.embedder.input_size if self.settings.jpeg_draft else 0
        threads = self.settings.workers or max(1, round(cpus))
        self.pool = images.reader_pool(threads)
        self.model = threading.Lock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        found = list(self.pool.map(self._read, batch["path"]))
        ok = [i for i, (_, pixels) in enumerate(found) if pixels is not None]
        vectors = np.zeros((len(found), self.embedder.dim), dtype=np.float32)
        if ok:
            pixels = np.stack([p for _, p in found if p is not None])
            with self.model:
                vectors[ok] = self.embedder.embed_prepared(pixels)
        model = np.full(len(found), self.embedder.model_id, dtype=object)
        return _columns([row for row, _ in found]) | {"vector": vectors, "model_id": model}

    def _read(self, path: bytes) -> tuple[Row, np.ndarray | None]:
        name = os.fsdecode(path)
        row, data = _read_one(name, self.known, images.size_limit(self.settings.max_pixels))
        if data is None:
            return row, None
        try:
            image, (width, height) = images.decode_sized(
                data, self.settings.max_pixels, self.draft, raw_file=is_raw(name)
            )
        except ImageDecodeError as exc:
            return row | {"error": str(exc)}, None
        return row | {"embedded": True, "width": width, "height": height}, self.embedder.prepare(image)


def _columns(rows: list[Row]) -> dict[str, np.ndarray]:
    """Rows as Ray Data's numpy batch: one array a column (bytes and text as objects, never fixed-width)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], (bytes, str)):
            column = np.empty(len(values), dtype=object)
            column[:] = values
            out[key] = column
        else:
            out[key] = np.asarray(values)
    return out

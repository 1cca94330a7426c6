"""Use cases: index, query, status. Builds the parts from Settings; everything the CLI does is here.

>>> from imgsearch import Library
>>> lib = Library.open()                      # IMGSEARCH_HOME, config.yaml, environment
>>> report = lib.index(["~/Pictures"])
>>> for hit in lib.query("old teacher at blackboard", k=5):
...     print(hit.score, hit.path)
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.config import Settings, is_postgres_url, load_settings
from imgsearch.errors import BusyError, IndexEmptyError, NotFoundError, UsageError
from imgsearch.store.lock import WriterLock
from imgsearch.types import (
    NO_FILTER,
    Copy,
    CopyGroup,
    ExportReport,
    GenerationResult,
    Hit,
    ImageInfo,
    ImageTag,
    IndexReport,
    LabelResult,
    MatchVerdict,
    MigrateReport,
    PhotoFilter,
    Progress,
    QueryTerm,
    Skipped,
    Status,
    TagCount,
    TagRecord,
    TagReport,
    printable,
)

if TYPE_CHECKING:
    from imgsearch.embed import DifferentiableClip, Embedder
    from imgsearch.indexer.pipeline import MakeReader, OnProgress
    from imgsearch.search.engine import SearchEngine
    from imgsearch.search.labels import Label
    from imgsearch.search.tagger import LabelVectors, PromptMemory
    from imgsearch.store.cache import Carry, VectorCache
    from imgsearch.store.repository import Store
    from imgsearch.types import EmbeddingExportReport, EmbeddingImportReport


def _ignore(_: Progress) -> None:
    pass


class Library:
    """One imgsearch home: its database, vector index and model. Heavy parts load on first use."""

    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self._embedder = embedder
        self._store: Store | None = None
        self._cache: VectorCache | None = None
        self.lock = WriterLock(settings.home)
        # serve: what requests ask is remembered in memory (bounded), never written to the database
        self.prompt_memory: PromptMemory | None = None
        self._loading = threading.Lock()  # a server's threads must not load the model twice
        self._torch_embedder: DifferentiableClip | None = None

    @classmethod
    def open(
        cls,
        home: str | Path | None = None,
        config: str | Path | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> Library:
        """A Library with settings from flags, environment, config file and defaults (in that order)."""
        return cls(load_settings(home, config, overrides))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        if self._store is None:
            from imgsearch.store.repository import Store

            self._store = Store(self.settings.store.url or self.settings.database_path)
        return self._store

    @property
    def cache(self) -> VectorCache:
        """The vector index this process searches (SQLite homes), and when its file is written."""
        if self._cache is None:
            from imgsearch.store.cache import VectorCache

            self._cache = VectorCache(self.store, self.settings.search, self.settings.vector_index_path, self.lock)
        return self._cache

    @property
    def embedder(self) -> Embedder:
        with self._loading:
            if self._embedder is None:
                from imgsearch.embed import load_embedder

                self._embedder = load_embedder(self.settings)
        return self._embedder

    def _differentiable(self) -> DifferentiableClip:
        """Generation differentiates through CLIP: the PyTorch model (fp32 on the CPU), even where OpenVINO or
        ONNX Runtime serves search."""
        from imgsearch.embed import differentiable, load_torch_embedder

        found = differentiable(self.embedder)
        if found is not None:
            return found
        with self._loading:
            if self._torch_embedder is None:
                self._torch_embedder = load_torch_embedder(self.settings)
        return self._torch_embedder

    # indexing

    def index(
        self,
        paths: Sequence[str | Path] = (),
        *,
        rebuild: bool = False,
        on_progress: OnProgress = _ignore,
        stop: threading.Event | None = None,
    ) -> IndexReport:
        """Bring the index in line with the image files under paths (default: every folder indexed before).

        Setting `stop` (from another thread or a signal handler) ends the run after the batch in flight.
        """
        with self.lock.hold():
            roots = self._begin(paths, rebuild)
            return self._run(roots, on_progress, stop)

    def watch(
        self,
        paths: Sequence[str | Path] = (),
        *,
        stop: threading.Event | None = None,
        on_pass: Callable[[IndexReport], None] = lambda report: None,
        on_progress: OnProgress = _ignore,
        on_notice: Callable[[str], None] = lambda message: None,
    ) -> None:
        """Reconcile the index with paths, then follow filesystem changes until `stop` is set or Ctrl-C.

        Holds the writer lock throughout; queries keep working. Each settled set of changes goes
        through the same pipeline as `index`, and its report is passed to `on_pass`.
        """
        from imgsearch.errors import InterruptedRun
        from imgsearch.indexer.watch import Watcher
        from imgsearch.store.cache import Carry

        stop = stop or threading.Event()
        with self.lock.hold():
            roots = self._begin(paths)
            ix = self.settings.index
            watcher = Watcher(roots, ix.extensions, ix.exclude, self.settings.watch.settle_seconds)
            watcher.start()  # before reconciling, so nothing that changes meanwhile is missed
            carry = Carry()  # the index stays in memory between passes; a large file is written now and then
            try:
                on_pass(self._run(roots, on_progress, stop, carry))
                while not stop.is_set():
                    changed = watcher.next_pass(stop)
                    if changed is None:
                        on_notice("filesystem events were lost (queue overflow or watcher error): rescanning all")
                    targets = roots if changed is None else sorted(changed)
                    if targets and not stop.is_set():
                        on_pass(self._run(targets, on_progress, stop, carry))
            except (KeyboardInterrupt, InterruptedRun):
                pass  # the pipeline finished or rolled back its batch and saved the index
            finally:
                watcher.stop()
                carry.flush(self.store, self.settings.vector_index_path)

    def _begin(self, paths: Sequence[str | Path], rebuild: bool = False) -> list[str]:
        """What every writing run does first, under the writer lock: resolve and record the roots, check the model."""
        roots = self._roots(paths)
        self._check_model(allow_empty=True, rebuilding=rebuild)
        if self.settings.tagging.auto:
            self._vocabulary()  # a bad vocabulary file is reported before any work, not after it
        if rebuild:
            _ = self.embedder  # the new model must load before the old vectors are dropped
        self.store.add_roots(roots, clear=rebuild)
        return roots

    def _run(
        self,
        roots: Sequence[str],
        on_progress: OnProgress,
        stop: threading.Event | None,
        carry: Carry | None = None,
    ) -> IndexReport:
        from imgsearch.indexer import pipeline

        try:
            report = pipeline.run(
                self.store,
                lambda: self.embedder,
                roots,
                self.settings.index,
                self.settings.search,
                self.settings.vector_index_path,
                on_progress,
                stop,
                self._ray_reader(),
                carry,
                self._own_folders(),
            )
        finally:
            self.cache.forget()
        report.photos_read, report.places_named = self._backfill(on_progress, stop)
        report.hashed = self._group_copies(report, on_progress, stop)
        if self.settings.tagging.auto:
            report.tagged = self._tag(None, None, on_progress, stop)
        return report

    def _own_folders(self) -> list[str]:
        """The folders of pictures imgsearch itself writes, never indexed even inside an indexed folder: its
        thumbnails, its model cache, and generated images unless generate.add_to_index asks for them. The home
        as a whole is not one of them: the rest of it holds no pictures, and a user may keep photos beside it."""
        s = self.settings
        own = [s.thumbnail_dir, s.model_cache_dir]
        if not s.generate.add_to_index:
            own.append(s.generated_dir)
        return [str(p) for p in own]

    def _backfill(self, on_progress: OnProgress, stop: threading.Event | None) -> tuple[int, int]:
        """Photo fields of images indexed without them (before the upgrade, by `import`, on Ray): headers only."""
        from imgsearch.indexer import backfill

        filled = backfill.run(self.store, on_progress, stop)
        return filled.read, filled.named

    def _group_copies(self, report: IndexReport, on_progress: OnProgress, stop: threading.Event | None) -> int:
        """Hash the pixels of images indexed without a hash (no model call), then decide the groups of copies again
        if anything changed. Returns how many images were hashed."""
        from imgsearch.indexer import backfill, copies

        ix = self.settings.index
        hashed = backfill.hashes(self.store, ix.max_pixels, ix.workers or os.cpu_count() or 2, on_progress, stop)
        changed = report.embedded + report.renamed + report.copied + report.removed + hashed
        only_added = not (report.renamed or report.copied or hashed)  # removals are seen by the group count
        copies.regroup(self.store, force=changed > 0, only_added=only_added)
        return hashed

    def _ray_reader(self) -> MakeReader | None:
        """The reader stage on the Ray cluster at `index.ray`, if set (only then is Ray imported)."""
        if not self.settings.index.ray:
            return None
        from imgsearch.indexer import distributed

        return distributed.reader(self.settings, self.store)

    def _roots(self, paths: Sequence[str | Path]) -> list[str]:
        if not paths:
            known = self.store.roots()
            if not known:
                raise UsageError("index: no folder given and none indexed before (imgsearch index FOLDER)")
            # A folder that is gone (an unmounted drive, say) is left alone: scanning it would drop its images.
            present = [r for r in known if os.path.exists(r)]
            if not present:
                raise UsageError(f"index: none of the indexed folders exists now ({', '.join(known)})")
            return present
        roots = []
        for p in paths:
            path = Path(p).expanduser()
            if not path.exists():
                raise UsageError(f"index: no such file or folder: {printable(str(p))}")
            resolved = str(path.resolve())
            if printable(resolved) != resolved:
                raise UsageError(f"index: the path {printable(resolved)} is not valid UTF-8; rename it to index it")
            roots.append(resolved)
        return roots

    def _empty(self) -> IndexEmptyError:
        return IndexEmptyError(f"the index at {self.settings.home} is empty: run `imgsearch index FOLDER` first")

    def _check_model(self, allow_empty: bool = False, rebuilding: bool = False) -> None:
        from imgsearch.embed import configured_model_id
        from imgsearch.store.repository import mismatch

        indexed, _ = self.store.model()
        count = self.store.count()
        if count == 0 and not allow_empty:
            raise self._empty()
        if count and indexed and not rebuilding:
            configured = configured_model_id(self.settings)
            if configured != indexed:
                raise mismatch(indexed, configured)

    # searching

    def query(
        self,
        text: str = "",
        *,
        images: Sequence[str | Path] = (),
        k: int | None = None,
        path_prefix: str | Path | None = None,
        tags: Sequence[str] = (),
        include_generated: bool = False,
        files_in_text: bool = True,
        ask_server: bool = False,
        after: str | None = None,
        before: str | None = None,
        camera: str | None = None,
        place: str | None = None,
        sort: str | None = None,
        all_copies: bool = False,
    ) -> list[Hit]:
        """Images best matching a query: text and/or image terms (see imgsearch.search.query).

        With `tags`, only images carrying all of them are searched; after/before (a date: 2023, 2023-06,
        2023-06-14, each bound including the period it names), camera and place (case-insensitive substrings)
        narrow the search the same way (imgsearch.search.dates). sort "date" or "-date" orders the k best by
        capture time. With filters and no terms, the matching images are listed: with tags alone, those tagged
        with the first, hand tags first, then by the tag's probability; else by capture time (newest first unless
        sort says "date"). Images made by `generate` are left out unless include_generated. With
        files_in_text=False, no term of `text` is taken for an image file (text that came from the network). With
        ask_server, a text query goes to a running `imgsearch serve` of the same settings, whose model is loaded
        already (see imgsearch.remote); without one, it is answered here. Copies of one picture (imgsearch.dupes)
        are one hit, its best copy found, counting the others (Hit.copies), unless all_copies.
        """
        from imgsearch.search.dates import photo_filter, sort_order

        photo, order = photo_filter(after, before, camera, place), sort_order(sort)
        if not text.strip() and not images and (tags or photo or order):
            return self._listing(k, 0, path_prefix, tags, photo, order, all_copies)
        terms = self.parse_query(text, images, files_in_text)
        # the file a running server announces itself in: without it, imgsearch.remote (and http.client) is not imported
        served_here = self.settings.serve.query_via_server and self.settings.server_file.exists()
        if ask_server and served_here and all(t.kind == "text" for t in terms):
            from imgsearch import remote

            path = str(path_prefix) if path_prefix is not None else None
            flags = {"after": after, "before": before, "camera": camera, "place": place, "sort": sort}
            given: dict[str, str] = {key: value for key, value in flags.items() if value is not None}
            if all_copies:
                given["copies"] = "all"
            served = remote.query(
                self.settings, text, k=k, path_prefix=path, tags=tags, include_generated=include_generated, **given
            )
            if served is not None:
                return served
        self._check_model()
        vector = self.query_vector(terms)
        return self.search_vector(
            vector,
            k=k,
            path_prefix=path_prefix,
            tags=tags,
            include_generated=include_generated,
            photo=photo,
            sort=order,
            all_copies=all_copies,
        )

    def parse_query(
        self, text: str = "", images: Sequence[str | Path] = (), files_in_text: bool = True
    ) -> list[QueryTerm]:
        from imgsearch.search import query as q

        terms = q.parse(text, files_in_text) if text.strip() else []
        for image in images:
            path = Path(image).expanduser()
            if not path.is_file():
                raise UsageError(f"query: no such image file: {image}")
            terms.append(QueryTerm("image", str(path.resolve()), 1.0))
        if not terms:
            raise UsageError("query: nothing to search for (give text, --image, or both)")
        return terms

    def query_vector(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        from imgsearch.search import query as q

        return q.vector(terms, _QueryEncoder(self), self.settings.index.max_pixels)

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        k: int | None = None,
        path_prefix: str | Path | None = None,
        tags: Sequence[str] = (),
        include_generated: bool = False,
        photo: PhotoFilter = NO_FILTER,
        sort: str | None = None,
        all_copies: bool = False,
    ) -> list[Hit]:
        """Nearest indexed images to a unit vector, best first (among those under path_prefix, with all tags,
        passing the photo filter; sort "date"/"-date": those in order of capture), copies collapsed unless
        all_copies."""
        from imgsearch.search import collapse
        from imgsearch.search.engine import by_date

        def find(n: int) -> list[Hit]:
            return self.engine.by_vector(vector, n, _root(path_prefix), tags, include_generated, photo)

        k = k or self.settings.search.top_k
        found = find(k) if all_copies else collapse.search(find, k, self._collapsed)
        return self._with_raws(by_date(found, sort))

    def _collapsed(self, hits: list[Hit], leave_out: int | None = None) -> list[Hit]:
        """One hit per picture (imgsearch.search.collapse); without the group of copies `leave_out`, if given."""
        from imgsearch.search.collapse import collapse

        copies = self.store.copies
        groups = copies.groups_of(h.id for h in hits)
        if leave_out is not None:
            hits = [h for h in hits if groups.get(h.id, (None, 0))[0] != leave_out]
        if not groups:
            return hits
        return collapse(hits, groups, copies.sizes(g for g, _ in groups.values()))

    def _shown(self, hits: list[Hit], all_copies: bool) -> list[Hit]:
        """A listing's hits as shown: copies collapsed (within the page) unless all_copies, RAW originals."""
        return self._with_raws(hits if all_copies else self._collapsed(hits))

    @property
    def engine(self) -> SearchEngine:
        """Searching the index (imgsearch.search.engine)."""
        from imgsearch.search.engine import SearchEngine

        s = self.settings
        return SearchEngine(self.store, self.cache, s.search.top_k, s.store.ef_search)

    def _with_raws(self, hits: list[Hit]) -> list[Hit]:
        """Each hit with the RAW original beside it, if any: read from the folder now, never stored (indexer.scan)."""
        from imgsearch.indexer.scan import NameFilter

        names = NameFilter(self.settings.index.extensions, self.settings.index.exclude)
        return [dataclasses.replace(h, raw=names.raw_of(h.path)) for h in hits]

    def similar(
        self,
        image_id: int,
        *,
        k: int | None = None,
        path_prefix: str | Path | None = None,
        tags: Sequence[str] = (),
        photo: PhotoFilter = NO_FILTER,
        all_copies: bool = False,
    ) -> list[Hit]:
        """Images most like an indexed one ("more like this"), best first, leaving the image itself out (and, unless
        all_copies, its copies: the lightbox lists them)."""
        from imgsearch.search import collapse

        self.image_info(image_id)
        k = k or self.settings.search.top_k
        if all_copies:
            return self._with_raws(self.engine.similar(image_id, k, _root(path_prefix), tags, photo))
        group = self.store.copies.groups_of([image_id]).get(image_id, (None, 0))[0]

        def find(n: int) -> list[Hit]:
            return self.engine.similar(image_id, n, _root(path_prefix), tags, photo)

        return self._with_raws(collapse.search(find, k, lambda hits: self._collapsed(hits, leave_out=group)))

    def newest(
        self,
        *,
        k: int | None = None,
        offset: int = 0,
        path_prefix: str | Path | None = None,
        all_copies: bool = False,
    ) -> list[Hit]:
        """The library itself, most recently indexed first (score 0): what to show before any query."""
        return self._shown(self.engine.newest(k, offset, _root(path_prefix)), all_copies)

    def _listing(
        self,
        k: int | None,
        offset: int,
        path_prefix: str | Path | None,
        tags: Sequence[str],
        photo: PhotoFilter,
        sort: str | None,
        all_copies: bool = False,
    ) -> list[Hit]:
        """Images that pass the filters, without a query (see query)."""
        if tags and sort is None:
            return self._shown(self.engine.tagged(tags, k, _root(path_prefix), photo), all_copies)
        return self._shown(self.engine.listing(k, offset, _root(path_prefix), tags, photo, sort or "-date"), all_copies)

    def values(self, field: str) -> list[tuple[str, int]]:
        """The cameras ("camera") or places ("place") of the library, with how many images have each."""
        if field not in ("camera", "place"):
            raise UsageError(f"values: {field!r} is not camera or place")
        return self.store.values(field)

    def image(self, image_id: int) -> ImageInfo:
        """An indexed image with its tags (hand tags first). Raises NotFoundError for an unknown id."""
        info = self.image_info(image_id)
        tags = tuple(ImageTag(*row) for row in self.store.tags.of_path(info.path))
        raw = self._with_raws([Hit(info.id, info.path, 0.0)])[0].raw
        return dataclasses.replace(info, tags=tags, raw=raw, copies=self._copies_of(info.id))

    def _copies_of(self, image_id: int) -> tuple[Copy, ...]:
        """The other files of an image's group of copies, best copy first."""
        copies = self.store.copies
        group = copies.groups_of([image_id]).get(image_id)
        if group is None:
            return ()
        members = copies.members([group[0]]).get(group[0], [])
        return tuple(c for c in self._described([[m.id for m in members]])[0].copies if c.id != image_id)

    def dupes(self, paths: Sequence[str | Path] = (), *, similar: bool = False) -> list[CopyGroup]:
        """Groups of copies (imgsearch.dupes) with a file under one of paths (default: all), best copy first,
        largest groups first. similar: also groups of near-identical shots by CLIP distance (imgsearch.search.
        similar), among pictures that are in no group."""
        copies = self.store.copies
        roots = [_root(p) for p in paths] or [None]
        seen: dict[int, list[int]] = {}
        for root in roots:
            for members in copies.all_groups(root):
                seen.setdefault(members[0].id, [m.id for m in members])
        groups = self._described(list(seen.values()))
        if similar:
            groups += self._similar_groups(roots, {i for ids in seen.values() for i in ids})
        return groups

    def _similar_groups(self, roots: Sequence[str | None], grouped: set[int]) -> list[CopyGroup]:
        """Groups of near-identical shots among the images under roots that are in no group of copies."""
        from imgsearch.search import similar

        ids, vectors = self.store.all_vectors()
        under = [self.store.allowed_ids(root, (), NO_FILTER) for root in roots]
        wanted = None if any(a is None for a in under) else {int(i) for a in under if a is not None for i in a}
        keep = [
            i
            for i, image_id in enumerate(ids.tolist())
            if image_id not in grouped and (wanted is None or image_id in wanted)
        ]
        return self._described([[int(ids[keep[i]]) for i in star] for star in similar.groups(vectors[keep])], "similar")

    def _described(self, groups: Sequence[Sequence[int]], level: str | None = None) -> list[CopyGroup]:
        """Groups (lists of ids) as shown: their files best copy first, each with why it is not the best (level:
        exact or copy, from the files, unless given). One read of every file's facts for all the groups."""
        from imgsearch.indexer import copies

        known = {c.id: c for c in self.store.copies.candidates(i for ids in groups for i in ids)}
        out = []
        for ids in groups:
            found = copies.explained([known[i] for i in ids if i in known])
            listed = tuple(Copy(c.id, c.path, c.width, c.height, c.size, why) for c, why in found)
            out.append(CopyGroup(level or copies.level([c for c, _ in found]), listed))
        return out

    def tag_duplicates(self, groups: Sequence[CopyGroup], tag: str) -> int:
        """Tag every copy but the best of each group by hand (it goes out with `tag export --xmp`). Returns how
        many files were tagged. imgsearch never deletes or moves an image file: the tag is for the user's tools."""
        paths = [c.path for g in groups for c in g.copies[1:]]
        return self.set_tag(tag, paths) if paths else 0

    def thumbnail(self, image_id: int, side: int | None = None) -> Path:
        """The cached JPEG rendition of an indexed image, made on first request: longest side `side`
        (default serve.thumbnail_size; the page asks 2048 for formats a browser cannot show: TIFF, HEIC, JXL, RAW).

        Raises NotFoundError for an unknown id, ImageDecodeError when its file is gone, unreadable or changed.
        """
        from imgsearch.indexer import thumbs

        info = self.image_info(image_id)
        s = self.settings
        return thumbs.thumbnail(
            Path(info.path), info.content_hash, s.thumbnail_dir, side or s.serve.thumbnail_size, s.index.max_pixels
        )

    def original(self, image_id: int) -> bytes:
        """The bytes of an indexed image's file, refused (ImageDecodeError) if it is not what was indexed."""
        from imgsearch import images

        info = self.image_info(image_id)
        return images.read_indexed(Path(info.path), info.content_hash, self.settings.index.max_pixels)

    def image_info(self, image_id: int) -> ImageInfo:
        info = self.store.image_info(image_id)
        if info is None:
            raise NotFoundError(f"no indexed image has id {image_id}")
        return info

    def image_id_of(self, path: str | Path) -> int | None:
        """The id of the indexed image at a path, or None."""
        return self.store.id_of(_absolute(path))

    def warm(self) -> None:
        """Load the model and the vector index now, so that the first query does not wait for them."""
        if self.store.count():
            self._check_model()
            if not self.store.postgres:
                self.cache.loaded()
        self.embedder.embed_texts(["warm up"])

    def prune_thumbnails(self) -> int:
        """Delete cached thumbnails of images no longer indexed. Returns how many files went."""
        from imgsearch.indexer import thumbs

        return thumbs.prune(self.settings.thumbnail_dir, self.store.content_hashes())

    def tagged(
        self,
        tags: Sequence[str],
        *,
        k: int | None = None,
        path_prefix: str | Path | None = None,
        all_copies: bool = False,
    ) -> list[Hit]:
        """Images carrying every one of tags, ranked by the first: hand tags (score 1.0), then by probability."""
        return self._shown(self.engine.tagged(tags, k, _root(path_prefix)), all_copies)

    # generation

    def match(
        self, text: str, hits: Sequence[Hit] | None = None, files_in_text: bool = True, wait: bool = True
    ) -> MatchVerdict:
        """Whether the library holds an image for a text query, judged against contrasting prompts
        (imgsearch.search.match): no match when the best evidence is below -generate.match_margin.

        The contrasting prompts are embedded once per model (the built-in vocabulary: ~2,400 prompts); without
        `wait`, a verdict that would have to embed them first comes back not ready instead (see prepare_match).
        """
        from imgsearch.embed import configured_model_id
        from imgsearch.search import match

        gs = self.settings.generate
        terms = self.parse_query(text, files_in_text=files_in_text)
        if any(t.kind != "text" for t in terms):
            raise UsageError("generate-if-missing: the query must be text only")
        if self.store.count() == 0:
            return MatchVerdict(False, None, gs.match_margin, None, None)
        self._check_model()
        embedder_id = configured_model_id(self.settings)
        labels, vectors = self._contrast(), self.label_vectors()
        if not wait and vectors.missing(embedder_id, labels):
            return MatchVerdict(False, None, gs.match_margin, None, None, ready=False)
        query = self.query_vector(terms)
        top = list(hits if hits is not None else self.search_vector(query, k=gs.match_candidates))
        top = top[: gs.match_candidates]
        if not top:
            return MatchVerdict(False, None, gs.match_margin, None, None)
        embedder = self.embedder
        rivals = vectors.matrix(embedder.model_id, labels)
        found = np.stack([self.store.vector_of(h.id) for h in top])
        names = [label.name for label in labels]
        return match.verdict(query, top, found, rivals, names, embedder.logit_scale, gs.match_margin)

    def prepare_match(
        self, turn: AbstractContextManager[Any] | None = None, stop: threading.Event | None = None
    ) -> int:
        """Embed the contrasting prompts of the no-match test now, a chunk at a time (each model call inside
        `turn`: serve lets queries in between), keeping each chunk. Returns how many were embedded."""
        from imgsearch.embed import configured_model_id

        if self.store.count() == 0:
            return 0
        self._check_model()
        vectors = self.label_vectors(stop=stop, turn=turn)
        vectors.matrix(configured_model_id(self.settings), self._contrast())
        return vectors.embedded

    def _contrast(self) -> list[Label]:
        from imgsearch.search import labels as lb
        from imgsearch.search.match import GENERIC_LABELS

        vocabulary = self._vocabulary(self.settings.generate.contrast_vocabulary or None)[0]
        return _unique(vocabulary + lb.parse_labels(",".join(GENERIC_LABELS)))

    def generate(
        self,
        prompt: str,
        *,
        steps: int = 0,
        size: tuple[int, int] | None = None,
        seed: int | None = None,
        init_image: str | Path | None = None,
        generator: str | None = None,
        on_progress: OnProgress = _ignore,
        on_notice: Callable[[str], None] = lambda text: None,
        stop: threading.Event | None = None,
    ) -> GenerationResult:
        """Synthesise an image for the prompt with CLIP guidance (VQGAN, else the Fourier fallback).

        Saved as PNG under generate.output_dir with its provenance in text chunks; with
        generate.add_to_index it is indexed too (marked generated). Same seed, same device: same image.
        """
        from imgsearch import generate as gen
        from imgsearch.search import query as q

        if not prompt.strip():
            raise UsageError("generate: give a prompt")
        if steps < 0 or (size is not None and min(size) < 8):
            raise UsageError("generate: --steps must be positive and --size at least 8 pixels")
        init = q.load(str(init_image), self.settings.index.max_pixels, "generate") if init_image else None
        width, height = size or (0, 0)
        request = gen.Request(
            prompt.strip(), steps, width, height, seed, init, generator or self.settings.generate.generator
        )
        result = gen.run(
            request,
            self._differentiable(),
            self.settings.generate,
            self.settings.model_cache_dir,
            self.settings.generated_dir,
            self.settings.model.download_timeout,
            on_progress,
            on_notice,
            stop.is_set if stop is not None else lambda: False,
        )
        if self.settings.generate.add_to_index:
            try:
                self.index([self.settings.generated_dir])
            except BusyError as exc:
                on_notice(f"not indexed yet: {exc}")
        return result

    # labels and tags

    def label(
        self,
        paths: Sequence[str | Path],
        labels: str | Sequence[str] | None = None,
        *,
        vocabulary: str | None = None,
        on_progress: OnProgress = _ignore,
    ) -> list[LabelResult]:
        """Zero-shot labels of image files (indexed or not), most probable first.

        labels: "cat,dog,person" or a list; default: the vocabulary file (or tagging.vocabulary).
        Probabilities are among the labels given (softmax; independent sigmoids for SigLIP models).
        """
        from imgsearch.search import labels as lb

        if isinstance(labels, str):
            chosen = lb.parse_labels(labels)
        elif labels:
            chosen = lb.parse_labels(",".join(labels))
        else:
            chosen = self._vocabulary(vocabulary)[0]
        files = [str(Path(p).expanduser()) for p in paths]
        for f in files:
            if not Path(f).is_file():
                raise UsageError(f"label: no such image file: {f}")
        embedder = self.embedder
        matrix = self.label_vectors(on_progress).matrix(embedder.model_id, chosen)
        ix = self.settings.index
        return lb.label_files(embedder, matrix, chosen, files, ix.batch_size, ix.max_pixels)

    def tag(
        self,
        *,
        path_prefix: str | Path | None = None,
        vocabulary: str | None = None,
        on_progress: OnProgress = _ignore,
        stop: threading.Event | None = None,
        on_notice: Callable[[str], None] = lambda text: None,
    ) -> TagReport:
        """Auto-tag the indexed images (under path_prefix) against the vocabulary, changing only what differs.

        Images already tagged under the same vocabulary, templates, rule and model are skipped; hand
        tags (and tags removed by hand) are never touched. A first pass that embeds many label prompts says
        what it will cost (on_notice) after its first chunk; they are kept as they go, and `stop` ends it.
        """
        self._check_model()
        # No writer lock: each chunk is one transaction that reads, decides and writes, so tagging can
        # run beside `watch` (which holds the lock for as long as it runs).
        return self._tag(_root(path_prefix), self._vocabulary(vocabulary), on_progress, stop, on_notice)

    def _tag(
        self,
        root: str | None,
        vocabulary: tuple[list[Label], str] | None,
        on_progress: OnProgress,
        stop: threading.Event | None,
        on_notice: Callable[[str], None] = lambda text: None,
    ) -> TagReport:
        from imgsearch.search import tagger

        labels, name = vocabulary or self._vocabulary()
        rule = tagger.rule_of(self.settings.tagging)
        vectors = self.label_vectors(on_progress, stop, on_notice=on_notice)
        return tagger.tag(self.store, vectors, labels, name, rule, root, on_progress, stop)

    def tags(self) -> list[TagCount]:
        """Every tag in use with its image counts, most used first."""
        return [TagCount(label, auto, hand) for label, auto, hand in self.store.tags.counts()]

    def set_tag(self, label: str, paths: Sequence[str | Path], present: bool = True) -> int:
        """Add (or remove) a tag by hand on indexed images: files, or every image under a folder.

        Hand tags and hand removals are never undone by the auto-tagger. Returns how many images changed.
        """
        return self.store.tags.set_hand(label, [_absolute(p) for p in paths], present)

    def tag_records(self, path_prefix: str | Path | None = None) -> list[TagRecord]:
        """Every tag of every indexed image (under path_prefix), by path; tags removed by hand are left out."""
        return self.store.tags.rows(_root(path_prefix))

    def export_xmp(self, path_prefix: str | Path | None = None, naming: str = "full") -> ExportReport:
        """Write each indexed image's tags to its XMP sidecar (dc:subject), never touching the image.

        Existing sidecars are merged: keywords from elsewhere are kept, and only keywords an earlier
        export wrote and the image no longer has are taken back. naming: "full" (photo.jpg.xmp) or
        "stem" (photo.xmp). A sidecar that cannot be read or written is reported, not fatal.
        """
        from imgsearch import xmp

        subjects: dict[str, list[str]] = {}
        for record in self.tag_records(path_prefix):
            subjects.setdefault(record.path, []).append(record.label)
        # untagged images too: an earlier export's keywords may have to go
        return xmp.export(self.store.tags.indexed_paths(_root(path_prefix)), subjects, naming)

    def _vocabulary(self, path: str | None = None) -> tuple[list[Label], str]:
        from imgsearch.search.labels import load_vocabulary

        return load_vocabulary(self.settings.tagging.vocabulary if path is None else path)

    def label_vectors(
        self,
        on_progress: OnProgress = _ignore,
        stop: threading.Event | None = None,
        turn: AbstractContextManager[Any] | None = None,
        on_notice: Callable[[str], None] = lambda text: None,
    ) -> LabelVectors:
        """Label and prompt embeddings through the database cache (the model loads only for new prompts)."""
        from imgsearch.search.tagger import LabelVectors

        templates = self.settings.tagging.templates
        return LabelVectors(self.store, lambda: self.embedder, templates, on_progress, stop, turn, on_notice)

    # embeddings in and out (clip-retrieval's layout)

    def export_embeddings(
        self,
        out: str | Path,
        fmt: str = "clip-retrieval",
        *,
        path_prefix: str | Path | None = None,
        shard_size: int | None = None,
        on_progress: OnProgress = _ignore,
    ) -> EmbeddingExportReport:
        """Write the indexed vectors (under path_prefix) where autofaiss and clip-retrieval read them.

        out/img_emb/img_emb_N.npy (float16, unit rows) and out/metadata/metadata_N.parquet (image_path and
        our columns), plus out/imgsearch.json naming the model. out must be new, empty, or an earlier export,
        which is replaced (see imgsearch.store.exchange). Queries and indexing go on meanwhile.
        """
        from imgsearch.store import exchange

        if fmt != exchange.FORMAT:
            raise UsageError(f"export: unknown format {fmt!r} (known: {exchange.FORMAT})")
        if shard_size is not None and shard_size < 1:
            raise UsageError("export: the shard size must be at least 1")
        if self.store.count() == 0:
            raise self._empty()
        size = shard_size or exchange.SHARD_SIZE
        return exchange.export(self.store, Path(out).expanduser(), _root(path_prefix), size, on_progress)

    def import_embeddings(
        self,
        src: str | Path,
        *,
        map_prefix: tuple[str, str] | None = None,
        on_progress: OnProgress = _ignore,
        stop: threading.Event | None = None,
    ) -> EmbeddingImportReport:
        """Index the image files a clip-retrieval output names, with its vectors instead of the model's.

        Every row whose image_path (its map_prefix swapped for this machine's) is a file here becomes an
        indexed image, exactly as `index` would record it, so a later `index` of its folder embeds nothing.
        The vectors must come from the configured model: an export of ours names it and is refused when it
        differs; another tool's output cannot say, so only its dimension is checked (report.model_checked).
        Files missing here are counted and listed. Nothing is written before every shard has been checked.
        """
        from imgsearch.embed import configured_model_id
        from imgsearch.images import size_limit
        from imgsearch.indexer import imported
        from imgsearch.indexer.scan import NameFilter
        from imgsearch.store import exchange

        with self.lock.hold("importing"):
            source = exchange.open_source(Path(src).expanduser())
            self._check_model(allow_empty=True)
            configured = configured_model_id(self.settings)
            # The dimension the configured model makes, loading it only when nothing else can tell.
            dim = self.store.model()[1] if self.store.count() else None
            dim = dim or (source.dim if source.model_id is not None else self.embedder.dim)
            ix = self.settings.index
            names = NameFilter(ix.extensions, ix.exclude)
            report = exchange.import_source(
                self.store,
                source,
                configured,
                dim,
                lambda raw, need_size: imported.inspect(raw, need_size, names, map_prefix, size_limit(ix.max_pixels)),
                workers=ix.workers or os.cpu_count() or 2,
                on_progress=on_progress,
                stop=stop,
            )
            if report.imported:
                self.cache.save_rebuilt()
            self._backfill(on_progress, stop)
        return report

    # reporting

    def status(self) -> Status:
        from imgsearch.embed.cpu import cpu_info
        from imgsearch.embed.loading import plan, torch_installed
        from imgsearch.store.sync import choose_params

        store = self.store
        model_id, dim = store.model()
        updated = store.get_meta("updated_at")
        count = store.count()
        database_bytes, index_bytes = store.sizes()
        if store.postgres:
            index_type = "pgvector-hnsw"
        else:
            index_type = store.get_meta("index_type") or choose_params(self.settings.search, count).kind
            index_bytes = self.cache.file_bytes()
        runtime, decision = plan(self.settings)
        return Status(
            home=str(self.settings.home),
            images=count,
            skipped=store.skipped_count(),
            model_id=model_id,
            dim=dim,
            index_type=index_type,
            database_bytes=database_bytes,
            index_bytes=index_bytes,
            updated_at=float(updated) if updated else None,
            roots=tuple(store.roots()),
            sqlite_version=store.sqlite_version(),
            database=store.name,
            runtime=runtime,
            precision=decision.precision if decision else "",
            precision_reason=decision.reason if decision else "bf16 or fp32: a probe decides on first use",
            cpu=cpu_info().describe(),
            generation_available=torch_installed(),
            photos=store.photo_counts(),
            **dict(zip(("copy_groups", "copied_files"), store.copies.counts(), strict=True)),
        )

    def skipped(self) -> list[Skipped]:
        return self.store.skipped_files()

    # moving between stores

    def migrate(self, to: str, on_progress: OnProgress = _ignore) -> MigrateReport:
        """Copy this home's database (SQLite, or PostgreSQL when store.url is set) into `to`: a
        postgresql:// URL, or "sqlite" for the home's SQLite file. The source is left as it was; the target
        must hold no images. Set store.url as the report says to use the copy."""
        from imgsearch.store.repository import Store
        from imgsearch.store.transfer import copy_store

        started = time.monotonic()
        into_sqlite = to.strip().lower() == "sqlite"
        if not into_sqlite and not is_postgres_url(to):
            raise UsageError(f"migrate: --to takes a postgresql://user@host/database URL or sqlite, not {to!r}")
        if into_sqlite and not self.settings.store.url:
            raise UsageError(f"migrate: {self.settings.database_path} is already the database in use")
        if not into_sqlite and to.strip() == self.settings.store.url:
            raise UsageError("migrate: that is the database in use (store.url)")
        with self.lock.hold():
            source = self.store
            target = Store(self.settings.database_path if into_sqlite else to.strip())
            try:
                count = copy_store(source, target, lambda done, total: on_progress(Progress("copy", done, total)))
            finally:
                target.close()
            if into_sqlite:  # a FAISS file left from before describes another database
                self.settings.vector_index_path.unlink(missing_ok=True)
        use = "store.url= (empty: SQLite in the home folder)" if into_sqlite else f"store.url={target.name}"
        return MigrateReport(source.name, target.name, count, time.monotonic() - started, use)


def models(name: str | None = None) -> list[str]:
    """Model names, or NAME's pretrained tags (`imgsearch models`)."""
    from imgsearch.embed import catalogue

    return catalogue(name)


class _QueryEncoder:
    """Text embeddings of prompts seen before come from the database, so a repeated query never loads
    the model (nor imports torch); new prompts go through the model and are remembered: in the database, or, in
    a server (Library.prompt_memory), in memory."""

    def __init__(self, lib: Library):
        self.lib = lib

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        from imgsearch.embed import configured_model_id
        from imgsearch.search.tagger import LabelVectors

        lib = self.lib
        vectors = LabelVectors(
            lib.store, lambda: lib.embedder, lib.settings.tagging.templates, memory=lib.prompt_memory
        )
        return vectors.encode(configured_model_id(lib.settings), texts)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.lib.embedder.embed_images(images)


def _unique(labels: Sequence[Label]) -> list[Label]:
    seen: set[str] = set()
    out = []
    for label in labels:
        if label.name.casefold() not in seen:
            seen.add(label.name.casefold())
            out.append(label)
    return out


def _absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _root(path_prefix: str | Path | None) -> str | None:
    """A folder filter as the store compares it (as text: absolute and normalised, never looked up on disk, since
    it may come from a web request), or None for everything. The CLI resolves symlinks in what a user types."""
    if path_prefix is None:
        return None
    text = os.fspath(path_prefix)
    if "\0" in text:
        raise UsageError("path prefix: a path cannot hold a NUL character")
    return os.path.normpath(os.path.join(os.getcwd(), os.path.expanduser(text)))

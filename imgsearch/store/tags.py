"""The SQL of tags and of cached label embeddings; TagStore is what the layers above use.

Tags live in `image_tags`, keyed by image path. The auto-tagger owns the rows with source "auto";
rows a person made ("hand", or "rejected" for a tag removed by hand) are never touched by it.
`images.tags_key` records what each image was last auto-tagged against, so that `tag` only
re-examines images that are new, changed, or tagged under another vocabulary or rule. A tag name is compared in
one normal form (`normal`) wherever it comes in: stored, filtered on, ranked by.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, Connection, and_, case, delete, func, or_, select, true, update

from imgsearch.errors import UsageError
from imgsearch.store.coltypes import insert_into
from imgsearch.store.repository import Store, chunks, under
from imgsearch.store.schema import image_tags, images, text_vectors
from imgsearch.types import TagRecord

AUTO, HAND, REJECTED = "auto", "hand", "rejected"
LOGIT_META = "logit_params"  # the model's logit scale and bias, so that tagging needs no model load


def normal(label: str) -> str:
    """A tag name as it is stored, filtered on and ranked by: whitespace runs one space, none at the ends."""
    return " ".join(label.split())


def usable(label: str) -> str:
    """The normal name of a tag given by hand, or UsageError: empty, with "," or "|" (vocabulary syntax), or with a
    control character (XMP cannot carry most of them, and a terminal would act on them)."""
    name = normal(label)
    if not name or "," in name or "|" in name or not name.isprintable():
        raise UsageError(f"tag: not a usable tag name: {label!r}")
    return name


class TagStore:
    """The tags of a store's images and its cached label embeddings: every operation one transaction."""

    def __init__(self, store: Store):
        self.store = store

    def cached_text_vectors(self, model_id: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        with self.store.read() as conn:
            return cached_text_vectors(conn, model_id, texts)

    def cache_text_vectors(
        self, model_id: str, vectors: Mapping[str, np.ndarray], logits: tuple[float, float | None]
    ) -> None:
        """Keep prompt embeddings, and the model's logit parameters with them."""
        with self.store.write() as conn:
            cache_text_vectors(conn, model_id, vectors)
            self._remember_logits(conn, model_id, logits)

    def logit_params(self, model_id: str) -> tuple[float, float | None] | None:
        """The model's (logit scale, logit bias) as remembered, or None."""
        stored = self.store.get_meta(LOGIT_META)
        params = json.loads(stored) if stored else None
        if params is None or params["model"] != model_id:
            return None
        return float(params["scale"]), params["bias"]

    def remember_logits(self, model_id: str, logits: tuple[float, float | None]) -> None:
        with self.store.write() as conn:
            self._remember_logits(conn, model_id, logits)

    def _remember_logits(self, conn: Connection, model_id: str, logits: tuple[float, float | None]) -> None:
        value = {"model": model_id, "scale": logits[0], "bias": logits[1]}
        self.store.set_meta(conn, LOGIT_META, json.dumps(value))

    def count_untagged(self, key: str, root: str | None) -> int:
        with self.store.read() as conn:
            return count_untagged(conn, key, root)

    def tag_chunk(self, key: str, root: str | None, limit: int, decide: Decide) -> int:
        """Tag up to `limit` images not yet tagged under `key`, in one transaction that reads, decides and writes:
        decide(paths, vectors, current tags) gives (path, tags to write, auto labels to remove) for each. Returns
        how many images it covered (0: none left)."""
        with self.store.write() as conn:
            ids, paths, vectors = untagged(conn, key, root, limit)
            if not paths:
                return 0
            for path, write, remove in decide(paths, vectors, tags_of(conn, paths)):
                if write or remove:
                    replace_auto_tags(conn, path, write, remove)
            mark_tagged(conn, [int(i) for i in ids], key)
        return len(paths)

    def set_hand(self, label: str, roots: Sequence[str], present: bool) -> int:
        """Add (or remove) a tag by hand on the indexed images at or under each root; how many changed.
        UsageError for a tag name that cannot be one, or a root with nothing indexed."""
        name = usable(label)
        with self.store.write() as conn:  # one short transaction; works while `watch` runs
            targets: list[str] = []
            for root in roots:
                found = indexed_paths(conn, root)
                if not found:
                    raise UsageError(f"tag: {root} is not indexed (run `imgsearch index` on it first)")
                targets.extend(found)
            return set_hand_tag(conn, list(dict.fromkeys(targets)), name, present)

    def counts(self) -> list[tuple[str, int, int]]:
        with self.store.read() as conn:
            return counts(conn)

    def of_path(self, path: str) -> list[tuple[str, str, float | None]]:
        with self.store.read() as conn:
            return of_path(conn, path)

    def rows(self, root: str | None) -> list[TagRecord]:
        with self.store.read() as conn:
            return list(rows(conn, root))

    def indexed_paths(self, root: str | None) -> list[str]:
        with self.store.read() as conn:
            return indexed_paths(conn, root)

    def ids_with_all(self, labels: Sequence[str], root: str | None) -> np.ndarray:
        with self.store.read() as conn:
            return ids_with_all(conn, labels, root)

    def ranked(self, label: str, ids: np.ndarray) -> list[tuple[int, str, str, float | None]]:
        with self.store.read() as conn:
            return ranked(conn, label, ids)


# (paths, vectors, {path: {label: (source, probability)}}) -> [(path, tags to write, auto labels to remove)]
Decide = Callable[
    [list[str], np.ndarray, dict[str, dict[str, tuple[str, float | None]]]],
    Iterable[tuple[str, Sequence["AutoTag"], Sequence[str]]],
]


@dataclass(frozen=True)
class AutoTag:
    label: str
    score: float
    probability: float


# label embeddings


def cached_text_vectors(conn: Connection, model_id: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for chunk in chunks(list(texts), 500):
        where = (text_vectors.c.model_id == model_id) & text_vectors.c.text.in_(chunk)
        for text, blob in conn.execute(select(text_vectors.c.text, text_vectors.c.vector).where(where)):
            out[text] = np.frombuffer(blob, dtype="<f4").copy()
    return out


def cache_text_vectors(conn: Connection, model_id: str, vectors: Mapping[str, np.ndarray]) -> None:
    rows = [
        {"model_id": model_id, "text": t, "vector": np.ascontiguousarray(v, dtype="<f4").tobytes()}
        for t, v in vectors.items()
    ]
    if rows:
        conn.execute(insert_into(conn, text_vectors).on_conflict_do_nothing(), rows)


# the auto-tagger


def untagged(conn: Connection, key: str, root: str | None, limit: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Up to `limit` images (ids, paths, vectors) not yet auto-tagged under `key`, optionally under root."""
    where = or_(images.c.tags_key.is_(None), images.c.tags_key != key)
    if root is not None:
        where = and_(where, under(images.c.path, root))
    stmt = select(images.c.id, images.c.path, images.c.vector).where(where).order_by(images.c.id).limit(limit)
    rows = conn.execute(stmt).all()
    ids = np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, [], np.zeros((0, 0), dtype=np.float32)
    vectors = np.frombuffer(b"".join(r.vector for r in rows), dtype="<f4").reshape(len(rows), -1)
    return ids, [r.path for r in rows], vectors


def count_untagged(conn: Connection, key: str, root: str | None) -> int:
    where = or_(images.c.tags_key.is_(None), images.c.tags_key != key)
    if root is not None:
        where = and_(where, under(images.c.path, root))
    return int(conn.execute(select(func.count()).select_from(images).where(where)).scalar_one())


def tags_of(conn: Connection, paths: Sequence[str]) -> dict[str, dict[str, tuple[str, float | None]]]:
    """{path: {label (case-folded): (source, probability)}} for the given paths."""
    out: dict[str, dict[str, tuple[str, float | None]]] = {p: {} for p in paths}
    cols = (image_tags.c.path, image_tags.c.label, image_tags.c.source, image_tags.c.probability)
    for chunk in chunks(list(paths), 500):
        for path, label, source, probability in conn.execute(select(*cols).where(image_tags.c.path.in_(chunk))):
            out[path][label.casefold()] = (source, probability)
    return out


def replace_auto_tags(conn: Connection, path: str, add: Sequence[AutoTag], remove: Sequence[str]) -> None:
    """Remove the image's auto tags named in `remove`, then write `add` (hand and rejected rows are left alone)."""
    if remove:
        where = (image_tags.c.path == path) & (image_tags.c.source == AUTO) & image_tags.c.label.in_(remove)
        conn.execute(delete(image_tags).where(where))
    if add:
        now = time.time()
        rows = [
            {
                "path": path,
                "label": t.label,
                "source": AUTO,
                "score": t.score,
                "probability": t.probability,
                "tagged_at": now,
            }
            for t in add
        ]
        stmt = insert_into(conn, image_tags)
        refresh = {"score": stmt.excluded.score, "probability": stmt.excluded.probability, "label": stmt.excluded.label}
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[image_tags.c.path, image_tags.c.label], set_=refresh, where=image_tags.c.source == AUTO
            ),
            rows,
        )


def mark_tagged(conn: Connection, ids: Sequence[int], key: str) -> None:
    for chunk in chunks(list(ids), 500):
        conn.execute(update(images).where(images.c.id.in_(chunk)).values(tags_key=key))


def forget_tagging(conn: Connection) -> None:
    """Make every image look untagged, so the next `tag` re-examines all of them."""
    conn.execute(update(images).values(tags_key=None))


# tags by hand


def set_hand_tag(conn: Connection, paths: Sequence[str], label: str, present: bool) -> int:
    """Add (present) or remove a tag by hand on indexed images; returns how many images changed."""
    source = HAND if present else REJECTED
    label = normal(label)
    changed = 0
    current = tags_of(conn, paths)
    now = time.time()
    for path in paths:
        before = current[path].get(label.casefold(), (None, None))[0]
        if before == source:
            continue
        # A removal with no tag to remove is still recorded: the tagger must not add that label later.
        _upsert_hand(conn, path, label, source, now)
        changed += present or before in (AUTO, HAND)
    return changed


def _upsert_hand(conn: Connection, path: str, label: str, source: str, now: float) -> None:
    values = {"path": path, "label": label, "source": source, "score": None, "probability": None, "tagged_at": now}
    stmt = insert_into(conn, image_tags).values(**values)
    update_values = {"source": source, "score": None, "probability": None, "tagged_at": now, "label": label}
    conn.execute(stmt.on_conflict_do_update(index_elements=[image_tags.c.path, image_tags.c.label], set_=update_values))


# reading


def counts(conn: Connection) -> list[tuple[str, int, int]]:
    """(label, images tagged automatically, images tagged by hand), most used first."""
    auto = func.sum(case((image_tags.c.source == AUTO, 1), else_=0))
    hand = func.sum(case((image_tags.c.source == HAND, 1), else_=0))
    stmt = (
        select(func.min(image_tags.c.label), auto, hand)
        .join(images, images.c.path == image_tags.c.path)
        .where(image_tags.c.source != REJECTED)
        .group_by(image_tags.c.label)
        .order_by((auto + hand).desc(), func.min(image_tags.c.label))
    )
    return [(label, int(a), int(h)) for label, a, h in conn.execute(stmt)]


def with_all(labels: Sequence[str]) -> ColumnElement[bool]:
    """The image carries every one of `labels` (by hand or automatically): a filter on `images`."""
    condition: ColumnElement[bool] = true()
    for label in map(normal, labels):
        tagged = select(image_tags.c.path).where((image_tags.c.label == label) & (image_tags.c.source != REJECTED))
        condition = condition & images.c.path.in_(tagged)
    return condition


def ids_with_all(conn: Connection, labels: Sequence[str], root: str | None) -> np.ndarray:
    """Ids of indexed images carrying every one of `labels` (by hand or automatically)."""
    stmt = select(images.c.id).where(with_all(labels))
    if root is not None:
        stmt = stmt.where(under(images.c.path, root))
    return np.fromiter(conn.execute(stmt).scalars(), dtype=np.int64)


def of_path(conn: Connection, path: str) -> list[tuple[str, str, float | None]]:
    """(label, source, probability) of one image's tags, hand tags first, then by probability."""
    cols = (image_tags.c.label, image_tags.c.source, image_tags.c.probability)
    stmt = select(*cols).where((image_tags.c.path == path) & (image_tags.c.source != REJECTED))
    rows = [(label, source, p) for label, source, p in conn.execute(stmt)]
    return sorted(rows, key=lambda r: (r[1] != HAND, -(r[2] or 0.0), r[0].casefold()))


def ranked(conn: Connection, label: str, ids: np.ndarray) -> list[tuple[int, str, str, float | None]]:
    """(id, path, source, probability) of images among `ids` tagged `label`: hand tags first, then by probability."""
    out: list[tuple[int, str, str, float | None]] = []
    label = normal(label)
    for chunk in chunks([int(i) for i in ids], 500):
        stmt = (
            select(images.c.id, images.c.path, image_tags.c.source, image_tags.c.probability)
            .join(image_tags, images.c.path == image_tags.c.path)
            .where((image_tags.c.label == label) & images.c.id.in_(chunk))
        )
        out.extend((r.id, r.path, r.source, r.probability) for r in conn.execute(stmt))
    out.sort(key=lambda r: (r[2] != HAND, -(r[3] or 0.0), r[1]))
    return out


def rows(conn: Connection, root: str | None) -> Iterator[TagRecord]:
    """Every tag of every indexed image (not rejected ones), by path."""
    stmt = (
        select(image_tags.c.path, image_tags.c.label, image_tags.c.source, image_tags.c.score, image_tags.c.probability)
        .join(images, images.c.path == image_tags.c.path)
        .where(image_tags.c.source != REJECTED)
        .order_by(image_tags.c.path, image_tags.c.source.desc(), image_tags.c.probability.desc())
    )
    if root is not None:
        stmt = stmt.where(under(image_tags.c.path, root))
    for r in conn.execute(stmt):
        yield TagRecord(*r)


def indexed_paths(conn: Connection, root: str | None) -> list[str]:
    """The indexed image at root, or every one under it (root None: all)."""
    stmt = select(images.c.path).order_by(images.c.path)
    if root is not None:
        stmt = stmt.where(under(images.c.path, root))
    return list(conn.execute(stmt).scalars())

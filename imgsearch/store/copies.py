"""The SQL of copies: each image's perceptual hash, and the group of copies it belongs to (imgsearch.dupes).

`images.pixel_hash` is written with the row by the indexer (NULL: not computed yet, for rows from before revision
0006, `import` and Ray; empty: the file could not be decoded for it). The groups are decided in Python over every
hash (imgsearch.dupes) and written back as `copy_group` (the id of the group's best copy) and `copy_rank` (0 for
the best copy): searches collapse copies with one indexed lookup of the ids they found.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, bindparam, func, select, update

from imgsearch.store.repository import Store, StoredImage, chunks, under
from imgsearch.store.schema import images

GROUPING_META = "copy_grouping"  # what the groups were decided with (dupes.VERSION): another one regroups
SEEN_META = "copy_grouping_seen"  # "largest id, images in groups" when the groups were last decided or checked


@dataclass(frozen=True)
class Candidate:
    """What deciding copies and the best of them reads of one image."""

    id: int
    path: str
    content_hash: str
    pixel_hash: bytes
    width: int
    height: int
    size: int
    mtime_ns: int
    taken: str | None
    camera: str | None


@dataclass(frozen=True)
class Member:
    """An image in a group of copies, in the best-copy order (rank 0: the best copy)."""

    id: int
    path: str
    rank: int


class CopyStore:
    """Pixel hashes and groups of copies of a store's images: every operation one transaction."""

    def __init__(self, store: Store):
        self.store = store

    # hashes

    def unhashed(self, after_id: int, limit: int, size: int) -> list[StoredImage]:
        """Up to `limit` images, by id after after_id, with no pixel hash yet, or one of another size than today's
        (made by another version of imgsearch.dupes)."""
        c = images.c
        cols = (c.id, c.path, c.size, c.mtime_ns, c.content_hash)
        stmt = select(*cols).where(_unhashed(size) & (c.id > after_id)).order_by(c.id).limit(limit)
        with self.store.read() as conn:
            return [StoredImage(*r) for r in conn.execute(stmt)]

    def count_unhashed(self, size: int) -> int:
        with self.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(images).where(_unhashed(size))).scalar_one())

    def set_hashes(self, found: Sequence[tuple[StoredImage, bytes]]) -> None:
        """Write hashes computed after the fact, to rows still holding the content they were computed from."""
        if not found:
            return
        same = (images.c.id == bindparam("b_id")) & (images.c.content_hash == bindparam("b_hash"))
        stmt = update(images).where(same).values(pixel_hash=bindparam("b_pixels"))
        rows = [{"b_id": row.id, "b_hash": row.content_hash, "b_pixels": value} for row, value in found]
        with self.store.write() as conn:
            conn.execute(stmt, rows)

    # groups

    def candidates(self, ids: Iterable[int] | None = None) -> list[Candidate]:
        """Every image that has a hash (empty for one that could not be decoded), in id order; or those ids."""
        if ids is not None:
            return self._candidates_of(list(ids))
        c = images.c
        cols = (c.id, c.path, c.content_hash, c.pixel_hash, c.width, c.height, c.size, c.mtime_ns, c.taken, c.camera)
        with self.store.read() as conn:
            rows = conn.execute(select(*cols).where(c.pixel_hash.is_not(None)).order_by(c.id))
            return [_candidate(r) for r in rows]

    def _candidates_of(self, ids: list[int]) -> list[Candidate]:
        c = images.c
        cols = (c.id, c.path, c.content_hash, c.pixel_hash, c.width, c.height, c.size, c.mtime_ns, c.taken, c.camera)
        out: list[Candidate] = []
        with self.store.read() as conn:
            for chunk in chunks(ids, 500):
                rows = conn.execute(select(*cols).where(c.id.in_(chunk)))
                out += [_candidate(r) for r in rows]
        return sorted(out, key=lambda found: found.id)

    def grouping(self) -> str | None:
        return self.store.get_meta(GROUPING_META)

    def seen(self) -> tuple[int, int]:
        """(the largest image id, how many images are in groups) now."""
        c = images.c
        with self.store.read() as conn:
            top, grouped = conn.execute(select(func.max(c.id), func.count(c.copy_group))).one()
        return int(top or 0), int(grouped)

    def last_seen(self) -> tuple[int, int] | None:
        """seen() as it was when the groups were last decided (or found unchanged)."""
        value = self.store.get_meta(SEEN_META)
        return None if value is None else tuple(int(v) for v in value.split(","))  # type: ignore[return-value]

    def mark_seen(self) -> None:
        with self.store.write() as conn:
            self.store.set_meta(conn, SEEN_META, ",".join(map(str, self.seen())))

    def hashes(self, size: int) -> tuple[np.ndarray, list[bytes]]:
        """(ids, hashes) of every image with a hash of `size` bytes, in id order."""
        c = images.c
        with self.store.read() as conn:
            rows = conn.execute(select(c.id, c.pixel_hash).where(func.length(c.pixel_hash) == size).order_by(c.id))
            found = [(int(i), bytes(h)) for i, h in rows]
        return np.array([i for i, _ in found], dtype=np.int64), [h for _, h in found]

    def set_groups(self, groups: Sequence[Sequence[int]], grouping: str) -> int:
        """Record the groups (each a list of ids, best copy first) and what decided them; every other image is
        in no group. Only rows whose group or rank changes are written. Returns how many changed."""
        wanted = {i: (group[0], rank) for group in groups for rank, i in enumerate(group)}
        c = images.c
        with self.store.write() as conn:
            now = {
                int(i): (g, r)
                for i, g, r in conn.execute(select(c.id, c.copy_group, c.copy_rank).where(c.copy_group.is_not(None)))
            }
            changes = [
                {"b_id": i, "b_group": g, "b_rank": r}
                for i, (g, r) in [*wanted.items(), *((i, (None, None)) for i in now if i not in wanted)]
                if now.get(i) != (g, r) and not (g is None and i not in now)
            ]
            if changes:
                stmt = update(images).where(c.id == bindparam("b_id"))
                conn.execute(stmt.values(copy_group=bindparam("b_group"), copy_rank=bindparam("b_rank")), changes)
            self.store.set_meta(conn, GROUPING_META, grouping)
        self.mark_seen()
        return len(changes)

    def groups_of(self, ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        """{id: (group, rank)} of those ids that are in a group of copies."""
        c = images.c
        out: dict[int, tuple[int, int]] = {}
        with self.store.read() as conn:
            for chunk in chunks(list(ids), 500):
                stmt = select(c.id, c.copy_group, c.copy_rank).where(c.id.in_(chunk) & c.copy_group.is_not(None))
                out.update({int(i): (int(g), int(r)) for i, g, r in conn.execute(stmt)})
        return out

    def sizes(self, groups: Iterable[int]) -> dict[int, int]:
        """{group: how many files it holds}."""
        c = images.c
        out: dict[int, int] = {}
        with self.store.read() as conn:
            for chunk in chunks(sorted(set(groups)), 500):
                stmt = select(c.copy_group, func.count()).where(c.copy_group.in_(chunk)).group_by(c.copy_group)
                out.update({int(g): int(n) for g, n in conn.execute(stmt)})
        return out

    def members(self, groups: Iterable[int]) -> dict[int, list[Member]]:
        """{group: its members, best copy first}."""
        c = images.c
        out: dict[int, list[Member]] = {}
        with self.store.read() as conn:
            for chunk in chunks(sorted(set(groups)), 500):
                stmt = select(c.copy_group, c.id, c.path, c.copy_rank).where(c.copy_group.in_(chunk))
                for g, i, path, rank in conn.execute(stmt.order_by(c.copy_group, c.copy_rank)):
                    out.setdefault(int(g), []).append(Member(int(i), path, int(rank)))
        return out

    def all_groups(self, root: str | None = None) -> list[list[Member]]:
        """Every group of copies (best copy first) with at least one member under root, largest groups first."""
        c = images.c
        with self.store.read() as conn:
            stmt = select(c.copy_group).where(c.copy_group.is_not(None))
            if root is not None:
                stmt = stmt.where(under(c.path, root))
            wanted = {int(g) for (g,) in conn.execute(stmt.distinct())}
        found = self.members(wanted)
        return sorted(found.values(), key=lambda m: (-len(m), m[0].path))

    def counts(self) -> tuple[int, int]:
        """(groups, images in them)."""
        c = images.c
        with self.store.read() as conn:
            stmt = select(func.count(c.copy_group.distinct()), func.count(c.copy_group))
            groups, members = conn.execute(stmt).one()
        return int(groups), int(members)


def _unhashed(size: int) -> ColumnElement[bool]:
    length = func.length(images.c.pixel_hash)
    return images.c.pixel_hash.is_(None) | ((length != 0) & (length != size))


def _candidate(r: Any) -> Candidate:
    return Candidate(r[0], r[1], r[2], bytes(r[3] or b""), r[4], r[5], r[6], r[7], r[8], r[9])

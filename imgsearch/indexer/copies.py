"""Groups of copies over the whole index, decided again after each run that changed it.

Two levels, both from what the index holds, never from CLIP (whose similarity says "same scene", and with some
weights says it of every pair):
- exact: files of the same content (the same content hash at different paths);
- copy: pictures whose pixel hashes are within imgsearch.dupes' thresholds (resized, re-encoded, converted,
  turned by EXIF, slightly cropped).
Files of one content are one picture to the hash search: one of them stands for the others, and its group takes
them all. Each group is ordered by dupes.rank_copies (resolution, then the most original file, then the oldest
capture time or mtime) and written as copy_group/copy_rank (store/copies.py), which searches collapse on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imgsearch import dupes
from imgsearch.store.copies import Candidate, CopyStore
from imgsearch.store.repository import Store

# What decides a group: another hash or threshold groups every image again.
GROUPING = f"hash{dupes.HASH_BYTES}:shape{dupes.MAX_SHAPE_DISTANCE}:tone{dupes.MAX_TONE_DISTANCE}"
EXACT, COPY = "exact", "copy"


def regroup(store: Store, force: bool = False, only_added: bool = False) -> int:
    """Decide the groups of copies of every hashed image and record them; returns how many groups there are.

    Skipped when nothing could have changed them: `force` False and the groups were decided with today's GROUPING.
    With `only_added` (the run added images and changed or moved none: a `watch` pass over new photos), the new
    images are first looked up among all hashes: when none has a copy and no grouped image went, the groups stand
    (a fraction of a second at 100k images, against seconds for deciding them all again)."""
    copies = store.copies
    current = copies.grouping() == GROUPING
    if current and not force:
        return copies.counts()[0]
    if current and only_added and not _new_copies(copies):
        copies.mark_seen()
        return copies.counts()[0]
    groups = decide(copies.candidates())
    copies.set_groups([[c.id for c in group] for group in groups], GROUPING)
    return len(groups)


def _new_copies(copies: CopyStore) -> bool:
    """Whether the groups may have changed since they were last decided: a grouped image went, or an image added
    since has a copy."""
    last = copies.last_seen()
    grouped = copies.seen()[1]
    if last is None or grouped != last[1]:
        return True
    ids, hashes = copies.hashes(dupes.HASH_BYTES)
    new = np.flatnonzero(ids > last[0])
    return bool(len(new)) and dupes.any_copy(dupes.hash_array(hashes), new)


def decide(found: Sequence[Candidate]) -> list[list[Candidate]]:
    """The groups of copies among candidates (each of two or more, best copy first)."""
    by_content: dict[str, list[Candidate]] = {}
    for c in found:
        by_content.setdefault(c.content_hash, []).append(c)
    heads = [members[0] for members in by_content.values() if len(members[0].pixel_hash) == dupes.HASH_BYTES]
    grouped: set[str] = set()
    groups = []
    if heads:
        for star in dupes.copy_groups(dupes.hash_array([h.pixel_hash for h in heads])):
            keys = [heads[i].content_hash for i in star]
            grouped.update(keys)
            groups.append(ranked([c for key in keys for c in by_content[key]]))
    groups += [ranked(members) for key, members in by_content.items() if key not in grouped and len(members) > 1]
    return groups


def ranked(members: Sequence[Candidate]) -> list[Candidate]:
    """Members best copy first (dupes.rank_copies)."""
    return [c for c, _ in explained(members)]


def explained(members: Sequence[Candidate]) -> list[tuple[Candidate, str]]:
    """Members best copy first, each with why it is not the best ("" for the best)."""
    by_path = {c.path: c for c in members}
    return [(by_path[r.candidate.path], r.reason) for r in dupes.rank_copies([judged(c) for c in members])]


def level(members: Sequence[Candidate]) -> str:
    """ "exact" when every member holds the same bytes, else "copy"."""
    return EXACT if len({c.content_hash for c in members}) == 1 else COPY


def judged(c: Candidate) -> dupes.Candidate:
    """What the best-copy rule reads of an indexed image."""
    return dupes.Candidate(c.path, c.width, c.height, c.camera, c.taken, c.mtime_ns / 1e9)

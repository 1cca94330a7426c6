"""Results with one entry per picture: copies collapsed into the best copy found.

A search finds copies of one picture side by side (their embeddings are all but equal), so a page of results would
show the same photo several times. The groups are decided at index time (imgsearch.indexer.copies); here each
group keeps one hit, at the place of its first, standing as the member with the lowest copy rank among those found
(the group's best copy, unless a filter left it out), and counting the group's other files. A search asks for more
hits than it shows until it has k pictures, or the index has no more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from imgsearch.types import Hit

MAX_ROUNDS = 4  # each asks for 4 times more hits: up to 256 k, and a search always ends


def collapse(hits: Sequence[Hit], groups: Mapping[int, tuple[int, int]], sizes: Mapping[int, int]) -> list[Hit]:
    """One hit per group of copies, in the order of each group's first hit. groups: {image id: (group, rank)}
    for those hits in a group; sizes: {group: how many files it holds}."""
    stands: dict[int, Hit] = {}  # group -> the hit standing for it
    order: list[int | Hit] = []  # a group's place, or a hit in no group
    for hit in hits:
        found = groups.get(hit.id)
        if found is None:
            order.append(hit)
            continue
        group, rank = found
        held = stands.get(group)
        if held is None:
            order.append(group)
        if held is None or rank < groups[held.id][1]:
            best = held if held is not None and held.score > hit.score else hit
            stands[group] = dataclasses.replace(hit, score=best.score, copies=sizes.get(group, 1) - 1)
    return [stands[item] if isinstance(item, int) else item for item in order]


def search(find: Callable[[int], list[Hit]], k: int, look_up: Callable[[list[Hit]], list[Hit]]) -> list[Hit]:
    """The first k pictures of a search: find(n) gives its n best hits, look_up collapses a list of them."""
    n = k
    for _ in range(MAX_ROUNDS):
        hits = find(n)
        shown = look_up(hits)
        if len(shown) >= k or len(hits) < n:
            return shown[:k]
        n *= 4
    return shown[:k]

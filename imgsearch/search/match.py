"""Whether the library holds an image for a text query: the no-match verdict, as a pure function.

A bare cosine cutoff does not carry across prompts or collections. Instead, for each of the top hits, the
query's similarity is compared with that same image's similarity to every contrasting prompt (the contrast
vocabulary, each label prompt-ensembled, plus a few generic ones): evidence = logit_scale x (query - best
rival). An image that is what the query says scores the query about as high as its best label (evidence near
0 or above); one that merely resembles it loses clearly to a label that fits it better. No match when the best
evidence is below -margin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imgsearch.types import Hit, MatchVerdict

# Contrasting prompts that fit any picture a little: a query must beat them too.
GENERIC_LABELS = ("thing", "object", "scene", "picture", "pattern")


def verdict(
    query: np.ndarray,
    top: Sequence[Hit],
    vectors: np.ndarray,
    rivals: np.ndarray,
    rival_names: Sequence[str],
    logit_scale: float,
    margin: float,
) -> MatchVerdict:
    """The verdict on the top hits (their stored vectors in `vectors`) against the rival label vectors."""
    if not len(top):
        return MatchVerdict(False, None, margin, None, None)
    evidence = logit_scale * (vectors @ query - (vectors @ rivals.T).max(axis=1))
    best = int(np.argmax(evidence))
    rival = rival_names[int((vectors[best] @ rivals.T).argmax())]
    value = float(evidence[best])
    return MatchVerdict(value >= -margin, value, margin, top[best].path, rival)

"""Zero-shot labels: vocabularies, prompt ensembling, probabilities, the tagging rule, and labelling files.

A label is a tag name and the phrases that describe it (synonyms). Each phrase goes into every
prompt template ("a photo of a {}."); the label's vector is the normalised mean of all those prompt
embeddings (prompt ensembling, as in the CLIP paper). An image's probability for each label is the
softmax of `logit_scale * cosine` over the labels in play, or for models trained with a sigmoid
loss (SigLIP, which have a logit bias) the independent sigmoid of `logit_scale * cosine + bias`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.errors import ConfigError, UsageError
from imgsearch.types import LabelResult, LabelScore

if TYPE_CHECKING:
    from imgsearch.embed import Embedder

BUILTIN = "built-in"


@dataclass(frozen=True)
class Label:
    """A tag name, the phrases whose prompts describe it (the name first), and its own threshold if any."""

    name: str
    phrases: tuple[str, ...]
    min_probability: float | None = None


@dataclass(frozen=True)
class Rule:
    """Which labels an image gets: the best `top_k` that clear both thresholds."""

    top_k: int
    min_probability: float
    max_margin: float


@dataclass(frozen=True)
class Choice:
    """One label given to one image."""

    label: int  # index into the vocabulary
    score: float  # cosine similarity
    probability: float


def parse_vocabulary(text: str, source: str) -> list[Label]:
    """One label per line: `name[, synonym...][ | min_probability]`; `#` starts a comment."""
    labels: list[Label] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        words, _, threshold = line.partition("|")
        phrases = tuple(_clean(p) for p in words.split(",") if _clean(p))
        if not phrases:
            raise ConfigError(f"{where}: a line needs a label before '|'")
        label = Label(phrases[0], phrases, _threshold(threshold, where) if threshold.strip() else None)
        key = label.name.casefold()
        if key in seen:
            raise ConfigError(f"{where}: label '{label.name}' is already on line {seen[key]}")
        seen[key] = number
        labels.append(label)
    if not labels:
        raise ConfigError(f"{source}: the vocabulary has no labels")
    return labels


def parse_labels(spec: str) -> list[Label]:
    """Labels from a command line: comma-separated names ("cat,dog,person")."""
    names = [_clean(p) for p in spec.split(",") if _clean(p)]
    if not names:
        raise UsageError("--labels: give at least one label, e.g. --labels 'cat,dog,person'")
    unique = list(dict.fromkeys(names))
    return [Label(n, (n,)) for n in unique]


def load_vocabulary(path: str) -> tuple[list[Label], str]:
    """The labels of a vocabulary file (or the built-in one, for ""), and its name for messages."""
    if not path:
        text = resources.files("imgsearch.search").joinpath("vocabulary.txt").read_text(encoding="utf-8")
        return parse_vocabulary(text, BUILTIN), BUILTIN
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"tagging.vocabulary: no such file: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"tagging.vocabulary: cannot read {file} ({exc})") from None
    return parse_vocabulary(text, str(file)), str(file)


def prompts(label: Label, templates: Sequence[str]) -> list[str]:
    return [t.replace("{}", phrase) for phrase in label.phrases for t in templates]


def label_vectors(
    labels: Sequence[Label], templates: Sequence[str], encode: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """float32 [labels, dim], unit rows: each the normalised mean of its prompts' embeddings.

    `encode` is called once, with every distinct prompt of every label.
    """
    per_label = [prompts(label, templates) for label in labels]
    distinct = list(dict.fromkeys(p for ps in per_label for p in ps))
    vectors = encode(distinct)
    row = {p: i for i, p in enumerate(distinct)}
    means = np.stack([vectors[[row[p] for p in ps]].mean(axis=0) for ps in per_label])
    return _unit(means)


def probabilities(scores: np.ndarray, logit_scale: float, logit_bias: float | None = None) -> np.ndarray:
    """[images, labels] probabilities from cosine scores: softmax across labels, or sigmoid with a bias."""
    logits = logit_scale * scores.astype(np.float64)
    if logit_bias is not None:
        return 1.0 / (1.0 + np.exp(-(logits + logit_bias)))
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def choose(
    scores: np.ndarray, probs: np.ndarray, labels: Sequence[Label], rule: Rule, logit_scale: float
) -> list[list[Choice]]:
    """For each image, the labels it gets, best first.

    A label is given when it is among the image's `top_k` most probable, its probability clears
    its own threshold (else the rule's), and its logit is within `max_margin` of the image's best.
    Vectorised over all images at once: no per-image model calls, just array operations.
    """
    n, count = probs.shape
    k = min(rule.top_k, count)
    if n == 0 or k == 0:
        return [[] for _ in range(n)]
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < count else np.tile(np.arange(count), (n, 1))
    rows = np.arange(n)[:, None]
    top_probs = probs[rows, top]
    order = np.argsort(-top_probs, axis=1)
    top, top_probs = top[rows, order], top_probs[rows, order]
    top_scores = scores[rows, top]
    thresholds = np.array([rule.min_probability if lb.min_probability is None else lb.min_probability for lb in labels])
    best = scores.max(axis=1, keepdims=True)
    keep = (top_probs >= thresholds[top]) & (logit_scale * (best - top_scores) <= rule.max_margin + 1e-9)
    return [
        [Choice(int(top[i, j]), float(top_scores[i, j]), float(top_probs[i, j])) for j in np.flatnonzero(keep[i])]
        for i in range(n)
    ]


def rule_key(model_id: str, labels: Sequence[Label], templates: Sequence[str], rule: Rule) -> str:
    """A digest of everything that decides an image's auto tags besides its vector."""
    state = {
        "model": model_id,
        "labels": [[lb.name, list(lb.phrases), lb.min_probability] for lb in labels],
        "templates": list(templates),
        "rule": [rule.top_k, rule.min_probability, rule.max_margin],
    }
    return hashlib.blake2b(json.dumps(state, sort_keys=True).encode(), digest_size=16).hexdigest()


def _clean(phrase: str) -> str:
    return re.sub(r"\s+", " ", phrase).strip()


def _threshold(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: the threshold after | must be between 0 and 1, got {text.strip()!r}")
    return value


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def label_files(
    embedder: Embedder, matrix: np.ndarray, labels: Sequence[Label], files: Sequence[str], batch: int, max_pixels: int
) -> list[LabelResult]:
    """Each file's labels, most probable first: its embedding against the label matrix [labels, dim], a batch of
    files per model call. Probabilities are among the labels given (softmax; independent sigmoids for SigLIP)."""
    from imgsearch.search.query import load

    results = []
    for i in range(0, len(files), batch):
        part = files[i : i + batch]
        scores = embedder.embed_images([load(f, max_pixels, "label") for f in part]) @ matrix.T
        probs = probabilities(scores, embedder.logit_scale, embedder.logit_bias)
        for f, s, p in zip(part, scores, probs, strict=True):
            order = np.argsort(-p, kind="stable")
            results.append(LabelResult(f, [LabelScore(labels[j].name, float(p[j]), float(s[j])) for j in order]))
    return results

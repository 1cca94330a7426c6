"""Zero-shot labelling of single images and auto-tagging of the whole index.

Tagging never runs the image model: every indexed image already has its vector in SQLite. A pass
reads the vectors of the images not yet tagged under the current vocabulary and rule, multiplies
them by the label matrix (one matrix product per chunk of images), applies the rule, and writes
only the tags that differ from what is stored. Label prompts are embedded once per model and kept
in the database, so a later pass, or a vocabulary with a few new lines, costs (nearly) no model calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.config import TaggingSettings
from imgsearch.embed import Embedder
from imgsearch.errors import InterruptedRun, StoreError
from imgsearch.search.labels import Label, Rule, choose, label_vectors, probabilities, rule_key
from imgsearch.store import tags as sql
from imgsearch.store.repository import Store
from imgsearch.types import Progress, TagReport

if TYPE_CHECKING:
    from sqlalchemy import Connection

CHUNK = 4096  # images scored and written per transaction
TEXT_BATCH = 64  # prompts per model call
SAME_PROBABILITY = 0.005  # a kept tag whose probability moved less than this is not rewritten
LOGIT_META = "logit_params"


class LabelVectors:
    """Label embeddings through the database cache; the model is loaded only for prompts never seen before."""

    def __init__(
        self,
        store: Store,
        embedder: Callable[[], Embedder],
        templates: Sequence[str],
        on_progress: Callable[[Progress], None] = lambda p: None,
    ):
        self.store = store
        self.embedder = embedder
        self.templates = list(templates)
        self.on_progress = on_progress
        self.embedded = 0  # prompts that went through the model

    def matrix(self, model_id: str, labels: Sequence[Label]) -> np.ndarray:
        """float32 [labels, dim] unit vectors for the labels under the configured templates."""
        return label_vectors(labels, self.templates, lambda texts: self.encode(model_id, texts))

    def logit_params(self, model_id: str) -> tuple[float, float | None]:
        """The model's (logit scale, logit bias), remembered so that tagging needs no model load."""
        stored = self.store.get_meta(LOGIT_META)
        if stored:
            params = json.loads(stored)
            if params["model"] == model_id:
                return float(params["scale"]), params["bias"]
        embedder = self._model(model_id)
        with self.store.write() as conn:
            self._remember_logits(conn, embedder)
        return embedder.logit_scale, embedder.logit_bias

    def encode(self, model_id: str, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings [len(texts), dim]: from the cache where seen before, else through the model."""
        with self.store.read() as conn:
            found = sql.cached_text_vectors(conn, model_id, texts)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            embedder = self._model(model_id)
            fresh: dict[str, np.ndarray] = {}
            for i in range(0, len(missing), TEXT_BATCH):
                part = missing[i : i + TEXT_BATCH]
                fresh.update(zip(part, embedder.embed_texts(part), strict=True))
                self.on_progress(Progress("labels", len(fresh), len(missing)))
            # A cache that cannot be written (a read-only home, a full disk) costs only speed.
            with suppress(StoreError, OSError), self.store.write() as conn:
                sql.cache_text_vectors(conn, model_id, fresh)
                self._remember_logits(conn, embedder)
            found.update(fresh)
            self.embedded += len(missing)
        return np.stack([found[t] for t in texts])

    def _model(self, model_id: str) -> Embedder:
        embedder = self.embedder()
        if embedder.model_id != model_id:  # Library checks this first; a guard against caching under a wrong id
            raise RuntimeError(f"label vectors for {model_id} asked of model {embedder.model_id}")
        return embedder

    def _remember_logits(self, conn: Connection, embedder: Embedder) -> None:
        value = {"model": embedder.model_id, "scale": embedder.logit_scale, "bias": embedder.logit_bias}
        self.store.set_meta(conn, LOGIT_META, json.dumps(value))


def rule_of(settings: TaggingSettings) -> Rule:
    return Rule(settings.top_k, settings.min_probability, settings.max_margin)


def tag(
    store: Store,
    vectors: LabelVectors,
    labels: Sequence[Label],
    vocabulary: str,
    rule: Rule,
    root: str | None = None,
    on_progress: Callable[[Progress], None] = lambda p: None,
    stop: threading.Event | None = None,
) -> TagReport:
    """Auto-tag the indexed images (under root) that were not yet tagged under this vocabulary and rule."""
    started = time.monotonic()
    report = TagReport(vocabulary=vocabulary, labels=len(labels))
    model_id, _ = store.model()
    if model_id is None:
        return report
    key = rule_key(model_id, labels, vectors.templates, rule)
    with store.read() as conn:
        total = sql.count_untagged(conn, key, root)
    if total:
        matrix = vectors.matrix(model_id, labels)
        scale, bias = vectors.logit_params(model_id)
        on_progress(Progress("tag", 0, total))
        while _tag_chunk(store, key, root, matrix, (scale, bias), labels, rule, report):
            on_progress(Progress("tag", report.images, total))
            if stop is not None and stop.is_set():
                raise InterruptedRun(f"interrupted: {report.images} images tagged; run `imgsearch tag` again to finish")
    report.prompts_embedded = vectors.embedded
    report.seconds = time.monotonic() - started
    return report


def _tag_chunk(
    store: Store,
    key: str,
    root: str | None,
    matrix: np.ndarray,
    logits: tuple[float, float | None],
    labels: Sequence[Label],
    rule: Rule,
    report: TagReport,
) -> bool:
    """Score, choose and write one chunk of untagged images; False when none are left."""
    with store.write() as conn:
        ids, paths, vecs = sql.untagged(conn, key, root, CHUNK)
        if not paths:
            return False
        scores = vecs @ matrix.T
        chosen = choose(scores, probabilities(scores, *logits), labels, rule, logits[0])
        current = sql.tags_of(conn, paths)
        for path, choices in zip(paths, chosen, strict=True):
            wanted = [sql.AutoTag(labels[c.label].name, c.score, c.probability) for c in choices]
            _write_diff(conn, path, wanted, current[path], report)
        sql.mark_tagged(conn, [int(i) for i in ids], key)
    report.images += len(paths)
    return True


def _write_diff(
    conn: Connection,
    path: str,
    wanted: list[sql.AutoTag],
    current: dict[str, tuple[str, float | None]],
    report: TagReport,
) -> None:
    """Write what differs between the tags the rule wants and the image's stored auto tags."""
    people = {label for label, (source, _) in current.items() if source != sql.AUTO}
    wanted = [t for t in wanted if t.label.casefold() not in people]
    stored = {label: p or 0.0 for label, (source, p) in current.items() if source == sql.AUTO}
    keep = {t.label.casefold() for t in wanted}
    remove = [label for label in stored if label not in keep]
    # A new label shifts every probability a little; only a material change is worth a write.
    write = [t for t in wanted if abs(stored.get(t.label.casefold(), -1.0) - t.probability) > SAME_PROBABILITY]
    if remove or write:
        sql.replace_auto_tags(conn, path, write, remove)
    new = sum(t.label.casefold() not in stored for t in wanted)
    report.added += new
    report.removed += len(remove)
    report.changed += bool(new or remove)

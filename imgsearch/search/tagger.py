"""Zero-shot labelling of single images and auto-tagging of the whole index.

Tagging never runs the image model: every indexed image already has its vector in SQLite. A pass
reads the vectors of the images not yet tagged under the current vocabulary and rule, multiplies
them by the label matrix (one matrix product per chunk of images), applies the rule, and writes
only the tags that differ from what is stored. Label prompts are embedded once per model and kept
in the database, so a later pass, or a vocabulary with a few new lines, costs (nearly) no model calls.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any

import numpy as np

from imgsearch.config import TaggingSettings
from imgsearch.embed import Embedder
from imgsearch.errors import InterruptedRun, StoreError
from imgsearch.search.labels import Label, Rule, choose, label_vectors, probabilities, prompts, rule_key
from imgsearch.store.repository import Store
from imgsearch.store.tags import AUTO, AutoTag
from imgsearch.types import Progress, TagReport

CHUNK = 4096  # images scored and written per transaction
TEXT_BATCH = 64  # prompts per model call
SAME_PROBABILITY = 0.005  # a kept tag whose probability moved less than this is not rewritten
LONG_FIRST_PASS = 30.0  # seconds of prompt embedding worth a word before it goes on


class PromptMemory:
    """New prompts' embeddings kept in memory, the least recently used dropped past `cap`: how a server remembers
    what its requests asked without writing anything to the database (anyone who can reach it could grow it)."""

    def __init__(self, cap: int = 10_000):
        self.cap = cap
        self._kept: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            found = {}
            for text in texts:
                vector = self._kept.get((model_id, text))
                if vector is not None:
                    self._kept.move_to_end((model_id, text))
                    found[text] = vector
            return found

    def put(self, model_id: str, vectors: Mapping[str, np.ndarray]) -> None:
        with self._lock:
            for text, vector in vectors.items():
                self._kept[(model_id, text)] = vector
                self._kept.move_to_end((model_id, text))
            while len(self._kept) > self.cap:
                self._kept.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kept)


class LabelVectors:
    """Label embeddings through the database cache; the model is loaded only for prompts never seen before."""

    def __init__(
        self,
        store: Store,
        embedder: Callable[[], Embedder],
        templates: Sequence[str],
        on_progress: Callable[[Progress], None] = lambda p: None,
        stop: threading.Event | None = None,
        turn: AbstractContextManager[Any] | None = None,
        on_notice: Callable[[str], None] = lambda text: None,
        memory: PromptMemory | None = None,
    ):
        self.store = store
        self.memory = memory  # new prompts kept here instead of in the database (serve)
        self.embedder = embedder
        self.templates = list(templates)
        self.on_progress = on_progress
        self.on_notice = on_notice  # told, after the first chunk, what a long first pass will cost
        self.stop = stop  # set: no more model calls (what is embedded so far is kept)
        self.turn = turn  # held around each model call (serve: queries run between the chunks)
        self.embedded = 0  # prompts that went through the model

    def matrix(self, model_id: str, labels: Sequence[Label]) -> np.ndarray:
        """float32 [labels, dim] unit vectors for the labels under the configured templates."""
        return label_vectors(labels, self.templates, lambda texts: self.encode(model_id, texts))

    def logit_params(self, model_id: str) -> tuple[float, float | None]:
        """The model's (logit scale, logit bias), remembered so that tagging needs no model load."""
        remembered = self.store.tags.logit_params(model_id)
        if remembered is not None:
            return remembered
        embedder = self._model(model_id)
        self.store.tags.remember_logits(model_id, (embedder.logit_scale, embedder.logit_bias))
        return embedder.logit_scale, embedder.logit_bias

    def missing(self, model_id: str, labels: Sequence[Label]) -> int:
        """How many of the labels' prompts are not embedded yet (what a first `matrix` would cost)."""
        texts = list(dict.fromkeys(t for label in labels for t in prompts(label, self.templates)))
        return len(texts) - len(self.store.tags.cached_text_vectors(model_id, texts))

    def encode(self, model_id: str, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings [len(texts), dim]: from the cache where seen before, else through the model.

        New prompts are embedded and kept a chunk at a time, so a run stopped part-way (Ctrl-C, kill -9) keeps
        what it did; `stop` ends it between chunks with InterruptedRun."""
        found = self.store.tags.cached_text_vectors(model_id, texts)
        if self.memory is not None:
            found.update(self.memory.get(model_id, [t for t in texts if t not in found]))
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            embedder = self._model(model_id)
            logits = (embedder.logit_scale, embedder.logit_bias)
            started = time.monotonic()
            for i in range(0, len(missing), TEXT_BATCH):
                if self.stop is not None and self.stop.is_set():
                    raise InterruptedRun(f"interrupted: {i} of {len(missing)} label prompts embedded and kept")
                part = missing[i : i + TEXT_BATCH]
                with self.turn or nullcontext():
                    fresh = dict(zip(part, embedder.embed_texts(part), strict=True))
                if i == 0 and len(missing) > len(part):
                    self._estimate(len(missing), len(part) / max(time.monotonic() - started, 1e-6))
                if self.memory is not None:
                    self.memory.put(model_id, fresh)
                else:  # a cache that cannot be written (a read-only home, a full disk) costs only speed
                    with suppress(StoreError, OSError):
                        self.store.tags.cache_text_vectors(model_id, fresh, logits)
                found.update(fresh)
                self.embedded += len(part)
                self.on_progress(Progress("labels", i + len(part), len(missing)))
        return np.stack([found[t] for t in texts])

    def _estimate(self, total: int, rate: float) -> None:
        seconds = total / rate
        if seconds >= LONG_FIRST_PASS:
            self.on_notice(
                f"embedding {total} label prompts once for this model: about {_duration(seconds)} at {rate:.0f} a "
                "second; they are kept as they go, and Ctrl-C stops within a chunk"
            )

    def _model(self, model_id: str) -> Embedder:
        embedder = self.embedder()
        if embedder.model_id != model_id:  # Library checks this first; a guard against caching under a wrong id
            raise RuntimeError(f"label vectors for {model_id} asked of model {embedder.model_id}")
        return embedder


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
    total = store.tags.count_untagged(key, root)
    if total:
        matrix = vectors.matrix(model_id, labels)
        logits = vectors.logit_params(model_id)

        def decide(
            paths: list[str], vecs: np.ndarray, current: dict[str, dict[str, tuple[str, float | None]]]
        ) -> list[tuple[str, list[AutoTag], list[str]]]:
            scores = vecs @ matrix.T
            chosen = choose(scores, probabilities(scores, *logits), labels, rule, logits[0])
            return [
                (path, *_diff(path, [AutoTag(labels[c.label].name, c.score, c.probability) for c in choices],
                              current[path], report))
                for path, choices in zip(paths, chosen, strict=True)
            ]  # fmt: skip

        on_progress(Progress("tag", 0, total))
        while done := store.tags.tag_chunk(key, root, CHUNK, decide):
            report.images += done
            on_progress(Progress("tag", report.images, total))
            if stop is not None and stop.is_set():
                raise InterruptedRun(f"interrupted: {report.images} images tagged; run `imgsearch tag` again to finish")
    report.prompts_embedded = vectors.embedded
    report.seconds = time.monotonic() - started
    return report


def _diff(
    path: str, wanted: list[AutoTag], current: dict[str, tuple[str, float | None]], report: TagReport
) -> tuple[list[AutoTag], list[str]]:
    """What differs between the tags the rule wants and the image's stored auto tags: (to write, to remove)."""
    people = {label for label, (source, _) in current.items() if source != AUTO}
    wanted = [t for t in wanted if t.label.casefold() not in people]
    stored = {label: p or 0.0 for label, (source, p) in current.items() if source == AUTO}
    keep = {t.label.casefold() for t in wanted}
    remove = [label for label in stored if label not in keep]
    # A new label shifts every probability a little; only a material change is worth a write.
    write = [t for t in wanted if abs(stored.get(t.label.casefold(), -1.0) - t.probability) > SAME_PROBABILITY]
    new = sum(t.label.casefold() not in stored for t in wanted)
    report.added += new
    report.removed += len(remove)
    report.changed += bool(new or remove)
    return write, remove

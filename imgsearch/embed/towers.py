"""What the torch-free embedders share: a model folder's two towers, opened on first use, fed numpy batches.

A runtime (OpenVINO, ONNX Runtime) supplies only `open(path, tower)`, a callable from an input batch to the
tower's output. Everything else is here: preprocessing and tokenizing, the token dtype and the batch size the
graph fixes (hub exports may take int32 tokens, one image at a time), normalising, and repairing a damaged
export of ours once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.errors import WeightsError

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.embed.bpe import ClipTokenizer
    from imgsearch.embed.folder import ModelFolder

Run = Callable[[np.ndarray], np.ndarray]


class TowerEmbedder:
    """CLIP's towers from ONNX files; every output row is L2-normalised float32. Subclasses open the files."""

    runtime = "?"
    device = "cpu"

    def __init__(self, folder: ModelFolder, precision: str, repair: Callable[[], None] | None = None):
        self.folder = folder
        self.precision = precision
        self.model_id = folder.model_id
        self.dim = folder.dim
        self.input_size = folder.input_size
        self.logit_scale = folder.logit_scale
        self.logit_bias = folder.logit_bias
        self.preprocess = folder.preprocess
        self._repair = repair  # export the folder again (ours, with torch at hand), once
        self._tokenizer: ClipTokenizer | None = None
        self._towers: dict[str, Run] = {}
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> ClipTokenizer:
        if self._tokenizer is None:  # ~50 ms: indexing never needs it
            self._tokenizer = self.folder.tokenizer()
        return self._tokenizer

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self.preprocess(image)

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        return self._run("image", np.ascontiguousarray(batch, dtype=np.float32))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_prepared(np.stack([self.prepare(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if "text" in self._towers or not texts:
            return self._run("text", self._tokens(texts))
        # First text: the runtime opens the tower (native code, mostly without the GIL) while Python builds the
        # tokenizer, which a cold query with a new prompt pays for both (~0.06 s of ~0.2 s).
        opening = threading.Thread(target=self._open_quietly, args=("text",), daemon=True)
        opening.start()
        tokens = self._tokens(texts)
        opening.join()
        return self._run("text", tokens)

    def _tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids, cut after the batch's last end token where the tower allows (see export.trimmable_text):
        a short prompt costs its own length, not the context's."""
        tokens = self.tokenizer(list(texts))
        if not self.folder.text_any_length or not len(tokens):
            return tokens
        # every row ends with the end token (never 0); 0 is also "!", so count to each row's last non-zero id
        used = tokens.shape[1] - int(np.argmax((tokens != 0)[:, ::-1], axis=1).min())
        return tokens[:, : max(used, 2)]

    def _open_quietly(self, tower: str) -> None:
        with contextlib.suppress(Exception):  # a failure is raised again, with its message, by the caller's _run
            self._tower(tower)

    def describe(self) -> str:
        return f"{self.runtime} {self.precision} on the CPU"

    def _run(self, tower: str, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self._tower(tower)(batch).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _tower(self, tower: str) -> Run:
        with self._lock:
            if tower not in self._towers:
                self._towers[tower] = self._open_checked(tower)
            return self._towers[tower]

    def _open_checked(self, tower: str) -> Run:
        path = self.folder.towers[tower]
        try:
            return self.open(path, tower)
        except Exception as exc:  # the runtimes' own exception types; any of them means the file is damaged
            if self._repair is None:
                raise WeightsError(unreadable(path, exc, self.folder.own)) from None
        self._repair()
        self._repair = None  # repaired once; a second failure is reported
        try:
            return self.open(path, tower)
        except Exception as exc:
            raise WeightsError(unreadable(path, exc, self.folder.own)) from None

    def open(self, path: Path, tower: str) -> Run:
        raise NotImplementedError


def fitted(run: Run, dtype: np.dtype, batch: int | None) -> Run:
    """run, fed the dtype the graph takes, in chunks of the batch size it fixes (None: any)."""

    def call(x: np.ndarray) -> np.ndarray:
        x = x.astype(dtype, copy=False)
        if batch is None or len(x) == batch:
            return run(x)
        out = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            n = len(chunk)
            if n < batch:  # a short last chunk is padded with copies of its last row
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            out.append(run(chunk)[:n])
        return np.concatenate(out)

    return call


def unreadable(path: Path, exc: Exception, own: bool) -> str:
    first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    if own:
        return (
            f"model.cache_dir: the ONNX export {path} cannot be read ({first}); delete {path.parent} to export it again"
        )
    return f"model.pretrained: the ONNX file {path} cannot be read ({first})"

"""Embedders: the protocol, and the registry of implementations by `model.backend`.

torch and open_clip are imported only by the implementations, and only when a model is loaded; the onnx
implementation imports them only to export a model, the first time it is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.config import Settings


class Embedder(Protocol):
    """Turns images and texts into L2-normalised float32 vectors of one shared space."""

    model_id: str
    dim: int
    input_size: int  # the model's square input side, for scaled decoding
    logit_scale: float  # cosine -> logit, as the model was trained (100 for OpenAI's CLIP)
    logit_bias: float | None  # set for sigmoid-loss models (SigLIP): label probabilities are independent

    def prepare(self, image: Image.Image) -> np.ndarray:
        """CPU preprocessing of one RGB image to the model's input array. Thread-safe."""
        ...

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Embed a stack of `prepare` outputs: float32 [n, dim], unit length."""
        ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def _open_clip(settings: Settings) -> Embedder:
    from imgsearch.embed.openclip import OpenClipEmbedder

    return OpenClipEmbedder.from_settings(settings)


def _onnx(settings: Settings) -> Embedder:
    from imgsearch.embed import onnx

    return onnx.load(settings, fallback=False)


def _auto(settings: Settings) -> Embedder:
    from imgsearch.embed import onnx

    return onnx.load_auto(settings)


def _open_clip_id(settings: Settings) -> str:
    from imgsearch.embed.weights import model_id

    return model_id(settings.model)


# backend -> (loader, cheap model id without loading the model). Every backend serves the same model
# with the same embeddings, so they share one id: switching backends never invalidates an index.
BACKENDS: dict[str, tuple[Callable[[Settings], Embedder], Callable[[Settings], str]]] = {
    "open_clip": (_open_clip, _open_clip_id),
    "onnx": (_onnx, _open_clip_id),
    "auto": (_auto, _open_clip_id),
}


def load_embedder(settings: Settings) -> Embedder:
    return BACKENDS[settings.model.backend][0](settings)


def load_torch_embedder(settings: Settings) -> Embedder:
    """The open_clip (PyTorch) embedder of the configured model, whatever model.backend says (generation needs
    a differentiable model)."""
    return _open_clip(settings)


def configured_model_id(settings: Settings) -> str:
    """The id the configured model will report, computed without loading it."""
    return BACKENDS[settings.model.backend][1](settings)

"""Embedders: the protocol, and the registry of backends by `model.backend`.

torch and open_clip are imported only by the PyTorch implementation (embed/openclip.py), and by our ONNX export
(embed/export.py), which needs the `torch` extra; on the CPU the model is served from ONNX files by OpenVINO or
ONNX Runtime without them (embed/loading.py says which files and runtime, embed/precision.py which precision).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.config import Settings
    from imgsearch.embed.openclip import OpenClipEmbedder


class Embedder(Protocol):
    """Turns images and texts into L2-normalised float32 vectors of one shared space."""

    model_id: str
    dim: int
    input_size: int  # the model's square input side, for scaled decoding
    logit_scale: float  # cosine -> logit, as the model was trained (100 for OpenAI's CLIP)
    logit_bias: float | None  # set for sigmoid-loss models (SigLIP): label probabilities are independent
    runtime: str  # openvino, onnxruntime or pytorch
    precision: str  # fp32, bf16, int8 or fp16

    def prepare(self, image: Image.Image) -> np.ndarray:
        """CPU preprocessing of one RGB image to the model's input array. Thread-safe."""
        ...

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Embed a stack of `prepare` outputs: float32 [n, dim], unit length."""
        ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def describe(self) -> str:
        """Runtime, precision and device, e.g. "openvino bf16 on the CPU"."""
        ...


class DifferentiableClip(Protocol):
    """CLIP as generation needs it: a PyTorch model it can differentiate through (encode_image, encode_text),
    its tokenizer (texts -> token tensor) and the device it runs on. The open_clip embedder is one."""

    @property
    def model_id(self) -> str: ...

    @property
    def model(self) -> Any: ...  # a torch.nn.Module

    @property
    def tokenizer(self) -> Callable[[list[str]], Any]: ...  # texts -> a token tensor

    @property
    def device(self) -> Any: ...  # a torch.device


def differentiable(embedder: Embedder) -> DifferentiableClip | None:
    """The embedder itself when generation can differentiate through it (PyTorch, weights not cast to bf16)."""
    if embedder.runtime != "pytorch" or embedder.precision == "bf16":
        return None
    from imgsearch.embed.openclip import OpenClipEmbedder

    return embedder if isinstance(embedder, OpenClipEmbedder) else None


def _any(settings: Settings) -> Embedder:
    from imgsearch.embed import loading

    return loading.load(settings)


def _open_clip(settings: Settings) -> Embedder:
    from imgsearch.embed import loading

    return loading.torch_embedder(settings)


# backend -> loader. Every backend serves the same model with the same embeddings (to a cosine of 0.999), so
# they share one model id: switching backends or precisions never invalidates an index.
BACKENDS: dict[str, Callable[[Settings], Embedder]] = {
    "auto": _any,  # OpenVINO on the CPU (ONNX Runtime for int8), PyTorch on CUDA
    "openvino": _any,
    "onnx": _any,  # ONNX Runtime
    "open_clip": _open_clip,
}


def load_embedder(settings: Settings) -> Embedder:
    return BACKENDS[settings.model.backend](settings)


def load_torch_embedder(settings: Settings) -> OpenClipEmbedder:
    """The open_clip (PyTorch) embedder of the configured model, whatever model.backend says: generation
    differentiates through it (a DifferentiableClip). fp32 on the CPU (gradients in bf16 are too coarse), fp16
    autocast on CUDA."""
    from imgsearch.embed import loading

    if not loading.torch_installed():
        raise _generation_needs_torch()
    from imgsearch.embed.openclip import resolve_device

    cuda = resolve_device(settings.model.device).type == "cuda"
    return loading.torch_embedder(settings, None if cuda else "fp32")


def _generation_needs_torch() -> Exception:
    from imgsearch.errors import ConfigError

    return ConfigError("generate: generation runs CLIP in PyTorch: pip install 'imgsearch[torch]'")


def configured_model_id(settings: Settings) -> str:
    """The id the configured model will report, computed without loading it (nor importing what loads it: a query
    for a prompt seen before needs only this)."""
    from pathlib import Path

    from imgsearch.embed import weights

    pretrained = settings.model.pretrained.strip()
    if pretrained and Path(pretrained).expanduser().is_dir():
        from imgsearch.embed import loading

        return loading.configured_model_id(settings)
    return weights.model_id(settings.model)


def catalogue(name: str | None = None) -> list[str]:
    """Model names (or NAME's pretrained tags): open_clip's where torch is installed, else those with a ready ONNX
    export on the hub. A tag or name with such an export runs without torch; it is marked " (onnx)"."""
    from imgsearch.embed import hub, loading

    ready = hub.published()
    if not loading.torch_installed():
        return ready.get(name, []) if name else sorted(ready)
    import open_clip

    if name:
        return [t + (" (onnx)" if hub.repo_for(name, t) else "") for t in open_clip.list_pretrained_tags_by_model(name)]
    return [n + (" (onnx)" if n in ready else "") for n in open_clip.list_models()]

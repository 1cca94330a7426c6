"""The open_clip embedder: open_clip's own model, preprocessing and tokenizer, on CPU or CUDA."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import open_clip
import torch

from imgsearch.embed import weights
from imgsearch.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.config import Settings


class OpenClipEmbedder:
    """CLIP image and text towers; every output row is L2-normalised float32."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        model_id: str,
        device: torch.device,
        fp16: bool = False,
    ):
        self.model: Any = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.fp16 = fp16
        self.input_size = _input_size(model)
        self.logit_scale, self.logit_bias = _logit_params(self.model)
        self.dim = int(self.embed_texts(["probe"]).shape[1])

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenClipEmbedder:
        ms = settings.model
        weights.register_architecture(ms)
        resolved = weights.resolve(ms, settings.model_cache_dir)
        device = _device(ms.device)
        model, preprocess = _create(ms.name, resolved, device)
        fp16 = ms.precision == "fp16" or (ms.precision == "auto" and device.type == "cuda")
        if fp16 and device.type != "cuda":
            raise ConfigError("model.precision: fp16 needs a CUDA device; use fp32 or auto on the CPU")
        tokenizer = open_clip.get_tokenizer(ms.name)
        return cls(model, preprocess, tokenizer, weights.model_id(ms), device, fp16)

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self.preprocess(image).numpy()

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.inference_mode(), self._autocast():
            return _normalised(self.model.encode_image(pixels))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_prepared(np.stack([self.prepare(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            return _normalised(self.model.encode_text(tokens))

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16) if self.fp16 else nullcontext()


def _create(name: str, resolved: weights.ResolvedWeights, device: torch.device) -> tuple[torch.nn.Module, Any]:
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=resolved.path,
            device=device,
            force_quick_gelu=resolved.quick_gelu,
            **resolved.preprocess,
        )
    except Exception as exc:  # checkpoint formats fail in many ways; all mean the same to a user
        raise WeightsError(_load_failure(name, resolved.path, exc)) from None
    return model, preprocess


def _load_failure(name: str, path: str, exc: Exception) -> str:
    text = str(exc)
    if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
        return f"model.pretrained: {path} does not fit model.name={name} (a checkpoint of another architecture?)"
    first = text.splitlines()[0][:160] if text else type(exc).__name__
    return f"model.pretrained: cannot load checkpoint {path} ({first})"


def _device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"model.device: unknown device '{setting}' (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: CUDA was asked for but no CUDA device is available; use auto or cpu")
    return device


def _input_size(model: torch.nn.Module) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)


def _logit_params(model: Any) -> tuple[float, float | None]:
    scale = getattr(model, "logit_scale", None)
    bias = getattr(model, "logit_bias", None)
    with torch.no_grad():
        return (
            float(scale.exp()) if scale is not None else 100.0,
            float(bias) if bias is not None else None,
        )


def _normalised(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()

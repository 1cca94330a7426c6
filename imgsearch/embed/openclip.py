"""The open_clip embedder: open_clip's own model, preprocessing and tokenizer, on CPU or CUDA."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import open_clip
import torch

from imgsearch.embed import precision as precision_module
from imgsearch.embed import weights
from imgsearch.embed.folder import PROBE_TEXTS, probe_images
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
        precision: str = "fp32",
    ):
        self.model: Any = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.precision = precision
        self.runtime = "pytorch"
        self.input_size = _input_size(model)
        self.logit_scale, self.logit_bias = _logit_params(self.model)
        self.dim = int(self.embed_texts(["probe"]).shape[1])

    @classmethod
    def from_settings(cls, settings: Settings, precision: str | None = None) -> OpenClipEmbedder:
        """The configured model; precision (fp32, bf16, fp16) overrides model.precision, which `auto` decides
        here: fp16 autocast on CUDA, bf16 on a CPU that has it and passes the probe (embed/precision.py), else fp32."""
        ms = settings.model
        weights.register_architecture(ms)
        resolved = weights.resolve(ms, settings.model_cache_dir)
        device = resolve_device(ms.device)
        model, preprocess = _create(ms.name, resolved, device)
        tokenizer = open_clip.get_tokenizer(ms.name)
        model_id = weights.model_id(ms)
        fp32 = cls(model, preprocess, tokenizer, model_id, device)
        if precision is None:
            runtime = f"pytorch-{device.type}"
            precision = precision_module.decide(settings, runtime, model_id, fp32.bf16_probe).precision
        if precision == "fp32":
            return fp32
        if precision == "bf16" and device.type == "cpu":
            model = model.to(torch.bfloat16)  # oneDNN runs bf16 weights on AMX / AVX512_BF16
        return cls(model, preprocess, tokenizer, model_id, device, precision)

    def bf16_probe(self) -> float:
        """The least cosine between this (fp32) model's embeddings of the probe batch and a bf16 copy's."""
        import copy

        lower = OpenClipEmbedder(
            copy.deepcopy(self.model).to(torch.bfloat16), self.preprocess, self.tokenizer, self.model_id, self.device,
            "bf16",
        )  # fmt: skip
        images, texts = probe_images(), list(PROBE_TEXTS)
        return min(
            precision_module.min_cosine(self.embed_images(images), lower.embed_images(images)),
            precision_module.min_cosine(self.embed_texts(texts), lower.embed_texts(texts)),
        )

    def describe(self) -> str:
        return f"pytorch {self.precision} on {self.device}"

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self.preprocess(image).numpy()

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.precision == "bf16" and self.device.type == "cpu":
            pixels = pixels.to(torch.bfloat16)
        with torch.inference_mode(), self._autocast():
            return _normalised(self.model.encode_image(pixels))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_prepared(np.stack([self.prepare(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            return _normalised(self.model.encode_text(tokens))

    def _autocast(self) -> Any:
        if self.device.type != "cuda" or self.precision == "fp32":
            return nullcontext()
        return torch.autocast("cuda", dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16)


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


def resolve_device(setting: str) -> torch.device:
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

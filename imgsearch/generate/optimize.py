"""CLIP-guided image optimisation: the loop shared by the VQGAN and the weight-free Fourier generator.

Each step renders the image from its parameters, cuts random crops of random sizes out of it
(flipped and lightly noised, so the image has to work at every scale and not just fool CLIP at one),
embeds them with CLIP and lowers the squared great-circle distance between those embeddings and the
prompt's; Adam moves the parameters. Everything random draws from one seeded generator on the CPU,
so the same seed on the same device gives the same image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgsearch.generate.vqgan import VQGAN


class ImageParam(Protocol):
    """Learnable parameters that render an image [1, 3, H, W] with values in [0, 1]."""

    def parameters(self) -> Any: ...

    def __call__(self) -> torch.Tensor: ...


class Guide:
    """CLIP as a differentiable judge: embeddings of pixel tensors and of the prompt."""

    def __init__(self, model: Any, tokenizer: Callable[[list[str]], torch.Tensor], device: torch.device):
        import open_clip

        self.model = model.requires_grad_(False)  # gradients flow to the pixels only, never into CLIP
        self.tokenizer = tokenizer
        self.device = device
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.size = int(size[0] if isinstance(size, tuple | list) else size)
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=device)[
            None, :, None, None
        ]
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=device)[
            None, :, None, None
        ]

    def text(self, prompt: str) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(self.model.encode_text(self.tokenizer([prompt]).to(self.device)).float(), dim=-1)

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of [n, 3, size, size] images in [0, 1] (differentiable)."""
        return F.normalize(self.model.encode_image((pixels - self.mean) / self.std).float(), dim=-1)

    def score(self, image: torch.Tensor, target: torch.Tensor) -> float:
        """Cosine similarity of the whole image (resized to CLIP's input) and the prompt."""
        with torch.no_grad():
            whole = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
            return float((self.images(whole) @ target.T).item())


def cutouts(image: torch.Tensor, size: int, count: int, generator: torch.Generator, power: float = 1.0) -> torch.Tensor:
    """`count` random square crops of the image, resized to size x size, randomly mirrored and noised."""
    _, _, height, width = image.shape
    side = min(height, width)
    smallest = min(side, max(8, size // 2))
    crops = []
    for _ in range(count):
        r = torch.rand(4, generator=generator).tolist()
        extent = int(r[0] ** power * (side - smallest) + smallest)
        y, x = int(r[1] * (height - extent + 1)), int(r[2] * (width - extent + 1))
        piece = image[:, :, y : y + extent, x : x + extent]
        if extent < size:
            crop = F.interpolate(piece, size=(size, size), mode="bilinear", align_corners=False)
        else:
            crop = F.adaptive_avg_pool2d(piece, size)
        crops.append(crop.flip(-1) if r[3] < 0.5 else crop)
    batch = torch.cat(crops)
    strength = torch.rand(count, 1, 1, 1, generator=generator) * 0.05
    noise = torch.randn(batch.shape, generator=generator) * strength
    return batch + noise.to(batch.device)


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between unit vectors (rows of x against y)."""
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def optimise(
    param: ImageParam,
    guide: Guide,
    prompt: str,
    steps: int,
    cutout_count: int,
    lr: float,
    generator: torch.Generator,
    on_step: Callable[[int, int, float], None] = lambda step, total, score: None,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[np.ndarray, float, float, int]:
    """Run the loop; returns (uint8 H x W x 3 image, CLIP score before, CLIP score after, steps run)."""
    target = guide.text(prompt)
    with torch.no_grad():
        start = guide.score(param(), target)
    optimizer = torch.optim.Adam(param.parameters(), lr=lr)
    done = 0
    for step in range(steps):
        if stop():
            break
        image = param()
        embeddings = guide.images(cutouts(image, guide.size, cutout_count, generator))
        loss = spherical_distance(embeddings, target).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        on_step(done, steps, float(1 - 2 * math.sin(math.sqrt(float(loss.detach()) / 2)) ** 2))
    with torch.no_grad():
        final = param()
        score = guide.score(final, target)
        pixels = (final[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return pixels, start, score, done


class FourierImage(nn.Module):
    """An image as a scaled 2-D Fourier spectrum: low frequencies dominate, so the optimiser paints
    shapes before texture. No weights: the generator of last resort."""

    def __init__(self, height: int, width: int, generator: torch.Generator, device: torch.device, decay: float = 1.0):
        super().__init__()
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        frequency = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(height, width))
        self.register_buffer("scale", (1.0 / frequency**decay) / math.sqrt(height * width))
        spectrum = torch.randn(1, 3, height, width // 2 + 1, 2, generator=generator) * 0.01
        self.spectrum = nn.Parameter(spectrum.to(device))
        self.shape_hw = (height, width)

    def forward(self) -> torch.Tensor:
        scale: Any = self.scale
        spectrum = torch.view_as_complex(self.spectrum) * scale
        pixels = torch.fft.irfft2(spectrum, s=self.shape_hw, norm="ortho") * math.sqrt(
            self.shape_hw[0] * self.shape_hw[1]
        )
        return torch.sigmoid(pixels)

    def start_from(self, image: torch.Tensor) -> None:
        """Set the spectrum so that the rendered image is `image` ([1, 3, H, W] in [0, 1])."""
        logits = torch.logit(image.clamp(0.01, 0.99)) / math.sqrt(self.shape_hw[0] * self.shape_hw[1])
        scale: Any = self.scale
        spectrum = torch.fft.rfft2(logits, norm="ortho") / scale
        with torch.no_grad():
            self.spectrum.copy_(torch.view_as_real(spectrum))


class VQGANImage(nn.Module):
    """An image as a VQGAN latent grid, snapped to the codebook (straight-through) and decoded."""

    def __init__(self, model: VQGAN, latent: torch.Tensor):
        super().__init__()
        self.model = model
        self.z = nn.Parameter(latent)

    def forward(self) -> torch.Tensor:
        pixels = self.model.decode(self.z).add(1).div(2)
        return pixels + (pixels.clamp(0, 1) - pixels).detach()  # clamp without killing the gradient

    def parameters(self, recurse: bool = True) -> Any:
        return iter([self.z])  # the decoder stays fixed

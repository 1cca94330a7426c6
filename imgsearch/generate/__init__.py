"""CLIP-guided generation: VQGAN+CLIP, and a weight-free Fourier fallback, saved as PNG with provenance.

torch is imported here and in the modules below only, and only when a generation runs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.errors import UsageError, WeightsError
from imgsearch.types import GENERATORS, PROVENANCE_PREFIX, GenerationResult, Progress
from imgsearch.version import __version__

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.config import GenerateSettings
    from imgsearch.embed import DifferentiableClip


@dataclass(frozen=True)
class Request:
    """One generation: what to draw and how. Zero steps/size/cutouts: the device's defaults."""

    prompt: str
    steps: int = 0
    width: int = 0
    height: int = 0
    seed: int | None = None
    init_image: Image.Image | None = None
    generator: str = "auto"


@dataclass(frozen=True)
class Plan:
    """A request with every default filled in for the device."""

    prompt: str
    steps: int
    width: int
    height: int
    seed: int
    cutouts: int
    learning_rate: float
    generator: str


def plan(request: Request, settings: GenerateSettings, on_gpu: bool) -> Plan:
    """Fill the defaults: sized for minutes on a CPU, for quality on a GPU."""
    side = settings.size or (256 if on_gpu else 128)
    seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(4), "little")
    return Plan(
        prompt=request.prompt,
        steps=request.steps or settings.steps or (300 if on_gpu else 60),
        width=request.width or side,
        height=request.height or side,
        seed=seed,
        cutouts=settings.cutouts or (32 if on_gpu else 8),
        learning_rate=settings.learning_rate,
        generator=request.generator,
    )


def run(
    request: Request,
    clip: DifferentiableClip,
    settings: GenerateSettings,
    cache_dir: Path,
    out_dir: Path,
    download_timeout: float,
    on_progress: Callable[[Progress], None] = lambda p: None,
    on_notice: Callable[[str], None] = lambda text: None,
    stop: Callable[[], bool] = lambda: False,
) -> GenerationResult:
    """Generate one image for the prompt and save it under out_dir; the result says where and how well."""
    import torch

    from imgsearch.generate import optimize

    if request.generator not in GENERATORS:
        raise UsageError(f"generate: unknown generator {request.generator!r} ({', '.join(GENERATORS)})")
    device = clip.device
    p = plan(request, settings, device.type == "cuda")
    generator = torch.Generator().manual_seed(p.seed)
    torch.manual_seed(p.seed)
    guide = optimize.Guide(clip.model, clip.tokenizer, device)
    param, used, width, height = _image_param(
        p, request.init_image, settings, cache_dir, download_timeout, device, generator, on_progress, on_notice
    )
    started = time.monotonic()
    pixels, start, score, steps = optimize.optimise(
        param,
        guide,
        p.prompt,
        p.steps,
        p.cutouts,
        p.learning_rate,
        generator,
        on_step=lambda step, total, s: on_progress(Progress("generate", step, total, s)),
        stop=stop,
    )
    seconds = time.monotonic() - started
    result = GenerationResult(
        path="",
        prompt=p.prompt,
        seed=p.seed,
        steps=steps,
        width=width,
        height=height,
        generator=used,
        model_id=clip.model_id,
        score_start=start,
        score=score,
        seconds=seconds,
    )
    path = save_png(pixels, out_dir, result)
    return GenerationResult(**{**result.__dict__, "path": str(path)})


def _image_param(
    p: Plan,
    init: Image.Image | None,
    settings: GenerateSettings,
    cache_dir: Path,
    timeout: float,
    device: Any,
    generator: Any,
    on_progress: Callable[[Progress], None],
    on_notice: Callable[[str], None],
) -> tuple[Any, str, int, int]:
    """The thing to optimise (VQGAN latent or Fourier spectrum), the generator's name, and the final size."""
    import torch

    from imgsearch.generate import optimize, vqgan, weights

    if p.generator in ("auto", "vqgan"):
        try:
            files = weights.resolve(settings.vqgan_checkpoint, settings.vqgan_config, cache_dir, timeout, on_progress)
            model = vqgan.load(files.checkpoint, files.config, device)
        except WeightsError as exc:
            if p.generator == "vqgan":
                raise
            on_notice(f"no VQGAN weights ({exc}); generating with the weight-free Fourier generator instead")
        else:
            f = model.cfg.downscale
            width, height = max(f, p.width // f * f), max(f, p.height // f * f)
            if init is not None:
                with torch.no_grad():
                    latent = model.encode(_tensor(init, width, height, device) * 2 - 1)
            else:
                latent = model.random_latent(height, width, generator).to(device)
            return optimize.VQGANImage(model, latent), f"vqgan:{files.name}", width, height
    fourier = optimize.FourierImage(p.height, p.width, generator, device)
    if init is not None:
        fourier.start_from(_tensor(init, p.width, p.height, device))
    return fourier, "fourier", p.width, p.height


def _tensor(image: Image.Image, width: int, height: int, device: Any) -> Any:
    """An RGB picture as [1, 3, H, W] in [0, 1], resized to fill width x height (centre crop)."""
    import torch
    from PIL import ImageOps

    fitted = ImageOps.fit(image.convert("RGB"), (width, height))
    array = np.asarray(fitted, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].to(device)


def provenance(result: GenerationResult) -> dict[str, str]:
    """The PNG text chunks a generated file carries (keys prefixed "imgsearch:")."""
    fields = {
        "prompt": result.prompt,
        "seed": str(result.seed),
        "steps": str(result.steps),
        "size": f"{result.width}x{result.height}",
        "generator": result.generator,
        "model": result.model_id,
        "score": f"{result.score:.4f}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return {PROVENANCE_PREFIX + k: v for k, v in fields.items()}


def save_png(pixels: np.ndarray, folder: Path, result: GenerationResult) -> Path:
    """Write the image with its provenance; never overwrites (a -2, -3 ... suffix instead)."""
    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in provenance(result).items():
        info.add_itxt(key, value)
    info.add_itxt("Description", result.prompt)
    info.add_text("Software", f"imgsearch {__version__}")
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^a-z0-9]+", "-", result.prompt.lower()).strip("-")[:60] or "generated"
    path = folder / f"{stem}-{result.seed}.png"
    n = 2
    while path.exists():
        path, n = folder / f"{stem}-{result.seed}-{n}.png", n + 1
    tmp = path.with_name(f".{path.name}.tmp")
    PILImage.fromarray(pixels, "RGB").save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    return path


def read_provenance(path: str | Path) -> dict[str, str]:
    """The imgsearch provenance of a PNG ({} for any other file)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as image:
            text = dict(getattr(image, "text", {}))
    except OSError:
        return {}
    return {k[len(PROVENANCE_PREFIX) :]: v for k, v in text.items() if k.startswith(PROVENANCE_PREFIX)}

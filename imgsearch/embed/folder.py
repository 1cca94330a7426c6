"""A model as ONNX files on disk: both towers, the preprocessing, the tokenizer and the facts an embedder needs.

Two layouts are read, both with numpy and PIL only (no torch):

- our own export (`embed/export.py`): `model_cache_dir/onnx/<model>/` with `image.onnx`, `text.onnx`, CLIP's
  merges file and `manifest.json`, which records the model id, dimensions, preprocessing and how the export was
  checked against PyTorch;
- the hub layout Immich publishes (`immich-app/<name>__<tag>` on Hugging Face), which a user may also have as a
  folder: `config.json` (open_clip's model config), `visual/model.onnx` and `visual/preprocess_cfg.json`,
  `textual/model.onnx` with `textual/tokenizer.json` (and `merges.txt`, `vocab.json`). Tensors may sit in
  sidecar files beside each `model.onnx`. Its towers take a fixed or dynamic batch and int32 or int64 tokens;
  the embedders read both from the graph.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from imgsearch.embed.bpe import END, MERGES_FILE, START, ClipTokenizer
from imgsearch.errors import WeightsError

if TYPE_CHECKING:
    from imgsearch.config import Settings

FORMAT = 1  # bump when our folder's layout or the manifest's meaning changes: old folders are exported again
MANIFEST = "manifest.json"
TOWERS = {"image": "image.onnx", "text": "text.onnx"}
HUB_TOWERS = {"image": "visual/model.onnx", "text": "textual/model.onnx"}
HUB_FILES = ("config.json", "visual/preprocess_cfg.json", *HUB_TOWERS.values())
DEFAULT_LOGIT_SCALE = 100.0  # CLIP's trained temperature, clamped there by open_clip: hub exports do not record it
PROBE_TEXTS = ("a photo of a cat", "", "Two DOGS, running & jumping!", "naïve café 東京 🐱", "word " * 90)
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class Unsupported(Exception):
    """This model cannot be served from ONNX files (the reason is the message); open_clip may still serve it."""


@dataclass(frozen=True)
class ModelFolder:
    """The files of one model and what serving them needs. `own`: our export (it can be made again)."""

    root: Path
    model_id: str
    dim: int
    input_size: int
    logit_scale: float
    logit_bias: float | None
    context_length: int
    preprocess: Preprocess
    towers: dict[str, Path]
    merges: Path
    own: bool
    text_any_length: bool = False  # the text tower takes tokens cut after the end token (our exports of CLIP)
    facts: dict[str, Any] = field(default_factory=dict)  # the manifest (ours) or config.json (hub), for reports

    def tokenizer(self) -> ClipTokenizer:
        return ClipTokenizer.from_file(self.merges, self.context_length)

    @property
    def key(self) -> str:
        """A file-system-safe name for what is derived from these files (compiled or quantised copies)."""
        return folder_name(self.model_id)


# our own export


def cache_folder(settings: Settings, model_id: str) -> Path:
    """Where the export of the configured model lives: a readable name plus a hash of the exact model id."""
    return settings.model_cache_dir / "onnx" / folder_name(model_id)


def folder_name(model_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:80]
    return f"{readable}-{sha256(model_id.encode()).hexdigest()[:8]}"


def read_manifest(folder: Path, model_id: str | None) -> dict[str, Any] | None:
    """The folder's manifest when our export is complete (and of model_id, when given); None when it must be made."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if model_id is not None and manifest.get("model_id") != model_id:
        return None
    for name, size in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return manifest


def from_manifest(folder: Path, manifest: dict[str, Any]) -> ModelFolder:
    """Our export. A manifest that records a refusal raises Unsupported with its reason."""
    if manifest["status"] != "ok":
        raise Unsupported(manifest["reason"])
    bias = manifest.get("logit_bias")
    return ModelFolder(
        root=folder,
        model_id=manifest["model_id"],
        dim=int(manifest["dim"]),
        input_size=int(manifest["input_size"]),
        logit_scale=float(manifest["logit_scale"]),
        logit_bias=float(bias) if bias is not None else None,
        context_length=int(manifest["context_length"]),
        preprocess=Preprocess.from_config(manifest["preprocess"]),
        towers={tower: folder / name for tower, name in manifest["towers"].items()},
        merges=folder / MERGES_FILE,
        own=True,
        text_any_length=bool(manifest.get("text_any_length", False)),
        facts=manifest,
    )


# the hub layout


def is_hub_folder(path: Path) -> bool:
    return (path / HUB_TOWERS["image"]).is_file()


def hub_model_id(name: str, folder: Path) -> str:
    """The id of a hub-layout folder a user points at: its files' content, so a changed export is a new model."""
    return f"{name}:onnx-{hub_fingerprint(folder)}"


def hub_fingerprint(folder: Path) -> str:
    """Size plus first and last MiB of every file under visual/ and textual/ (weights may sit in sidecars)."""
    from imgsearch.embed.weights import fingerprint

    digest = hashlib.sha256()
    for sub in ("visual", "textual"):
        for path in sorted(p for p in (folder / sub).glob("*") if p.is_file()):
            digest.update(f"{sub}/{path.name}={fingerprint(path)};".encode())
    return digest.hexdigest()[:16]


def from_hub(folder: Path, model_id: str) -> ModelFolder:
    """A folder in the hub layout. Missing files are a WeightsError naming them; a tokenizer other than
    CLIP's BPE (SigLIP, multilingual models) raises Unsupported."""
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsError(f"model.pretrained: {folder} is not a complete ONNX model folder (missing {missing[0]})")
    config = _json(folder / "config.json")
    text_cfg = config.get("text_cfg") or {}
    if text_cfg.get("hf_tokenizer_name") or (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "lower") != "lower":
        raise Unsupported("its tokenizer is not CLIP's BPE, which imgsearch implements")
    preprocess_cfg = _json(folder / "visual" / "preprocess_cfg.json")
    preprocess = Preprocess.from_config(preprocess_cfg)
    return ModelFolder(
        root=folder,
        model_id=model_id,
        dim=int(config["embed_dim"]),
        input_size=preprocess.size[0],
        logit_scale=DEFAULT_LOGIT_SCALE,
        logit_bias=None,
        context_length=int(text_cfg.get("context_length", 77)),
        preprocess=preprocess,
        towers={tower: folder / name for tower, name in HUB_TOWERS.items()},
        merges=_hub_merges(folder),
        own=False,
        facts=config,
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"model.pretrained: cannot read {path} ({exc})") from None
    if not isinstance(value, dict):
        raise WeightsError(f"model.pretrained: {path} is not a JSON object")
    return value


def _hub_merges(folder: Path) -> Path:
    """CLIP's merges as the hub folder has them, checked against its vocabulary: the ids must be CLIP's."""
    textual = folder / "textual"
    merges = textual / "merges.txt"
    if not merges.is_file():
        merges = _merges_from_tokenizer_json(textual / "tokenizer.json")
    vocab_file = textual / "vocab.json"
    if vocab_file.is_file():
        vocab = _json(vocab_file)
        ours = ClipTokenizer.from_file(merges, 77).ids
        ours = {piece: i for piece, i in ours.items() if piece not in (START, END)}  # spelled <|...|> there
        if any(vocab.get(piece) != i for piece, i in ours.items()):
            raise Unsupported("its vocabulary is not CLIP's (token ids differ)")
    return merges


def _merges_from_tokenizer_json(path: Path) -> Path:
    """tokenizer.json's BPE merges written out as merges.txt beside it (once)."""
    out = path.with_name("merges.txt")
    model = _json(path).get("model") or {}
    if model.get("type") != "BPE" or not model.get("merges"):
        raise Unsupported("its tokenizer is not a BPE tokenizer")
    pairs = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    try:
        out.write_text("#version: 0.2\n" + "\n".join(pairs) + "\n", encoding="utf-8")
    except OSError as exc:
        raise WeightsError(f"model.pretrained: cannot write {out} ({exc.strerror})") from None
    return out


# preprocessing


@dataclass(frozen=True)
class Preprocess:
    """open_clip's inference transform (resize, center crop or pad, to RGB, normalise) on PIL and numpy.

    PIL does the resampling in both, so the arrays agree with torchvision's to rounding.
    """

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Preprocess:
        """open_clip's preprocess config (our manifest's copy, or the hub's preprocess_cfg.json)."""
        size = cfg["size"]
        return cls(
            size=(int(size[0]), int(size[1])) if isinstance(size, list | tuple) else (int(size), int(size)),
            mean=_triple(cfg["mean"]),
            std=_triple(cfg["std"]),
            interpolation=cfg.get("interpolation") or "bicubic",
            resize_mode=cfg.get("resize_mode") or "shortest",
            fill_color=int(cfg.get("fill_color") or 0),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = self._fit(image)
        scaled = np.asarray(image.convert("RGB"), dtype=np.uint8).astype(np.float32) / np.float32(255)
        normalised = (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)

    def _fit(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        resample = RESAMPLE.get(self.interpolation, Image.Resampling.BICUBIC)
        if self.resize_mode == "squash":
            return _resize(image, width, height, resample)
        if self.resize_mode == "longest":
            return _crop_or_pad(_keep_ratio(image, self.size, True, resample), self.size, self.fill_color)
        if height == width:
            image = _shortest_side(image, height, resample)
        else:  # open_clip resizes a non-square target with bicubic whatever the configuration says
            image = _keep_ratio(image, self.size, False, Image.Resampling.BICUBIC)
        return _crop_or_pad(image, self.size, 0)


def _triple(value: Any) -> tuple[float, float, float]:
    values = [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)] * 3
    return values[0], values[1], values[2]


def _resize(image: Image.Image, width: int, height: int, resample: Image.Resampling) -> Image.Image:
    return image if image.size == (width, height) else image.resize((width, height), resample)


def _shortest_side(image: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
    """torchvision's Resize(int): the short side to `side`, the long one scaled and truncated."""
    width, height = image.size
    if width <= height:
        return _resize(image, side, int(side * height / width), resample)
    return _resize(image, int(side * width / height), side, resample)


def _keep_ratio(image: Image.Image, size: tuple[int, int], longest: bool, resample: Image.Resampling) -> Image.Image:
    """open_clip's ResizeKeepRatio: scale so the longest (or shortest) side fits its target, rounded."""
    width, height = image.size
    ratios = (height / size[0], width / size[1])
    ratio = max(ratios) if longest else min(ratios)
    return _resize(image, round(width / ratio), round(height / ratio), resample)


def _crop_or_pad(image: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    """torchvision's center crop: pad a side that is too short with `fill`, then crop the middle."""
    height, width = size
    w, h = image.size
    if width > w or height > h:
        pad_w, pad_h = max(width - w, 0), max(height - h, 0)
        border = (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2)
        colour = fill if len(image.getbands()) == 1 else (fill,) * len(image.getbands())
        image = ImageOps.expand(image, border=border, fill=colour)
        w, h = image.size
    if (w, h) == (width, height):
        return image
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


def probe_image(seed: int = 0) -> Image.Image:
    """A deterministic, non-square test picture with edges and texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:300, 0:400]
    a, b, c = (0.6, 0.8, 0.3) if seed == 0 else tuple(rng.uniform(0.1, 2.0, 3))
    pixels = np.stack([(x * a) % 256, (y * b) % 256, ((x + y) * c) % 256], axis=-1)
    pixels = pixels + rng.normal(0, 20, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def probe_images(n: int = 8) -> list[Image.Image]:
    """A batch of different probe pictures (the precision probe embeds them both ways)."""
    return [probe_image(seed) for seed in range(n)]

"""The ONNX Runtime embedder: open_clip's two towers exported once per model, then served on the CPU without torch.

The first load of a model goes through the open_clip embedder (so weights resolution, errors and
local checkpoint files behave as always), exports `encode_image` and `encode_text` to ONNX with a
dynamic batch axis, checks the export against PyTorch on a probe, and keeps it in
`model_cache_dir/onnx/<model id>/` beside a manifest (dimensions, logit scale, preprocessing,
context length, versions) and the BPE merges file CLIP's tokenizer reads. The folder is built
under a temporary name and renamed into place. Every later load reads only that folder, with
onnxruntime, numpy and PIL: torch and open_clip are never imported.

A folder that is missing, partial or unreadable is exported again. A model ONNX cannot serve (a
tokenizer other than CLIP's BPE, an export that fails or disagrees with PyTorch) is recorded there
too: the `auto` backend then serves it with open_clip, the `onnx` backend refuses it in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import sys
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from imgsearch.embed import weights
from imgsearch.embed.bpe import MERGES_FILE, ClipTokenizer
from imgsearch.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from imgsearch.config import Settings
    from imgsearch.embed import Embedder
    from imgsearch.embed.openclip import OpenClipEmbedder

FORMAT = 1  # bump when the folder's layout or the manifest's meaning changes: old folders are exported again
MANIFEST = "manifest.json"
TOWERS = {"image": "image.onnx", "text": "text.onnx"}
OUTPUT = "tower_output"  # named unlike any node the exporters make (a clash makes an invalid model)
PARITY = 0.999  # least cosine between ONNX and PyTorch embeddings on the export probe
VERSIONED = ("torch", "open_clip_torch", "onnxruntime", "onnxscript", "onnx")
PROBE_TEXTS = ("a photo of a cat", "", "Two DOGS, running & jumping!", "naïve café 東京 🐱", "word " * 90)
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load(settings: Settings, fallback: bool) -> Embedder:
    """The ONNX embedder for the configured model, exported first if need be.

    With fallback (the `auto` backend) a model ONNX cannot serve is served by open_clip; without
    it (the `onnx` backend) that is a ConfigError.
    """
    _check_settings(settings, fallback)
    model_id = _model_id(settings)
    folder = cache_folder(settings, model_id)
    manifest = _read_manifest(folder, model_id)
    torch_embedder = None
    if manifest is None:
        torch_embedder = torch_embedder_for_export(settings)
        try:
            manifest = export(torch_embedder, folder)
        except WeightsError:  # the cache cannot be written: auto carries on with the model it has
            if fallback:
                return torch_embedder
            raise
    if manifest["status"] == "ok":
        return OnnxEmbedder(folder, manifest, settings)
    if not fallback:
        raise ConfigError(
            f"model.backend: onnx cannot serve {model_id}: {manifest['reason']}; use model.backend=auto or open_clip"
        )
    return torch_embedder or torch_embedder_for(settings)


def load_auto(settings: Settings) -> Embedder:
    """The `auto` backend: open_clip (PyTorch) on CUDA or for fp16, ONNX Runtime on the CPU."""
    ms = settings.model
    if ms.precision == "fp16" or _wants_cuda(ms.device) or not _have_onnxruntime():
        return torch_embedder_for(settings)
    return load(settings, fallback=True)


def torch_embedder_for(settings: Settings) -> OpenClipEmbedder:
    """The open_clip (PyTorch) embedder of the configured model, whatever model.backend says.

    Generation needs it: it differentiates through the image tower, which ONNX Runtime cannot.
    """
    from imgsearch.embed.openclip import OpenClipEmbedder

    return OpenClipEmbedder.from_settings(settings)


def torch_embedder_for_export(settings: Settings) -> OpenClipEmbedder:
    """The model as it is exported: fp32 on the CPU, whatever model.device and model.precision say."""
    model = dataclasses.replace(settings.model, device="cpu", precision="fp32")
    return torch_embedder_for(dataclasses.replace(settings, model=model))


def _model_id(settings: Settings) -> str:
    """The configured model's id; a missing or empty checkpoint path fails as the open_clip backend says it."""
    ms = settings.model
    if not ms.pretrained.strip() or weights.is_path(ms.pretrained):
        weights.resolve(ms, settings.model_cache_dir)  # a file is only checked for, a tag never fetched here
    return weights.model_id(ms)


def cache_folder(settings: Settings, model_id: str | None = None) -> Path:
    """Where the export of the configured model lives: a readable name plus a hash of the exact model id."""
    model_id = model_id or weights.model_id(settings.model)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:80]
    return settings.model_cache_dir / "onnx" / f"{readable}-{sha256(model_id.encode()).hexdigest()[:8]}"


def _check_settings(settings: Settings, fallback: bool) -> None:
    ms = settings.model
    if fallback:
        return
    if ms.device != "auto" and not ms.device.startswith("cpu"):
        raise ConfigError(
            f"model.backend: onnx runs on the CPU only; with model.device={ms.device} use open_clip or auto"
        )
    if ms.precision == "fp16":
        raise ConfigError("model.precision: fp16 needs model.backend=open_clip on a CUDA device")
    if not _have_onnxruntime():
        raise ConfigError("model.backend: onnx needs onnxruntime (pip install onnxruntime), or use open_clip")


def _have_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _wants_cuda(device: str) -> bool:
    """Whether PyTorch would run on CUDA. torch is only imported to ask where an NVIDIA driver is present."""
    if device == "cpu":
        return False
    if device != "auto":
        return True  # cuda, cuda:N, or a device name open_clip's loader will judge
    if "torch" not in sys.modules and not _nvidia_driver():
        return False
    import torch

    return bool(torch.cuda.is_available())


def _nvidia_driver() -> bool:
    return (
        Path("/proc/driver/nvidia/version").exists()
        or Path("/dev/dxg").exists()  # WSL
        or shutil.which("nvidia-smi") is not None
    )


# serving


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
    def from_manifest(cls, cfg: dict[str, Any]) -> Preprocess:
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


class OnnxEmbedder:
    """CLIP's towers on ONNX Runtime (CPU); every output row is L2-normalised float32.

    Each tower's session opens on first use, so a text query never loads the image tower. A tower
    file that cannot be read is exported again, once.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], settings: Settings | None = None):
        self.folder = folder
        self.manifest = manifest
        self.model_id: str = manifest["model_id"]
        self.device = "cpu"  # onnxruntime's CPU provider (benchmarks show where a model runs)
        self.dim = int(manifest["dim"])
        self.input_size = int(manifest["input_size"])
        self.logit_scale = float(manifest["logit_scale"])
        bias = manifest.get("logit_bias")
        self.logit_bias = float(bias) if bias is not None else None
        self.preprocess = Preprocess.from_manifest(manifest["preprocess"])
        self.tokenizer = ClipTokenizer.from_file(folder / MERGES_FILE, int(manifest["context_length"]))
        self._settings = settings
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> OnnxEmbedder:
        embedder = load(settings, fallback=False)
        assert isinstance(embedder, OnnxEmbedder)
        return embedder

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self.preprocess(image)

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        return self._run("image", np.ascontiguousarray(batch, dtype=np.float32))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_prepared(np.stack([self.prepare(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._run("text", self.tokenizer(list(texts)))

    def _run(self, tower: str, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        session = self._session(tower)
        out = session.run(None, {session.get_inputs()[0].name: batch})[0].astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _session(self, tower: str) -> Any:
        with self._lock:
            if tower not in self._sessions:
                self._sessions[tower] = self._open(tower)
            return self._sessions[tower]

    def _open(self, tower: str) -> Any:
        path = self.folder / TOWERS[tower]
        try:
            return open_session(path, spin=tower != "image")
        except Exception as exc:  # onnxruntime's own exception types; any of them means the file is damaged
            if self._settings is None:
                raise WeightsError(_unreadable(path, exc)) from None
        export(torch_embedder_for_export(self._settings), self.folder)
        self._settings = None  # repaired once; a second failure is reported
        try:
            return open_session(path, spin=tower != "image")
        except Exception as exc:
            raise WeightsError(_unreadable(path, exc)) from None


def _unreadable(path: Path, exc: Exception) -> str:
    first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return f"model.cache_dir: the ONNX export {path} cannot be read ({first}); delete {path.parent} to export it again"


def open_session(path: Path, spin: bool = True) -> Any:
    """An onnxruntime session on the CPU. spin: its threads busy-wait between operations (the fastest for the
    model alone); the image tower does not, because during `index` it shares the cores with the decode
    threads, which spinning threads starve (ViT-B-32, 2 cores: index 9.8 -> 11.4 images/s, while the model
    alone drops from 17.3 to 14.4)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the core never prints
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _threads() -> int:
    """Every CPU this process may use; 0 (onnxruntime's choice: one per physical core) when that is all of them.

    OMP_NUM_THREADS caps it, as it caps PyTorch: Ray sets it to an actor's CPUs, so that several embedding
    actors on one machine (`index --ray`) do not each run a thread per core (two actors on 2 cores, ViT-B-32:
    9.9 -> 16.5 images/s once both are busy).
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and 0 < int(cap) < usable:
        return int(cap)
    return usable if usable < (os.cpu_count() or usable) else 0


def _read_manifest(folder: Path, model_id: str) -> dict[str, Any] | None:
    """The folder's manifest when the export is complete and is of this model; None when it must be made."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("model_id") != model_id:
        return None
    for name, size in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return manifest


# exporting (torch is imported from here on only)


def export(embedder: OpenClipEmbedder, folder: Path) -> dict[str, Any]:
    """Export the model's towers into folder (replacing what is there); the manifest written, ok or not."""
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _sweep(folder)
        staging.mkdir()
        manifest = _export_into(embedder, staging)
        manifest["files"] = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _replace_folder(staging, folder)
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise WeightsError(f"model.cache_dir: cannot write the ONNX export under {folder.parent} ({why})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _sweep(folder: Path, older_than: float = 3600.0) -> None:
    """Delete what an interrupted export of this model left behind (a live one touches its folder often)."""
    import time

    for stale in folder.parent.glob(f".{folder.name}.*-*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > older_than:
                shutil.rmtree(stale)


def _replace_folder(staging: Path, folder: Path) -> None:
    """Rename staging to folder; what was there is moved aside first, then deleted."""
    aside = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):
        folder.rename(aside)
    with contextlib.suppress(OSError):  # another process renamed its own fresh export into place first
        staging.rename(folder)
    shutil.rmtree(aside, ignore_errors=True)


def _export_into(embedder: OpenClipEmbedder, folder: Path) -> dict[str, Any]:
    manifest = _describe(embedder)
    problem = _tokenizer_problem(embedder)
    if problem:
        return {**manifest, "status": "unsupported", "reason": problem}
    shutil.copyfile(_merges_file(), folder / MERGES_FILE)
    try:
        manifest["exporter"] = _export_towers(embedder, folder, manifest)
    except OSError:
        raise  # the disk, not the model: nothing to remember
    except Exception as exc:  # the exporters fail in many ways; each means this model stays on PyTorch
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        _clear(folder)
        return {**manifest, "status": "unsupported", "reason": f"the ONNX export failed ({first})"}
    problem = _parity_problem(embedder, folder, manifest)
    if problem:
        _clear(folder)
        return {**manifest, "status": "unsupported", "reason": problem}
    return manifest


def _clear(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def _describe(embedder: OpenClipEmbedder) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(embedder.model)
    size = cfg.get("size", embedder.input_size)
    return {
        "format": FORMAT,
        "status": "ok",
        "model_id": embedder.model_id,
        "dim": embedder.dim,
        "input_size": embedder.input_size,
        "logit_scale": embedder.logit_scale,
        "logit_bias": embedder.logit_bias,
        "context_length": int(getattr(embedder.tokenizer, "context_length", None) or 0),
        "preprocess": {
            "size": list(size) if isinstance(size, list | tuple) else [size, size],
            "mean": list(cfg.get("mean", ())),
            "std": list(cfg.get("std", ())),
            "interpolation": cfg.get("interpolation", "bicubic"),
            "resize_mode": cfg.get("resize_mode", "shortest"),
            "fill_color": cfg.get("fill_color", 0),
        },
        "tokenizer": {"kind": "clip-bpe", "clean": "lower", "merges": MERGES_FILE},
        "towers": TOWERS,
        "versions": {name: _version(name) for name in VERSIONED},
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _merges_file() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / MERGES_FILE


def _tokenizer_problem(embedder: OpenClipEmbedder) -> str | None:
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = embedder.tokenizer
    if not isinstance(tokenizer, SimpleTokenizer) or not tokenizer.context_length:
        return f"its tokenizer ({type(tokenizer).__name__}) is not CLIP's BPE, which the onnx backend implements"
    ours = ClipTokenizer.from_file(_merges_file(), tokenizer.context_length)
    if not np.array_equal(ours(PROBE_TEXTS), tokenizer(list(PROBE_TEXTS)).numpy()):
        return "its tokenizer is configured unlike CLIP's (other cleaning or vocabulary)"
    return None


def _export_towers(embedder: OpenClipEmbedder, folder: Path, manifest: dict[str, Any]) -> str:
    """Both towers to ONNX: torch.export (dynamo) first, the TorchScript exporter if that fails."""
    import torch

    height, width = manifest["preprocess"]["size"]
    examples = {
        "image": torch.zeros(2, 3, height, width),
        "text": embedder.tokenizer(["a photo", "of a cat"]),
    }
    errors = []
    for dynamo in (True, False):
        try:
            for tower, example in examples.items():
                _export_tower(embedder.model, tower, example, folder / TOWERS[tower], dynamo)
            return "dynamo" if dynamo else "torchscript"
        except OSError:
            raise
        except Exception as exc:  # try the other exporter; report the first if neither works
            errors.append(exc)
            _clear_towers(folder)
    raise errors[0]


def _clear_towers(folder: Path) -> None:
    for path in folder.glob("*.onnx*"):
        path.unlink()


def _export_tower(model: Any, tower: str, example: Any, path: Path, dynamo: bool) -> None:
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(x) if tower == "image" else self.model.encode_text(x)

    name = "pixels" if tower == "image" else "tokens"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecations and tracer notes the user can do nothing about
        if dynamo:
            torch.onnx.export(
                Tower().eval(),
                (example,),
                str(path),
                dynamo=True,
                verbose=False,
                opset_version=18,
                input_names=[name],
                output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )
        else:
            torch.onnx.export(
                Tower().eval(),
                (example,),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=[name],
                output_names=[OUTPUT],
                dynamic_axes={name: {0: "batch"}, OUTPUT: {0: "batch"}},
            )


def probe_image() -> Image.Image:
    """A deterministic, non-square test picture with edges and texture."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:400]
    pixels = np.stack([(x * 0.6) % 256, (y * 0.8) % 256, ((x + y) * 0.3) % 256], axis=-1)
    pixels = pixels + rng.normal(0, 20, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _parity_problem(embedder: OpenClipEmbedder, folder: Path, manifest: dict[str, Any]) -> str | None:
    """Whether the exported folder serves what PyTorch does: preprocessing, then both towers, on a probe."""
    onnx = OnnxEmbedder(folder, manifest)
    image = probe_image()
    ours, theirs = onnx.prepare(image), embedder.prepare(image)
    if ours.shape != theirs.shape or float(np.abs(ours - theirs).max()) > 1e-3:
        return "its preprocessing could not be reproduced without torch"
    cosines = {
        "image": _min_cosine(onnx.embed_prepared(theirs[None]), embedder.embed_prepared(theirs[None])),
        "text": _min_cosine(onnx.embed_texts(PROBE_TEXTS), embedder.embed_texts(PROBE_TEXTS)),
    }
    manifest["parity"] = cosines
    worst = min(cosines, key=lambda k: cosines[k])
    if cosines[worst] < PARITY:
        return f"the exported {worst} tower disagrees with PyTorch (cosine {cosines[worst]:.4f})"
    return None


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())

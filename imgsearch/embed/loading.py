"""Loading the configured model: which runtime serves it, from which files, at which precision.

On the CPU the model is served from ONNX files by OpenVINO (every install) or ONNX Runtime (the `onnxruntime`
extra; `model.precision: int8`), without torch. The files are, in this order:
1. `model.pretrained` itself, when it names a folder of ONNX exports (ours, or the hub layout);
2. our export of the model in `model_cache_dir/onnx/` (made earlier, here or anywhere torch was installed);
3. the hub's published export of a pretrained tag, fetched earlier into `model_cache_dir/hub/`;
4. our export made now from the checkpoint, where torch is installed (the `torch` extra);
5. the hub's published export, fetched now.
PyTorch (open_clip) serves CUDA, fp16, models ONNX cannot serve (with `auto`), and `model.backend: open_clip`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.embed import hub, precision, weights
from imgsearch.embed.folder import (
    PROBE_TEXTS,
    ModelFolder,
    Unsupported,
    cache_folder,
    from_hub,
    from_manifest,
    hub_model_id,
    probe_images,
    read_manifest,
)
from imgsearch.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from imgsearch.config import Settings
    from imgsearch.embed import Embedder
    from imgsearch.embed.openclip import OpenClipEmbedder
    from imgsearch.embed.towers import TowerEmbedder

TORCH_INSTALL = "pip install 'imgsearch[torch]'"
CPU_RUNTIMES = {"openvino": "openvino", "onnx": "onnxruntime"}  # model.backend -> runtime


class Fallback(Exception):
    """`auto` serves this model with PyTorch; `embedder` is the one already loaded, if any."""

    def __init__(self, reason: str, embedder: OpenClipEmbedder | None = None):
        super().__init__(reason)
        self.embedder = embedder


def load(settings: Settings) -> Embedder:
    """The embedder model.backend, model.device and model.precision ask for."""
    backend = settings.model.backend
    _check(settings)
    runtime = cpu_runtime(settings)
    if runtime is None:
        return torch_embedder(settings)
    try:
        folder, repair = model_folder(settings, fallback=backend == "auto")
    except Fallback as why:
        return why.embedder or torch_embedder(settings)
    except Unsupported as why:
        if backend == "auto":
            return torch_embedder(settings)
        raise ConfigError(
            f"model.backend: {backend} cannot serve {configured_model_id(settings)}: {why}; "
            "use model.backend=auto or open_clip"
        ) from None
    return serve(settings, runtime, folder, repair)


def cpu_runtime(settings: Settings) -> str | None:
    """The torch-free runtime that serves the configured model, or None when PyTorch does."""
    ms = settings.model
    if ms.backend in CPU_RUNTIMES:
        return CPU_RUNTIMES[ms.backend]
    if ms.backend == "open_clip" or ms.precision == "fp16" or _wants_cuda(ms.device):
        return None
    if ms.precision == "int8" or not _installed("openvino"):
        return "onnxruntime" if _installed("onnxruntime") or ms.precision == "int8" else None
    return "openvino"


def plan(settings: Settings) -> tuple[str, precision.Decision | None]:
    """The runtime that will serve the configured model here and its precision, without loading anything
    (the precision is None while a probe is still to decide it)."""
    runtime = cpu_runtime(settings) or ("pytorch-cuda" if _wants_cuda(settings.model.device) else "pytorch-cpu")
    try:
        return runtime, precision.planned(settings, runtime, configured_model_id(settings))
    except WeightsError:  # no checkpoint to identify: nothing is known yet
        return runtime, None


def _check(settings: Settings) -> None:
    ms = settings.model
    if ms.backend in CPU_RUNTIMES:
        runtime = CPU_RUNTIMES[ms.backend]
        if ms.device != "auto" and not ms.device.startswith("cpu"):
            raise ConfigError(
                f"model.backend: {ms.backend} runs on the CPU only; with model.device={ms.device} use open_clip or auto"
            )
        if ms.precision != "auto":
            precision.check_forced(ms.precision, runtime)
        if not _installed(runtime):
            extra = "pip install openvino" if runtime == "openvino" else "pip install 'imgsearch[onnxruntime]'"
            raise ConfigError(f"model.backend: {ms.backend} needs {runtime} ({extra}), or use auto")
    elif ms.backend == "open_clip" and ms.precision == "int8":
        precision.check_forced("int8", "pytorch")
    if ms.precision == "int8" and not _installed("onnxruntime"):
        raise ConfigError("model.precision: int8 runs on ONNX Runtime: pip install 'imgsearch[onnxruntime]'")


def serve(settings: Settings, runtime: str, folder: ModelFolder, repair: Callable[[], None] | None) -> TowerEmbedder:
    """The folder's towers on `runtime`, at the precision chosen for this CPU (probed on first use)."""
    made: dict[str, TowerEmbedder] = {}

    def make(chosen: str) -> TowerEmbedder:
        if chosen not in made:
            made[chosen] = _embedder(settings, runtime, folder, chosen, repair)
        return made[chosen]

    def probe() -> float:
        images, texts = probe_images(), list(PROBE_TEXTS)
        full, lower = make("fp32"), make("bf16")
        return min(
            precision.min_cosine(full.embed_images(images), lower.embed_images(images)),
            precision.min_cosine(full.embed_texts(texts), lower.embed_texts(texts)),
        )

    return make(precision.decide(settings, runtime, folder.model_id, probe).precision)


def _embedder(
    settings: Settings, runtime: str, folder: ModelFolder, chosen: str, repair: Callable[[], None] | None
) -> TowerEmbedder:
    if runtime == "openvino":
        from imgsearch.embed.openvino import OpenVinoEmbedder

        return OpenVinoEmbedder(folder, chosen, repair, settings.model_cache_dir / "openvino")
    from imgsearch.embed.onnx import OnnxEmbedder

    return OnnxEmbedder(folder, chosen, repair, settings.model_cache_dir / "int8" / folder.key)


def model_folder(settings: Settings, fallback: bool) -> tuple[ModelFolder, Callable[[], None] | None]:
    """The ONNX files of the configured model (see the module docstring for the order), and how to make them
    again when they are ours and torch is at hand (None otherwise)."""
    ms = settings.model
    pretrained = ms.pretrained.strip()
    given = Path(pretrained).expanduser() if pretrained else None
    if given is not None and given.is_dir():
        return given_folder(ms.name, given), None
    model_id = _model_id(settings)
    folder = cache_folder(settings, model_id)
    manifest = read_manifest(folder, model_id)
    is_tag = not weights.is_path(pretrained)
    if manifest is None and is_tag and (fetched := hub.cached(settings, ms.name, pretrained)) is not None:
        return from_hub(fetched, model_id), None
    if manifest is None and torch_installed():
        manifest = _export(settings, folder, fallback)
    if manifest is not None:
        return from_manifest(folder, manifest), _repair(settings, folder)
    if is_tag:
        return from_hub(hub.fetch(settings, ms.name, pretrained), model_id), None
    raise WeightsError(
        f"model.pretrained: {pretrained} is a PyTorch checkpoint; turning it into ONNX needs PyTorch once "
        f"({TORCH_INSTALL}), or {hub.FOLDER_HINT}"
    )


def given_folder(name: str, path: Path) -> ModelFolder:
    """model.pretrained names a folder: a copy of our export (it knows its model id), or the hub layout."""
    manifest = read_manifest(path, None)
    if manifest is not None:
        return from_manifest(path, manifest)
    from imgsearch.embed.folder import is_hub_folder

    if not is_hub_folder(path):
        raise WeightsError(
            f"model.pretrained: {path} is a folder but not one of ONNX exports (no manifest.json or visual/model.onnx)"
        )
    return from_hub(path, hub_model_id(name, path))


def _export(settings: Settings, folder: Path, fallback: bool) -> dict[str, object]:
    from imgsearch.embed.export import export

    embedder = torch_embedder_for_export(settings)
    try:
        manifest = export(embedder, folder)
    except WeightsError as exc:  # the cache cannot be written: auto carries on with the model it has
        if fallback:
            raise Fallback(str(exc), embedder) from None
        raise
    if manifest["status"] != "ok" and fallback:
        raise Fallback(str(manifest["reason"]), embedder)
    return manifest


def _repair(settings: Settings, folder: Path) -> Callable[[], None] | None:
    if not torch_installed():
        return None

    def repair() -> None:
        from imgsearch.embed.export import export

        export(torch_embedder_for_export(settings), folder)

    return repair


def configured_model_id(settings: Settings) -> str:
    """The id the configured model will report, computed without loading it (a folder's is read from it)."""
    ms = settings.model
    given = Path(ms.pretrained.strip()).expanduser() if ms.pretrained.strip() else None
    if given is not None and given.is_dir():
        manifest = read_manifest(given, None)
        return str(manifest["model_id"]) if manifest is not None else hub_model_id(ms.name, given)
    return weights.model_id(ms)


def _model_id(settings: Settings) -> str:
    """The configured model's id; a missing or empty checkpoint path fails as the open_clip backend says it."""
    ms = settings.model
    if not ms.pretrained.strip() or weights.is_path(ms.pretrained):
        weights.resolve(ms, settings.model_cache_dir)  # a file is only checked for, a tag never fetched here
    return weights.model_id(ms)


# PyTorch


def torch_installed() -> bool:
    return _installed("torch") and _installed("open_clip")


def torch_embedder(settings: Settings, precision_override: str | None = None) -> OpenClipEmbedder:
    """The open_clip (PyTorch) embedder of the configured model, or one line saying which extra to install."""
    if not torch_installed():
        ms = settings.model
        if _wants_cuda(ms.device) or ms.precision == "fp16":
            raise ConfigError("model.device: CUDA runs the model with PyTorch: pip install 'imgsearch[gpu]'")
        raise ConfigError(f"model.backend: open_clip needs PyTorch ({TORCH_INSTALL}), or use model.backend=auto")
    from imgsearch.embed.openclip import OpenClipEmbedder

    return OpenClipEmbedder.from_settings(settings, precision_override)


def torch_embedder_for_export(settings: Settings) -> OpenClipEmbedder:
    """The model as it is exported: fp32 on the CPU, whatever model.device and model.precision say."""
    model = dataclasses.replace(settings.model, device="cpu", precision="fp32")
    return torch_embedder(dataclasses.replace(settings, model=model), "fp32")


def _installed(module: str) -> bool:
    try:
        return module in sys.modules or importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a finder that refuses the name: not usable
        return False


def _wants_cuda(device: str) -> bool:
    """Whether PyTorch would run on CUDA. torch is only imported to ask where an NVIDIA driver is present."""
    if device == "cpu":
        return False
    if device != "auto":
        return True  # cuda, cuda:N, or a device name open_clip's loader will judge
    if "torch" not in sys.modules and not _nvidia_driver():
        return False
    if not torch_installed():
        return False
    import torch

    return bool(torch.cuda.is_available())


def _nvidia_driver() -> bool:
    return (
        Path("/proc/driver/nvidia/version").exists()
        or Path("/dev/dxg").exists()  # WSL
        or shutil.which("nvidia-smi") is not None
    )

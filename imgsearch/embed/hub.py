"""Ready ONNX exports of open_clip models, fetched from the Hugging Face hub: how a user without torch gets a model.

Immich publishes the open_clip models it supports, exported to ONNX, as `immich-app/<name>__<tag>` (its
machine-learning service reads the same files): `config.json`, `visual/` and `textual/` (the layout is read
by embed/folder.py). The repository is fetched once, with the hub's progress bars, into
`model_cache_dir/hub/<repo>/`, leaving out the ARM NN and RKNN builds in it; a marker written last says the
fetch completed. As with weights (embed/weights.py), the server is probed with a short timeout first, so an
offline machine gets its one-line answer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.embed.folder import HUB_FILES
from imgsearch.errors import WeightsError

if TYPE_CHECKING:
    from imgsearch.config import Settings

ORG = "immich-app"
DONE = ".imgsearch-complete"
WANTED = ["config.json", "visual/*", "textual/*"]
UNWANTED = ["*.armnn", "*.rknn"]
# Immich's open_clip models whose tokenizer is CLIP's BPE (its SigLIP, NLLB and XLM-Roberta ones use others).
# Its names write some tags with hyphens (laion2b-s34b-b79k) where open_clip writes underscores.
MODELS = (
    "RN50__openai", "RN50__yfcc15m", "RN50__cc12m", "RN101__openai", "RN101__yfcc15m", "RN50x4__openai",
    "RN50x16__openai", "RN50x64__openai", "ViT-B-32__openai", "ViT-B-32__laion2b-s34b-b79k", "ViT-B-32__laion2b_e16",
    "ViT-B-32__laion400m_e31", "ViT-B-32__laion400m_e32", "ViT-B-16__openai", "ViT-B-16__laion400m_e31",
    "ViT-B-16__laion400m_e32", "ViT-B-16-plus-240__laion400m_e31", "ViT-B-16-plus-240__laion400m_e32",
    "ViT-L-14__openai", "ViT-L-14__laion400m_e31", "ViT-L-14__laion400m_e32", "ViT-L-14__laion2b-s32b-b82k",
    "ViT-L-14-336__openai", "ViT-L-14-quickgelu__dfn2b", "ViT-H-14__laion2b-s32b-b79k", "ViT-H-14-quickgelu__dfn5b",
    "ViT-H-14-378-quickgelu__dfn5b", "ViT-g-14__laion2b-s12b-b42k",
)  # fmt: skip
TORCH_HINT = "pip install 'imgsearch[torch]' to export it yourself"
FOLDER_HINT = "set model.pretrained to a local folder of ONNX exports (visual/, textual/, config.json)"


def repo_for(name: str, tag: str) -> str | None:
    """The hub repository holding the ONNX export of open_clip's (name, tag), if one is published."""
    for entry in MODELS:
        model, published = entry.split("__")
        if model == name and _same_tag(published, tag):
            return f"{ORG}/{entry}"
    return None


def _same_tag(a: str, b: str) -> bool:
    return a.replace("_", "-").lower() == b.replace("_", "-").lower()


def local_folder(settings: Settings, repo: str) -> Path:
    return settings.model_cache_dir / "hub" / repo.replace("/", "__")


def cached(settings: Settings, name: str, tag: str) -> Path | None:
    """The fetched export of (name, tag), when a fetch of it completed."""
    repo = repo_for(name, tag)
    if repo is None:
        return None
    folder = local_folder(settings, repo)
    return folder if (folder / DONE).is_file() and all((folder / f).is_file() for f in HUB_FILES) else None


def fetch(settings: Settings, name: str, tag: str) -> Path:
    """Download the published export of (name, tag) into the model cache, or say in one line why it cannot be had."""
    from imgsearch.embed.weights import unreachable

    repo = repo_for(name, tag)
    if repo is None:
        raise WeightsError(
            f"model.pretrained: no ready ONNX export of {name}:{tag} is published; {TORCH_HINT}, or {FOLDER_HINT}"
        )
    endpoint = _endpoint()
    reason = unreachable(endpoint, settings.model.download_timeout)
    if reason:
        raise WeightsError(f"model.pretrained: cannot download {repo} ({reason}); {FOLDER_HINT}")
    folder = local_folder(settings, repo)
    try:
        from huggingface_hub import snapshot_download

        folder.mkdir(parents=True, exist_ok=True)
        snapshot_download(repo_id=repo, local_dir=str(folder), allow_patterns=WANTED, ignore_patterns=UNWANTED)
        (folder / DONE).write_text(repo + "\n", encoding="utf-8")
    except Exception as exc:  # any failure of the transfer itself ends in the same advice
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise WeightsError(f"model.pretrained: downloading {repo} failed ({first}); {FOLDER_HINT}") from None
    return folder


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def published() -> dict[str, list[str]]:
    """Model name -> the tags the hub has ready ONNX exports of, in open_clip's spelling where it differs."""
    out: dict[str, list[str]] = {}
    for entry in MODELS:
        name, tag = entry.split("__")
        out.setdefault(name, []).append(tag.replace("-", "_") if tag.count("-") >= 2 else tag)
    return out

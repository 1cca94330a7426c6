"""Where model weights come from: a local checkpoint file, or a pretrained tag fetched and cached once.

open_clip itself, asked for a tag with no network, retries for most of a minute and then raises a
long traceback; and with the weights already cached it still asks the hub first. So a tag is
resolved here: the cache is looked at first, then the server is probed with a short timeout, and
only then is the file downloaded (with open_clip's own progress bar). Every failure is one line
that names the setting to change.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from imgsearch.config import ModelSettings
from imgsearch.errors import ConfigError, WeightsError

CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz"}
LOCAL_HINT = (
    "set model.pretrained to a local checkpoint file (e.g. IMGSEARCH_MODEL__PRETRAINED=/path/to/model.safetensors)"
)


@dataclass(frozen=True)
class ResolvedWeights:
    """A checkpoint on local disk, with the preprocessing its pretrained tag prescribes (if any)."""

    path: str
    preprocess: dict[str, Any] = field(default_factory=dict)
    quick_gelu: bool = False


def is_path(pretrained: str) -> bool:
    p = Path(pretrained).expanduser()
    return "/" in pretrained or pretrained.startswith("~") or p.suffix.lower() in CHECKPOINT_SUFFIXES or p.exists()


def model_id(model: ModelSettings) -> str:
    """A stable id for the configured weights, computed without loading them.

    A file is identified by its content (size plus hashes of its first and last MiB), so moving a
    checkpoint does not invalidate an index but swapping one does.
    """
    if is_path(model.pretrained):
        return f"{model.name}:file-{fingerprint(Path(model.pretrained).expanduser())}"
    return f"{model.name}:{model.pretrained}"


_FINGERPRINTS: dict[tuple[str, int, int, int], str] = {}


def fingerprint(path: Path) -> str:
    """The checkpoint's identity, hashed once per file version: a server checks it on every query."""
    try:
        st = path.stat()
    except OSError as exc:
        raise WeightsError(f"model.pretrained: cannot read checkpoint {path}: {exc.strerror}") from None
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _fingerprint(path)
    return _FINGERPRINTS[key]


def _fingerprint(path: Path) -> str:
    try:
        size = path.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with path.open("rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            digest.update(f.read(1 << 20))
    except OSError as exc:
        raise WeightsError(f"model.pretrained: cannot read checkpoint {path}: {exc.strerror}") from None
    return digest.hexdigest()[:16]


def register_architecture(model: ModelSettings) -> None:
    """Make model.name known to open_clip: built in, or from model.config_file."""
    import open_clip

    if model.config_file:
        path = Path(model.config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.config_file: no such file: {path}")
        if path.stem != model.name:
            raise ConfigError(f"model.config_file: the file must be named {model.name}.json to define {model.name}")
        open_clip.add_model_config(path)
    if model.name not in open_clip.list_models():
        raise ConfigError(f"model.name: unknown model '{model.name}' (`imgsearch models` lists them)")


def resolve(model: ModelSettings, cache_dir: Path) -> ResolvedWeights:
    """The local checkpoint for the configured weights, downloading a tag's file if needed."""
    pretrained = model.pretrained.strip()
    if not pretrained:
        raise ConfigError(f"model.pretrained is empty: {LOCAL_HINT}, or to a pretrained tag")
    if is_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.pretrained: no checkpoint file at {path}")
        return ResolvedWeights(str(path))
    return _resolve_tag(model.name, pretrained, cache_dir, model.download_timeout)


def _resolve_tag(name: str, tag: str, cache_dir: Path, timeout: float) -> ResolvedWeights:
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = ", ".join(oc_pretrained.list_pretrained_tags_by_model(name)) or "none"
        raise ConfigError(
            f"model.pretrained: '{tag}' is neither a checkpoint file nor a pretrained tag of {name} (tags: {tags})"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cached(cfg, cache_dir) or _download(cfg, tag, name, cache_dir, timeout)
    preprocess = {
        "image_mean": cfg.get("mean"),
        "image_std": cfg.get("std"),
        "image_interpolation": cfg.get("interpolation"),
        "image_resize_mode": cfg.get("resize_mode"),
    }
    return ResolvedWeights(path, {k: v for k, v in preprocess.items() if v}, bool(cfg.get("quick_gelu")))


def _hf_parts(cfg: dict[str, Any]) -> tuple[str, str]:
    from open_clip.constants import HF_WEIGHTS_NAME

    # open_clip's convention: "org/repo/" means the default file name, "org/repo/file.bin" names one.
    repo_id, filename = os.path.split(cfg["hf_hub"])
    return repo_id, filename or HF_WEIGHTS_NAME


def _cached(cfg: dict[str, Any], cache_dir: Path) -> str | None:
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        from open_clip.pretrained import _get_safe_alternatives

        repo_id, filename = _hf_parts(cfg)
        for candidate in [*_get_safe_alternatives(filename), filename]:
            hit = try_to_load_from_cache(repo_id, candidate, cache_dir=str(cache_dir))
            if isinstance(hit, str):
                return hit
        return None
    target = cache_dir / os.path.basename(cfg.get("url", ""))
    return str(target) if cfg.get("url") and target.is_file() else None


def _download(cfg: dict[str, Any], tag: str, name: str, cache_dir: Path, timeout: float) -> str:
    from open_clip import pretrained as oc_pretrained

    url = _server_url(cfg)
    _probe(url, tag, name, timeout)
    try:
        if cfg.get("hf_hub"):
            repo_id, filename = _hf_parts(cfg)
            return str(oc_pretrained.download_pretrained_from_hf(repo_id, filename, cache_dir=str(cache_dir)))
        return str(oc_pretrained.download_pretrained_from_url(cfg["url"], cache_dir=str(cache_dir)))
    except Exception as exc:  # any failure of the transfer itself ends in the same advice
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise WeightsError(f"model.pretrained: downloading '{tag}' for {name} failed ({first}); {LOCAL_HINT}") from None


def _server_url(cfg: dict[str, Any]) -> str:
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    return str(cfg["url"])


def unreachable(url: str, timeout: float) -> str | None:
    """Why the server of url cannot be reached ("host: reason"), or None when a connection opens."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        return f"{parts.hostname}: {exc.strerror or type(exc).__name__}"
    return None


def _probe(url: str, tag: str, name: str, timeout: float) -> None:
    """Fail in seconds, not minutes, when the weights server cannot be reached."""
    reason = unreachable(url, timeout)
    if reason:
        raise WeightsError(f"model.pretrained: cannot download weights '{tag}' for {name} ({reason}); {LOCAL_HINT}")

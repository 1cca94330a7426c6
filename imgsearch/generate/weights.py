"""Where VQGAN weights come from: a local .ckpt (+ .yaml) or a known name, fetched once and cached.

Known names are the taming-transformers releases the VQGAN+CLIP notebooks use. A download is tried
only after a short connection probe (model.download_timeout), so an offline machine learns at once
that it has no VQGAN and generation falls back to the weight-free generator.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgsearch.embed.weights import unreachable
from imgsearch.errors import WeightsError
from imgsearch.types import Progress

_HEIBOX = "https://heibox.uni-heidelberg.de/d/{}/files/?p=%2F{}&dl=1"
KNOWN: dict[str, str] = {  # name -> the share of the taming-transformers release
    "vqgan_imagenet_f16_16384": "a7530b09fed84f80a887",
    "vqgan_imagenet_f16_1024": "8088892a516d4e3baf92",
}
KEY_HINT = "set generate.vqgan_checkpoint to a local .ckpt (with its .yaml beside it or in generate.vqgan_config)"


@dataclass(frozen=True)
class VQGANFiles:
    checkpoint: Path
    config: Path
    name: str  # for provenance: the known name or the checkpoint's file name


def resolve(
    checkpoint: str,
    config: str,
    cache_dir: Path,
    timeout: float,
    on_progress: Callable[[Progress], None] = lambda p: None,
) -> VQGANFiles:
    """The checkpoint and config files for the settings; raises WeightsError naming the key to set."""
    if checkpoint in KNOWN:
        folder = cache_dir / "vqgan" / checkpoint
        files = VQGANFiles(folder / "last.ckpt", folder / "model.yaml", checkpoint)
        for path, remote in ((files.config, "configs%2Fmodel.yaml"), (files.checkpoint, "ckpts%2Flast.ckpt")):
            if not path.is_file():
                _download(_HEIBOX.format(KNOWN[checkpoint], remote), path, checkpoint, timeout, on_progress)
        return files
    path = Path(checkpoint).expanduser()
    if not checkpoint or not path.is_file():
        known = ", ".join(KNOWN)
        raise WeightsError(f"generate.vqgan_checkpoint: no such file or known name: {checkpoint!r} (known: {known})")
    yaml_path = Path(config).expanduser() if config else path.with_suffix(".yaml")
    if not yaml_path.is_file():
        raise WeightsError(f"generate.vqgan_config: no config for {path.name} (looked for {yaml_path})")
    return VQGANFiles(path, yaml_path, path.name)


def _download(url: str, dest: Path, name: str, timeout: float, on_progress: Callable[[Progress], None]) -> None:
    reason = unreachable(url, timeout)
    if reason:
        raise WeightsError(f"generate.vqgan_checkpoint: cannot download {name} ({reason}); {KEY_HINT}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                on_progress(Progress("download", done, total))
        os.replace(tmp, dest)
    except OSError as exc:
        raise WeightsError(f"generate.vqgan_checkpoint: downloading {name} failed ({exc}); {KEY_HINT}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

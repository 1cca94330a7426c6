"""Our own ONNX export of an open_clip model (needs the `torch` extra): made once per model, then served without torch.

The model is loaded with open_clip (so weights resolution, errors and local checkpoint files behave as always),
`encode_image` and `encode_text` are exported to ONNX with a dynamic batch axis, and the export is checked against
PyTorch on a probe (preprocessing, then both towers at fp32). The folder is built under a temporary name and
renamed into place, with a manifest (dimensions, logit scale, preprocessing, context length, versions) and the
BPE merges file CLIP's tokenizer reads. A model ONNX cannot serve (a tokenizer other than CLIP's BPE, an export
that fails or disagrees with PyTorch) is recorded in the manifest too, so it is not tried again.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.embed.bpe import MERGES_FILE, ClipTokenizer
from imgsearch.embed.folder import FORMAT, MANIFEST, PROBE_TEXTS, TOWERS, from_manifest, probe_image
from imgsearch.embed.precision import min_cosine
from imgsearch.errors import WeightsError

if TYPE_CHECKING:
    from imgsearch.embed.openclip import OpenClipEmbedder

OUTPUT = "tower_output"  # named unlike any node the exporters make (a clash makes an invalid model)
PARITY = 0.999  # least cosine between the exported and the PyTorch embeddings on the probe
VERSIONED = ("torch", "open_clip_torch", "onnx", "onnxscript", "openvino", "onnxruntime")


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
    problem = tokenizer_problem(embedder)
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


def tokenizer_problem(embedder: OpenClipEmbedder) -> str | None:
    """Why our torch-free tokenizer cannot stand in for the model's own, or None when it gives the same ids."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = embedder.tokenizer
    if not isinstance(tokenizer, SimpleTokenizer) or not tokenizer.context_length:
        return f"its tokenizer ({type(tokenizer).__name__}) is not CLIP's BPE, which imgsearch implements"
    ours = ClipTokenizer.from_file(_merges_file(), tokenizer.context_length)
    if not np.array_equal(ours(PROBE_TEXTS), tokenizer(list(PROBE_TEXTS)).numpy()):
        return "its tokenizer is configured unlike CLIP's (other cleaning or vocabulary)"
    return None


def _export_towers(embedder: OpenClipEmbedder, folder: Path, manifest: dict[str, Any]) -> str:
    """Both towers to ONNX: torch.export (dynamo) first, the TorchScript exporter if that fails."""
    import torch

    height, width = manifest["preprocess"]["size"]
    trimmed = trimmable_text(embedder.model)
    examples = {
        "image": torch.zeros(2, 3, height, width),
        "text": embedder.tokenizer(["a photo", "of a cat"])[:, : 5 if trimmed else None],
    }
    errors = []
    for dynamo in (True, False):
        try:
            for tower, example in examples.items():
                _export_tower(embedder.model, tower, example, folder / TOWERS[tower], dynamo, trimmed)
            manifest["text_any_length"] = trimmed
            return "dynamo" if dynamo else "torchscript"
        except OSError:
            raise
        except Exception as exc:  # try the other exporter; report the first if neither works
            errors.append(exc)
            _clear_towers(folder)
    raise errors[0]


def trimmable_text(model: Any) -> bool:
    """Whether the text tower gives the same embedding for tokens cut after the end token: a causal mask (no
    position sees later ones) and pooling at the end token. Then a prompt of 8 tokens runs as 8, not 77."""
    import torch
    from open_clip.model import CLIP

    mask = getattr(model, "attn_mask", None)
    if not isinstance(model, CLIP) or getattr(model, "text_pool_type", None) != "argmax" or mask is None:
        return False
    return bool(torch.equal(torch.isinf(mask), torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)))


def _encode_text_trimmed(model: Any, text: Any) -> Any:
    """open_clip's CLIP.encode_text on tokens of any length up to the context: the positional embedding and the
    causal mask are cut to the length given."""
    import torch
    from open_clip.transformer import text_global_pool

    length = text.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), text, model.text_pool_type)
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _clear_towers(folder: Path) -> None:
    for path in folder.glob("*.onnx*"):
        path.unlink()


def _export_tower(model: Any, tower: str, example: Any, path: Path, dynamo: bool, trimmed: bool) -> None:
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if tower == "image":
                return self.model.encode_image(x)
            return _encode_text_trimmed(self.model, x) if trimmed else self.model.encode_text(x)

    name = "pixels" if tower == "image" else "tokens"
    any_length = tower == "text" and trimmed
    context = int(model.positional_embedding.shape[0]) if any_length else 0
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
                dynamic_shapes=(
                    {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("length", min=2, max=context)}
                    if any_length
                    else {0: torch.export.Dim("batch", min=1)},
                ),
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
                dynamic_axes={name: {0: "batch", 1: "length"} if any_length else {0: "batch"}, OUTPUT: {0: "batch"}},
            )


def _parity_problem(embedder: OpenClipEmbedder, folder: Path, manifest: dict[str, Any]) -> str | None:
    """Whether the exported folder serves what PyTorch does: preprocessing, then both towers at fp32, on a probe.

    The check runs on OpenVINO, the runtime every install has."""
    from imgsearch.embed.openvino import OpenVinoEmbedder

    served = OpenVinoEmbedder(from_manifest(folder, manifest), "fp32")
    image = probe_image()
    ours, theirs = served.prepare(image), embedder.prepare(image)
    if ours.shape != theirs.shape or float(np.abs(ours - theirs).max()) > 1e-3:
        return "its preprocessing could not be reproduced without torch"
    cosines = {
        "image": min_cosine(served.embed_prepared(theirs[None]), embedder.embed_prepared(theirs[None])),
        "text": min_cosine(served.embed_texts(PROBE_TEXTS), embedder.embed_texts(PROBE_TEXTS)),
    }
    manifest["parity"] = cosines
    worst = min(cosines, key=lambda k: cosines[k])
    if cosines[worst] < PARITY:
        return f"the exported {worst} tower disagrees with PyTorch (cosine {cosines[worst]:.4f})"
    return None

"""A tiny open_clip model, trained from scratch in seconds, for tests that need real semantics.

No pretrained weights are available to the test suite, yet some tests must check that search
*means* something: that the query "a red circle" ranks pictures of red circles first. This module
draws synthetic pictures of one coloured shape (4 colours x 3 shapes = 12 classes), trains a very
small CLIP on them and writes the result the way a user would ship a custom model:

* ``<out_dir>/imgsearch-tiny-test.json``: an open_clip model config, and
* ``<out_dir>/imgsearch-tiny-test.safetensors``: the model's ``state_dict()``.

The product loads them like any custom model::

    open_clip.add_model_config(ckpt.config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(ckpt.checkpoint_path))
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)

Training feeds images through the same resize/center-crop/normalize pipeline as open_clip's *val*
preprocess, so embeddings computed by the product match what the model learned. Each training
batch holds every class equally often. Captions are three templates ("a {}", "a photo of a {}",
"a picture of a {}") filled with a class ("red circle"), a colour ("red") or a shape ("circle"); the
contrastive loss runs against all distinct captions with every true (picture, caption) pair a
positive, so "a red circle" finds red circles while "red" finds everything red.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image, ImageDraw
from safetensors.torch import save_file

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MODEL_NAME = "imgsearch-tiny-test"
SHAPE_EXTENT = (0.4, 0.75)  # side of a shape's bounding box, as a fraction of the picture's side

CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
# Captions are a template filled with a concept: a class ("red circle"), a colour or a shape. The
# labelling tests use these templates for prompt ensembling and the single concepts for multi-label tags.
TEMPLATES: tuple[str, ...] = ("a {}", "a photo of a {}", "a picture of a {}")
CONCEPTS: tuple[str, ...] = tuple(f"{c} {s}" for c, s in CLASSES) + tuple(COLORS) + SHAPES

MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 32,
        "patch_size": 4,
        "width": 64,
        "head_width": 32,
        "layers": 2,
        "pool_type": "avg",
    },
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
STEPS = 700
PER_CLASS = 2  # images of each class in one batch (batch size = 12 * PER_CLASS)
POOL_PER_CLASS = 320  # distinct training pictures drawn per class
LR = 2e-3
WARMUP = 15


def caption(color: str, shape: str) -> str:
    """The caption (and zero-shot prompt) of a class, e.g. ``"a red circle"``."""
    return TEMPLATES[0].format(f"{color} {shape}")


def _captions() -> tuple[list[str], torch.Tensor]:
    """Every trained caption, and which classes each is true of: bool [captions, classes]."""
    texts, truth = [], []
    for template in TEMPLATES:
        for concept in CONCEPTS:
            texts.append(template.format(concept))
            truth.append([concept in (f"{c} {s}", c, s) for c, s in CLASSES])
    return texts, torch.tensor(truth)


def draw(color: str, shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    """An RGB picture of one coloured shape, randomly placed and sized, on a light or grey background."""
    image = Image.new("RGB", (size, size), _background(rng))
    extent = rng.uniform(*SHAPE_EXTENT) * size
    x0, y0 = rng.uniform(0, size - extent), rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    pen = ImageDraw.Draw(image)
    fill = COLORS[color]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return _add_noise(image, rng)


def _background(rng: random.Random) -> tuple[int, int, int]:
    """A light or mid grey, faintly tinted."""
    grey = rng.randint(110, 235)
    red, green, blue = (min(255, grey + rng.randint(-12, 12)) for _ in range(3))
    return red, green, blue


def _add_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 6.0, (image.height, image.width, 3))
    pixels = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class TinyCheckpoint:
    """Where a trained tiny model lies: load it with ``open_clip.add_model_config(config_path)``."""

    name: str
    config_path: Path
    checkpoint_path: Path


def train(out_dir: Path, seed: int = 0) -> TinyCheckpoint:
    """Train the tiny model and write its config and checkpoint into ``out_dir``; deterministic per seed."""
    _seed_everything(seed)
    model = open_clip.CLIP(**MODEL_CONFIG)
    # The 49408-row token table dwarfs the rest of the model; only a few dozen captions are ever seen, so fixed
    # random token vectors suffice and leaving them out of the optimizer makes each step ~3x cheaper.
    model.token_embedding.requires_grad_(False)
    preprocess = _val_preprocess(model)
    images, labels = _training_pool(random.Random(seed), preprocess)
    texts, truth = _captions()
    tokens = open_clip.tokenize(texts, MODEL_CONFIG["text_cfg"]["context_length"])
    _fit(model, images, labels, tokens, truth, torch.Generator().manual_seed(seed))
    return _write(model.eval(), Path(out_dir))


def load_or_train(cache_dir: Path, seed: int = 0) -> TinyCheckpoint:
    """Reuse the checkpoint in ``cache_dir`` made by this very source file and seed, else train one."""
    final = Path(cache_dir) / f"{MODEL_NAME}-{_source_key(seed)}"
    ckpt = _checkpoint_in(final)
    if ckpt.config_path.is_file() and ckpt.checkpoint_path.is_file():
        return ckpt
    shutil.rmtree(final, ignore_errors=True)  # a damaged entry (a file deleted by hand)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    train(scratch, seed)
    try:
        os.replace(scratch, final)  # atomic: concurrent test workers never see half a checkpoint
    except OSError:  # another worker got there first: its checkpoint is identical
        shutil.rmtree(scratch, ignore_errors=True)
    return _checkpoint_in(final)


def _source_key(seed: int) -> str:
    source = Path(__file__).read_bytes()
    return hashlib.sha256(source + f"\nseed={seed}".encode()).hexdigest()[:16]


def _checkpoint_in(directory: Path) -> TinyCheckpoint:
    return TinyCheckpoint(
        name=MODEL_NAME,
        config_path=directory / f"{MODEL_NAME}.json",
        checkpoint_path=directory / f"{MODEL_NAME}.safetensors",
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _val_preprocess(model: open_clip.CLIP) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's default val transform at the model's size: what ``create_model_and_transforms`` returns."""
    return image_transform_v2(PreprocessCfg(size=model.visual.image_size), is_train=False)


def _training_pool(
    rng: random.Random, preprocess: Callable[[Image.Image], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``POOL_PER_CLASS`` preprocessed pictures of every class, and their class indices."""
    images, labels = [], []
    for _ in range(POOL_PER_CLASS):
        for label, (color, shape) in enumerate(CLASSES):
            images.append(preprocess(draw(color, shape, rng)))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def _fit(
    model: open_clip.CLIP,
    images: torch.Tensor,
    labels: torch.Tensor,
    tokens: torch.Tensor,
    truth: torch.Tensor,
    generator: torch.Generator,
) -> None:
    by_class = [torch.nonzero(labels == k).squeeze(1) for k in range(len(CLASSES))]
    optimizer = torch.optim.AdamW(_param_groups(model), lr=LR, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine)
    model.train()
    for _ in range(STEPS):
        index = torch.cat([pool[torch.randperm(len(pool), generator=generator)[:PER_CLASS]] for pool in by_class])
        loss = _class_contrastive_loss(model, _random_flip(images[index], generator), labels[index], tokens, truth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))


def _random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror about half the pictures left-right: free extra data, as every shape is symmetric."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters; weight decay on matrices only, as in CLIP training."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    return [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup_cosine(step: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + float(np.cos(np.pi * (step - WARMUP) / max(1, STEPS - WARMUP))))


def _class_contrastive_loss(
    model: open_clip.CLIP, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor, truth: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE against the distinct captions, with every true (picture, caption) pair a positive."""
    image_features = model.encode_image(images, normalize=True)
    text_features = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * image_features @ text_features.T  # (batch, captions)
    positives = truth[:, labels].T.float()  # (batch, captions)
    image_to_text = _soft_cross_entropy(logits, positives)
    used = positives.sum(dim=0) > 0  # captions true of some picture in this batch
    text_to_image = _soft_cross_entropy(logits.T[used], positives.T[used])
    return (image_to_text + text_to_image) / 2


def _soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    targets = positives / positives.sum(dim=1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _write(model: open_clip.CLIP, out_dir: Path) -> TinyCheckpoint:
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpoint_in(out_dir)
    ckpt.config_path.write_text(json.dumps(MODEL_CONFIG, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(ckpt.checkpoint_path))
    return ckpt

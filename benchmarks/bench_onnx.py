#!/usr/bin/env python3
"""The ONNX Runtime backend against PyTorch on the CPU: (a) model-only images/s, (b) prompts/s, (c) a cold
process embedding one text, (d) optionally int8 dynamic quantisation of the image tower: its speed, how far its
embeddings move (cosine to fp32) and whether retrieval still agrees (top-10 overlap with fp32).

    python benchmarks/bench_onnx.py                        # random-init ViT-B-32, batch 32
    python benchmarks/bench_onnx.py --checkpoint /path/model.safetensors --model ViT-B-32 --int8

Weights do not change speed, so a random-init checkpoint is made when none is given. They do change how much
int8 costs in accuracy: judge int8 on real weights (`--checkpoint`), random ones only show the mechanics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_index import SAMPLES, make_checkpoint  # noqa: E402

COLD = """
import json, sys, time
from imgsearch import load_settings
from imgsearch.embed import load_embedder
embedder = load_embedder(load_settings(sys.argv[1], overrides=json.loads(sys.argv[2]), environ={}))
embedder.embed_texts(["a photo of a cat"])
print(json.dumps({"torch": "torch" in sys.modules}))
"""
OBJECTS = ["cat", "dog", "car", "tree", "house", "person", "clock", "cup", "rocket", "horse", "wall", "galaxy"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a close-up of the {}.", "a drawing of a {}."]


def images_per_second(embedder, count: int, batch: int) -> float:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).standard_normal((batch, 3, embedder.input_size, embedder.input_size))
    x = x.astype(np.float32)
    embedder.embed_prepared(x[:2])  # warm-up
    started, done = time.perf_counter(), 0
    while done < count:
        n = min(batch, count - done)
        embedder.embed_prepared(x[:n])
        done += n
    return count / (time.perf_counter() - started)


def prompts_per_second(embedder, count: int, batch: int) -> float:  # type: ignore[no-untyped-def]
    prompts = [TEMPLATES[i % len(TEMPLATES)].format(f"{OBJECTS[i % len(OBJECTS)]} number {i}") for i in range(count)]
    embedder.embed_texts(prompts[:2])
    started = time.perf_counter()
    for i in range(0, count, batch):
        embedder.embed_texts(prompts[i : i + batch])
    return count / (time.perf_counter() - started)


def cold_seconds(home: Path, overrides: dict[str, str], runs: int) -> tuple[float, bool]:
    """Median wall time of a new process that loads the model and embeds one text; whether it imported torch."""
    times, imported = [], False
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", COLD, str(home), json.dumps(overrides)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(time.perf_counter() - started)
        imported = json.loads(done.stdout.strip().splitlines()[-1])["torch"]
    return statistics.median(times), imported


def corpus(count: int) -> list:  # type: ignore[type-arg]
    """Distinct pictures: random crops, flips and turns of the samples."""
    from PIL import Image

    rng = np.random.default_rng(1)
    sources = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    out = []
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        side = int(min(w, h) * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = image.crop((x, y, x + side, y + side)).rotate(float(rng.uniform(-20, 20)))
        out.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else crop)
    return out


def top_k_agreement(queries: np.ndarray, a: np.ndarray, b: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Mean and least overlap of the top-k of each query over corpus a and corpus b."""
    top_a = np.argsort(-(queries @ a.T), axis=1)[:, :k]
    top_b = np.argsort(-(queries @ b.T), axis=1)[:, :k]
    overlaps = [len(set(x) & set(y)) / k for x, y in zip(top_a, top_b, strict=True)]
    return float(np.mean(overlaps)), float(np.min(overlaps))


def int8_report(embedder, count: int, batch: int, images: int) -> None:  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from imgsearch.embed.onnx import TOWERS, OnnxEmbedder, open_session

    target = embedder.folder.parent / f"{embedder.folder.name}-int8-bench"
    target.mkdir(exist_ok=True)
    path = target / TOWERS["image"]
    started = time.perf_counter()
    quantize_dynamic(embedder.folder / TOWERS["image"], path, weight_type=QuantType.QInt8, per_channel=True)
    print(f"int8: quantised the image tower in {time.perf_counter() - started:.1f} s ({path.stat().st_size >> 20} MiB)")
    int8 = OnnxEmbedder(embedder.folder, embedder.manifest)
    int8._sessions["image"] = open_session(path)
    print(f"int8 model only: {images_per_second(int8, count, batch):6.1f} img/s")
    pictures = corpus(images)
    prepared = np.stack([embedder.prepare(p) for p in pictures])
    fp32 = np.concatenate([embedder.embed_prepared(prepared[i : i + batch]) for i in range(0, len(prepared), batch)])
    q8 = np.concatenate([int8.embed_prepared(prepared[i : i + batch]) for i in range(0, len(prepared), batch)])
    cos = (fp32 * q8).sum(axis=1)
    spread = fp32 @ fp32.T
    off = spread[~np.eye(len(fp32), dtype=bool)]
    print(f"fp32 corpus: pairwise cosine mean {off.mean():.3f} (near 1: rankings hang on tiny margins)")
    print(f"int8 vs fp32 image embeddings ({len(pictures)} pictures): cosine min {cos.min():.4f} mean {cos.mean():.4f}")
    texts = embedder.embed_texts([t.format(o) for t in TEMPLATES for o in OBJECTS])
    mean, least = top_k_agreement(texts, fp32, q8)
    print(f"int8 top-10 agreement, {len(texts)} text queries: mean {mean:.3f} min {least:.3f}")
    mean, least = top_k_agreement(fp32, fp32, q8)
    print(f"int8 top-10 agreement, {len(fp32)} image queries: mean {mean:.3f} min {least:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgsearch-bench-onnx"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=96, help="images per speed measurement")
    parser.add_argument("--texts", type=int, default=256, help="prompts per speed measurement")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--int8", action="store_true", help="also measure int8 dynamic quantisation")
    parser.add_argument("--int8-corpus", type=int, default=240, help="pictures for the int8 agreement check")
    args = parser.parse_args()

    import onnxruntime

    from imgsearch import load_settings
    from imgsearch.embed import load_embedder, load_torch_embedder

    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or make_checkpoint(args.model, args.work / f"{args.model}-random.safetensors")
    home = args.work / "home"
    overrides = {"model.name": args.model, "model.pretrained": str(checkpoint), "model.device": "cpu"}
    started = time.perf_counter()
    ox = load_embedder(load_settings(home, overrides={**overrides, "model.backend": "onnx"}, environ={}))
    print(
        f"onnx load (exports on first use): {time.perf_counter() - started:.1f} s  exporter {ox.manifest['exporter']}"
    )
    pt = load_torch_embedder(load_settings(home, overrides=overrides, environ={}))
    import torch

    print(
        f"model {args.model}  batch {args.batch}  torch {torch.__version__} ({torch.get_num_threads()} threads)  "
        f"onnxruntime {onnxruntime.__version__}"
    )
    for name, embedder in (("torch fp32", pt), ("onnx fp32", ox)):
        print(f"{name:10s} model only: {images_per_second(embedder, args.images, args.batch):6.1f} img/s")
    for name, embedder in (("torch fp32", pt), ("onnx fp32", ox)):
        print(f"{name:10s} text: {prompts_per_second(embedder, args.texts, args.batch):6.1f} prompts/s")
    for backend in ("onnx", "open_clip"):
        seconds, imported = cold_seconds(home, {**overrides, "model.backend": backend}, args.cold_runs)
        runs = args.cold_runs
        print(f"cold process, one text, backend {backend:9s}: {seconds:5.2f} s (median of {runs})  torch {imported}")
    if args.int8:
        int8_report(ox, args.images, args.batch, args.int8_corpus)


if __name__ == "__main__":
    main()

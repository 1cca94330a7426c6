#!/usr/bin/env python3
"""Indexing throughput: (a) the model alone on preprocessed tensors, (b) the whole pipeline on a folder of
camera-sized JPEGs (read, hash, decode, preprocess, embed, write), same model and batch size; and b/a.

    python benchmarks/bench_index.py                       # random-init ViT-B-32, 48 12-MP JPEGs made from samples/
    python benchmarks/bench_index.py --folder ~/Pictures --checkpoint /path/model.safetensors --model ViT-B-32

Weights do not change speed, so a random-init checkpoint of the real architecture is made when none is given.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def make_folder(folder: Path, count: int, size: tuple[int, int]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in SAMPLES.iterdir() if p.suffix == ".jpg")
    for i in range(count):
        path = folder / f"photo-{i:04d}.jpg"
        if not path.exists():
            image = Image.open(sources[i % len(sources)]).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            image.rotate(0.25 * i, expand=False).save(path, quality=90)  # distinct content: no file is a copy
    return folder


def make_checkpoint(model: str, path: Path) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    if not path.exists():
        torch.manual_seed(0)
        state = open_clip.create_model(model).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def model_only(embedder, count: int, batch: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(images/s, CPU-ms per image: all threads of the process)."""
    x = np.random.default_rng(0).standard_normal((batch, 3, embedder.input_size, embedder.input_size))
    x = x.astype(np.float32)
    embedder.embed_prepared(x[:2])  # warm-up
    started, cpu = time.perf_counter(), cpu_seconds()
    done = 0
    while done < count:
        n = min(batch, count - done)
        embedder.embed_prepared(x[:n])
        done += n
    return count / (time.perf_counter() - started), 1000 * (cpu_seconds() - cpu) / count


def reader_only(embedder, settings, folder: Path) -> float:  # type: ignore[no-untyped-def]
    """CPU-ms per image of the reader stage alone (read, hash, decode, preprocess), on one thread."""
    from imgsearch.indexer.pipeline import LazyEmbedder, Reader
    from imgsearch.indexer.scan import FileEntry

    reader = Reader(LazyEmbedder(lambda: embedder), settings.index, lambda digest: [])
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    reader.read((FileEntry(str(paths[0]), 0, 0), None))  # warm-up
    started = time.thread_time()
    for path in paths:
        reader.read((FileEntry(str(path), 0, 0), None))
    return 1000 * (time.thread_time() - started) / len(paths)


def hash_only(embedder, settings, folder: Path) -> float:  # type: ignore[no-untyped-def]
    """CPU-ms per image of the duplicates' pixel hash alone, on the pictures the reader decodes for the model."""
    from imgsearch import dupes, images

    side = embedder.input_size if settings.index.jpeg_draft else 0
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    pictures = [images.decode(p.read_bytes(), settings.index.max_pixels, side) for p in paths]
    dupes.picture_hash(pictures[0])  # warm-up
    started = time.thread_time()
    for picture in pictures:
        dupes.picture_hash(picture)
    return 1000 * (time.thread_time() - started) / len(pictures)


def pipeline(embedder, settings, folder: Path, pixel_hash: bool = True) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """images/s of a whole `index` run into a fresh home; pixel_hash False: without the duplicates' pixel hash
    (imgsearch.dupes), to see what it costs."""
    import dataclasses

    import imgsearch.indexer.pipeline
    import imgsearch.store.repository  # noqa: F401  (import time is start-up, not throughput)
    from imgsearch import Library, dupes

    real = dupes.picture_hash
    with tempfile.TemporaryDirectory() as home:
        if not pixel_hash:
            dupes.picture_hash = lambda image: b""  # type: ignore[assignment]  # an empty hash: nothing to backfill
        try:
            with Library(dataclasses.replace(settings, home=Path(home)), embedder=embedder) as lib:
                started = time.perf_counter()
                report = lib.index([folder])
                seconds = time.perf_counter() - started
        finally:
            dupes.picture_hash = real  # type: ignore[assignment]
    return report.embedded / seconds, report.embedded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--checkpoint", type=Path, help="default: a random-init checkpoint made in the work folder")
    ap.add_argument("--folder", type=Path, help="default: COUNT synthetic camera-sized JPEGs made from samples/")
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--size", default="4000x3000", help="pixel size of the generated JPEGs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--backend", default="auto", help="model.backend (auto, openvino, onnx, open_clip)")
    ap.add_argument("--precision", default="auto", help="model.precision (auto, fp32, bf16, int8)")
    ap.add_argument("--repeats", type=int, default=5, help="runs with and without the pixel hash, alternated")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-bench")
    args = ap.parse_args()

    from imgsearch import load_settings
    from imgsearch.embed import load_embedder

    args.work.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    folder = args.folder or make_folder(args.work / f"unique-jpegs-{args.size}", args.count, (width, height))
    checkpoint = args.checkpoint or make_checkpoint(args.model, args.work / f"{args.model}-randinit.safetensors")
    overrides = {
        "model.name": args.model,
        "model.pretrained": str(checkpoint),
        "index.batch_size": str(args.batch),
        "index.workers": str(args.workers),
        "model.backend": args.backend,
        "model.precision": args.precision,
    }
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home, overrides=overrides, environ={})
        embedder = load_embedder(settings)
        files = sum(1 for p in folder.rglob("*") if p.is_file())
        a, model_ms = model_only(embedder, min(files, args.count) if not args.folder else files, args.batch)
        reader_ms = reader_only(embedder, settings, folder)
        hash_ms = hash_only(embedder, settings, folder)
        pipeline(embedder, settings, folder)  # warm: the file cache, the runtime's first batches
        runs: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):  # alternated, so that a slow minute of the machine hits both
            for hashed in (False, True):
                rate, n = pipeline(embedder, settings, folder, hashed)
                runs[hashed].append(rate)
        b, unhashed = max(runs[True]), max(runs[False])
        paired = sorted(1 - h / u for h, u in zip(runs[True], runs[False], strict=True))
    from imgsearch.embed.cpu import cpu_info

    cores = len(os.sched_getaffinity(0))
    print(f"cpu: {cpu_info().describe()}")
    print(f"model {args.model}  batch {args.batch}  cores {cores}  runtime: {embedder.describe()}")
    print(f"folder {folder}  images {n}")
    print(f"(a) model only       {a:7.2f} images/s  ({model_ms:.1f} CPU-ms an image)")
    print(f"(b) whole pipeline   {b:7.2f} images/s  (best of {args.repeats})")
    print(f"ratio b/a            {b / a:7.3f}")
    print(f"(c) without the pixel hash of `dupes`  {unhashed:7.2f} images/s: the hash costs {1 - b / unhashed:.1%}")
    each = ", ".join(f"{c:.1%}" for c in paired)
    print(f"    paired runs, the hash's cost: median {paired[len(paired) // 2]:.1%} (each: {each})")
    if str(embedder.device) == "cpu":
        # Model and reader share the cores: with every core busy all the time, an image costs both CPU times;
        # and the pipeline is never faster than the model alone (when the model leaves cores to the reader).
        bound = min(a, 1000 * cores / (model_ms + reader_ms))
        print(f"reader stage         {reader_ms:7.1f} CPU-ms an image (read, hash, decode, preprocess; one thread)")
        share = hash_ms / (model_ms + reader_ms)
        print(f"pixel hash           {hash_ms:7.2f} CPU-ms an image (in the reader stage): {share:.1%} of the work")
        print(f"bound on these cores {bound:7.2f} images/s = ratio {bound / a:.3f} (model and reader CPU-ms summed)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Every CPU runtime and precision imgsearch can use, side by side on this machine, in one run.

For each of OpenVINO fp32 / bf16, ONNX Runtime fp32 / int8 and PyTorch fp32 / bf16 (those installed, bf16 only
where the CPU has it): the image tower's images/s alone (batch 32), prompts/s, one prompt's latency (what a warm
query pays), how far its embeddings are from PyTorch fp32 (least cosine over a corpus of pictures and prompts),
and whether retrieval agrees with fp32 (top-10 overlap). Speeds are also given as a ratio to ONNX Runtime fp32
(what `index` used before this runtime choice) measured in the same run. Then what `auto` chooses here, and a cold
process embedding one prompt on each runtime.

    python benchmarks/bench_runtimes.py                         # random-init ViT-B-32, batch 32
    python benchmarks/bench_runtimes.py --model ViT-B-32-256 --checkpoint /tmp/peer-bench/weights/...safetensors

Weights do not change speed, so a random-init checkpoint is made when none is given. They do change how far
bf16 and int8 move embeddings: random weights only show the mechanics (the test suite checks int8's retrieval
on a model it trained).
"""

from __future__ import annotations

import argparse
import json
import platform
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
print(json.dumps({"torch": "torch" in sys.modules, "served": embedder.describe()}))
"""
OBJECTS = ["cat", "dog", "car", "tree", "house", "person", "clock", "cup", "rocket", "horse", "wall", "galaxy"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a close-up of the {}.", "a drawing of a {}."]


def images_per_second(embedder, batch: np.ndarray, count: int) -> float:  # type: ignore[no-untyped-def]
    embedder.embed_prepared(batch[:2])  # warm-up (and compile)
    embedder.embed_prepared(batch)
    started, done = time.perf_counter(), 0
    while done < count:
        embedder.embed_prepared(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def prompts_per_second(embedder, count: int, batch: int) -> float:  # type: ignore[no-untyped-def]
    prompts = [TEMPLATES[i % len(TEMPLATES)].format(f"{OBJECTS[i % len(OBJECTS)]} number {i}") for i in range(count)]
    embedder.embed_texts(prompts[:batch])
    started = time.perf_counter()
    for i in range(0, count, batch):
        embedder.embed_texts(prompts[i : i + batch])
    return count / (time.perf_counter() - started)


def one_prompt_ms(embedder, runs: int = 30) -> float:  # type: ignore[no-untyped-def]
    times = []
    for i in range(runs):
        started = time.perf_counter()
        embedder.embed_texts([f"a photo of a dog number {i}"])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


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


def top_k_agreement(queries: np.ndarray, a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean overlap of the top-k of each query over corpus a and corpus b."""
    top_a = np.argsort(-(queries @ a.T), axis=1)[:, :k]
    top_b = np.argsort(-(queries @ b.T), axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b, strict=True)]))


def embed_all(embedder, prepared: np.ndarray, batch: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([embedder.embed_prepared(prepared[i : i + batch]) for i in range(0, len(prepared), batch)])


def cold_seconds(home: Path, overrides: dict[str, str], runs: int) -> tuple[float, dict[str, object]]:
    """Median wall time of a new process that loads the model and embeds one text."""
    times, info = [], {}
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
        info = json.loads(done.stdout.strip().splitlines()[-1])
    return statistics.median(times), info


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("openvino", "onnxruntime", "torch", "open_clip_torch", "numpy"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgsearch-bench-runtimes"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=128, help="images per speed measurement")
    parser.add_argument("--texts", type=int, default=256, help="prompts per speed measurement")
    parser.add_argument("--corpus", type=int, default=160, help="pictures for the agreement checks")
    parser.add_argument("--cold-runs", type=int, default=3)
    args = parser.parse_args()

    from imgsearch import load_settings
    from imgsearch.embed import loading
    from imgsearch.embed.cpu import cpu_info
    from imgsearch.embed.openvino import threads

    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or make_checkpoint(args.model, args.work / f"{args.model}-random.safetensors")
    home = args.work / "home"
    base = {"model.name": args.model, "model.pretrained": str(checkpoint), "model.device": "cpu"}
    cpu = cpu_info()
    print(f"cpu: {cpu.describe()}; python {platform.python_version()}; {versions()}")
    print(f"model {args.model} (weights: {checkpoint.name}), batch {args.batch}, {threads()} threads")

    def settings(**more: str):  # type: ignore[no-untyped-def]
        return load_settings(home, overrides={**base, **more}, environ={})

    reference = loading.torch_embedder(settings(**{"model.backend": "open_clip"}), "fp32")
    pictures = corpus(args.corpus)
    prepared = np.stack([reference.prepare(p) for p in pictures])
    prompts = [t.format(o) for t in TEMPLATES for o in OBJECTS]
    ref_images, ref_texts = embed_all(reference, prepared, args.batch), reference.embed_texts(prompts)
    speed_batch = np.repeat(prepared[: args.batch], -(-args.batch // len(prepared[: args.batch])), axis=0)
    speed_batch = speed_batch[: args.batch]

    candidates = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32")]
    if cpu.bf16:
        candidates.append(("openvino", "bf16"))
    candidates.append(("pytorch", "fp32"))
    if cpu.bf16:
        candidates.append(("pytorch", "bf16"))
    backend = {"onnxruntime": "onnx", "openvino": "openvino", "pytorch": "open_clip"}
    rows = []
    for runtime, chosen in candidates:
        try:
            embedder = loading.load(settings(**{"model.backend": backend[runtime], "model.precision": chosen}))
        except Exception as exc:  # a runtime that is not installed: say so and go on
            print(f"{runtime} {chosen}: not measured ({exc})")
            continue
        rate = images_per_second(embedder, speed_batch, args.images)
        images, texts = embed_all(embedder, prepared, args.batch), embedder.embed_texts(prompts)
        rows.append(
            {
                "runtime": f"{runtime} {chosen}",
                "images/s": rate,
                "prompts/s": prompts_per_second(embedder, args.texts, args.batch),
                "1 prompt ms": one_prompt_ms(embedder),
                "cos img": float((images * ref_images).sum(axis=1).min()),
                "cos txt": float((texts * ref_texts).sum(axis=1).min()),
                "top10 txt": top_k_agreement(ref_texts, ref_images, images),
                "top10 img": top_k_agreement(ref_images, ref_images, images),
            }
        )
        print(f"  measured {runtime} {chosen}: {rate:.1f} images/s", flush=True)
    baseline = next((r["images/s"] for r in rows if r["runtime"] == "onnxruntime fp32"), rows[0]["images/s"])
    print()
    print(f"{'runtime precision':18s} {'images/s':>9s} {'vs ort32':>8s} {'prompts/s':>9s} {'1 prompt':>9s} "
          f"{'min cos img':>11s} {'min cos txt':>11s} {'top10 txt':>9s} {'top10 img':>9s}")  # fmt: skip
    for r in rows:
        print(
            f"{r['runtime']:18s} {r['images/s']:9.1f} {r['images/s'] / baseline:7.2f}x {r['prompts/s']:9.1f} "
            f"{r['1 prompt ms']:7.1f}ms {r['cos img']:11.5f} {r['cos txt']:11.5f} {r['top10 txt']:9.3f} "
            f"{r['top10 img']:9.3f}"
        )
    print("(cosines and top-10 overlaps against PyTorch fp32 on the same inputs)")

    auto = loading.load(settings())
    decision = loading.plan(settings())[1]
    reason = decision.reason if decision else "?"
    print(f"\nauto chooses here: {auto.describe()} ({reason})")
    for name in ("auto", "onnx", "open_clip"):
        seconds, info = cold_seconds(home, {**base, "model.backend": name}, args.cold_runs)
        print(f"cold process, one prompt, backend {name:9s}: {seconds:5.2f} s (median of {args.cold_runs}): {info}")


if __name__ == "__main__":
    main()

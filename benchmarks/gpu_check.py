#!/usr/bin/env python3
"""The GPU path in one command (under 5 minutes on a lent GPU): what `pip install 'imgsearch[gpu]'` gives.

    python benchmarks/gpu_check.py                 # on a machine with an NVIDIA GPU
    python benchmarks/gpu_check.py --device cpu    # the same checks on the CPU: a smoke test of this script

It prints, each with a PASS/FAIL line where there is a bound:
1. the environment: GPU, driver, torch and its CUDA, faiss and the GPUs it sees, both imported in one process
   (torch 2.14.1 is built for CUDA 13, faiss-gpu's wheels load their own CUDA 12 runtime beside it);
2. model-only images/s on the GPU (ViT-B-32, random init, batch 128) at fp16 and bf16 autocast, and fp32;
3. end-to-end `index` images/s on a folder of 12-MP JPEGs made here (decoding on this machine's cores);
4. GPU vs CPU embedding parity: images and texts, least cosine >= 0.999 (fp16 GPU against fp32 CPU);
5. faiss on the GPU against faiss on the CPU: exact search over 200k vectors, top-10 agreement >= 0.999.
Exit status 1 when a check fails, 2 when no CUDA device is there (without --device cpu).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_index import make_checkpoint, make_folder  # noqa: E402

failures: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def environment(device: str) -> None:
    import faiss
    import torch

    from imgsearch.embed.cpu import cpu_info

    print(f"cpu: {cpu_info().describe()}")
    print(
        f"torch {torch.__version__} (built for CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}"
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute {props.major}.{props.minor}")
        print(f"driver: {_driver()}")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    print(f"faiss {faiss.__version__}: GPUs seen {gpus}, GPU build: {hasattr(faiss, 'StandardGpuResources')}")
    if device == "cuda":
        check("faiss-gpu beside torch", gpus > 0, f"faiss sees {gpus} GPU(s) in the process that runs torch on CUDA")


def _driver() -> str:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def model_only(checkpoint: Path, device: str, work: Path) -> None:
    import torch

    from imgsearch import load_settings
    from imgsearch.embed import loading

    batch = 128 if device == "cuda" else 16
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for precision in ("fp16", "bf16", "fp32") if device == "cuda" else ("fp32",):
        overrides = {"model.pretrained": str(checkpoint), "model.device": device, "model.precision": precision}
        embedder = loading.torch_embedder(load_settings(work, overrides=overrides, environ={}))
        embedder.embed_prepared(x)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started, rounds = time.perf_counter(), 10 if device == "cuda" else 2
        for _ in range(rounds):
            embedder.embed_prepared(x)
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"model only, {embedder.describe()}: {rounds * batch / (time.perf_counter() - started):8.1f} images/s")


def end_to_end(checkpoint: Path, device: str, work: Path, count: int) -> None:
    from imgsearch import Library, load_settings

    folder = make_folder(work / "jpegs", count, (4000, 3000))
    home = work / f"home-{device}"
    overrides = {"model.pretrained": str(checkpoint), "model.device": device, "index.batch_size": "64"}
    with Library(load_settings(home, overrides=overrides, environ={})) as lib:
        _ = lib.embedder  # model load is start-up, not throughput
        started = time.perf_counter()
        report = lib.index([folder], rebuild=True)
        seconds = time.perf_counter() - started
        served = lib.embedder.describe()
    print(f"index end to end, {served}, {os.cpu_count()} CPU cores decoding: {report.embedded / seconds:8.1f} images/s")


def parity(checkpoint: Path, device: str, work: Path) -> None:
    from PIL import Image

    from imgsearch import load_settings
    from imgsearch.embed import loading

    samples = sorted((ROOT / "samples").glob("*.jpg"))
    pictures = [Image.open(p).convert("RGB") for p in samples]
    texts = ["a photo of a cat", "an astronaut", "a rocket on the launch pad", "Ünïcödé 東京 🐱", "word " * 90]
    base = {"model.pretrained": str(checkpoint)}
    cpu = loading.torch_embedder(load_settings(work, overrides={**base, "model.device": "cpu"}, environ={}), "fp32")
    served = loading.torch_embedder(load_settings(work, overrides={**base, "model.device": device}, environ={}))
    image_cos = float((served.embed_images(pictures) * cpu.embed_images(pictures)).sum(axis=1).min())
    text_cos = float((served.embed_texts(texts) * cpu.embed_texts(texts)).sum(axis=1).min())
    detail = f"{served.describe()} vs pytorch fp32 on the CPU: images {image_cos:.5f}, texts {text_cos:.5f}"
    check("GPU vs CPU embeddings", min(image_cos, text_cos) >= 0.999, detail)


def faiss_agreement(device: str) -> None:
    import faiss

    from imgsearch.store.vectors import FaissIndex, IndexParams

    rng = np.random.default_rng(0)
    n, dim = (200_000, 512) if device == "cuda" else (20_000, 512)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.integers(0, n, 200)] + 0.1 * rng.standard_normal((200, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    on_cpu = FaissIndex(dim, IndexParams(kind="flat", use_gpu=False))
    on_gpu = FaissIndex(dim, IndexParams(kind="flat", use_gpu=device == "cuda"))
    for index in (on_cpu, on_gpu):
        index.add(ids, x)
    times = {}
    results = {}
    for name, index in (("cpu", on_cpu), ("gpu", on_gpu)):
        index.search(queries[:2], 10)  # warm-up (the copy to the GPU happens here)
        started = time.perf_counter()
        results[name] = index.search(queries, 10)[1]
        times[name] = time.perf_counter() - started
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(results["cpu"], results["gpu"], strict=True)])
    on = "faiss GPU" if device == "cuda" and faiss.get_num_gpus() > 0 else "faiss CPU (no GPU: both on the CPU)"
    detail = f"{on}, {n:,} vectors: top-10 agreement {agree:.4f}; 200 queries {times['gpu'] * 1000:.1f} ms"
    check("faiss GPU vs CPU", agree >= 0.999, f"{detail} vs {times['cpu'] * 1000:.1f} ms on the CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--images", type=int, default=512, help="12-MP JPEGs for the end-to-end run")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-gpu-check")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here (torch.cuda.is_available() is False); --device cpu runs the checks on the CPU")
        sys.exit(2)
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint("ViT-B-32", args.work / "ViT-B-32-random.safetensors")
    started = time.perf_counter()
    environment(args.device)
    model_only(checkpoint, args.device, args.work)
    end_to_end(checkpoint, args.device, args.work, args.images if args.device == "cuda" else 32)
    parity(checkpoint, args.device, args.work)
    faiss_agreement(args.device)
    print(f"done in {time.perf_counter() - started:.0f} s; {failures or 'all checks passed'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

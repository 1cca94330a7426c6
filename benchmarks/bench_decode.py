#!/usr/bin/env python3
"""Decode cost per image for each format a camera or phone writes, at 12 and 24 MP, as the indexer decodes it.

Each file is made here from a sample photo, enlarged and given sensor-like noise (so that it compresses like a
photo, not like a smooth enlargement): JPEG (quality 90), HEIC (pillow-heif, quality 90, a grid of 512-pixel tiles
as iPhones write it, which libheif decodes on several threads), AVIF (Pillow, quality
80), JPEG XL (distance 1) and DNG (a 12-bit RGGB mosaic, uncompressed) with a full-size JPEG preview, as cameras
embed theirs, and without one. Every file is decoded through `images.decode_sized` with the model's input size
(224: what `index` does), so a JPEG is DCT-scaled and a RAW uses its preview when it can; a RAW is also decoded
with its preview ignored (LibRaw's half-size demosaic), and a JPEG in full, for comparison. Wall and CPU
milliseconds per image (the median of --runs; libheif, libjxl, dav1d and LibRaw may use more than one thread).

    python benchmarks/bench_decode.py                 # 12 and 24 MP
    python benchmarks/bench_decode.py --mp 12 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.imagefiles import avif, dng, encode, heic, jxl  # noqa: E402

SIDES = {12: (4000, 3000), 16: (4896, 3264), 20: (5472, 3648), 24: (6000, 4000)}
MAX_PIXELS = 178_956_970


def photo(size: tuple[int, int]) -> Image.Image:
    """A sample photo at this size, with noise like a sensor's (sigma 3 of 255), so files have a photo's entropy."""
    picture = Image.open(ROOT / "samples" / "astronaut.jpg").convert("RGB").resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 3, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(picture, np.float32) + noise, 0, 255).astype(np.uint8))


def files(picture: Image.Image) -> dict[str, tuple[bytes, bool, int]]:
    """{label: (bytes, is a RAW, draft side)}, each made once."""
    import pillow_heif

    pillow_heif.options.GRID_TILE_SIZE = 512  # as iPhones write HEIC: a grid of 512-pixel tiles
    jpeg = encode(picture, "JPEG", quality=90)
    with_preview = dng(picture, preview=picture)
    return {
        "JPEG (DCT-scaled)": (jpeg, False, 224),
        "JPEG (full size)": (jpeg, False, 0),
        "HEIC": (heic(picture), False, 224),
        "AVIF": (avif(picture, quality=80), False, 224),
        "JPEG XL": (jxl(picture), False, 224),
        "DNG: embedded preview": (with_preview, True, 224),
        "DNG: half-size demosaic": (dng(picture), True, 224),
    }


def timed(decode: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median (wall ms, CPU ms) of runs, after one warm-up."""
    decode()
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        decode()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mp", type=int, nargs="+", default=[12, 24], choices=sorted(SIDES))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from imgsearch import images, raw
    from imgsearch.embed.cpu import cpu_info

    print(f"cpu: {cpu_info().describe()}")
    print(f"LibRaw {raw.version()}; Pillow {Image.__version__}; {args.runs} runs each, median")
    for mp in args.mp:
        size = SIDES[mp]
        print(f"\n{mp} MP ({size[0]}x{size[1]}): making the files ...", flush=True)
        made = files(photo(size))
        print(f"{'format':26s} {'file MB':>8s} {'wall ms':>9s} {'CPU ms':>9s}  decoded to")
        for label, (data, is_raw, draft) in made.items():
            picture = images.decode(data, MAX_PIXELS, draft, raw_file=is_raw)
            if label == "DNG: half-size demosaic":
                assert picture.size == (size[0] // 2, size[1] // 2), "the preview was not ignored"
            wall, cpu = timed(lambda d=data, r=is_raw, s=draft: images.decode(d, MAX_PIXELS, s, raw_file=r), args.runs)
            mb = len(data) / 1e6
            print(f"{label:26s} {mb:8.1f} {wall:9.0f} {cpu:9.0f}  {picture.size[0]}x{picture.size[1]}", flush=True)


if __name__ == "__main__":
    main()

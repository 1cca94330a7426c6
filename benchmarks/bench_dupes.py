#!/usr/bin/env python3
"""Duplicates: what the perceptual hash costs `index`, where its thresholds come from, and `dupes` at 100k images.

1. Cost. picture_hash on what the indexer hands it, against the indexer's own decode of a 12 MP JPEG (a sample
   enlarged, with a sensor's noise, quality 90: draft-decoded for a 224-pixel model input to 1000x750), measured in
   the same run: a picture of shorter side 448 and 512 (twice a 224 and a 256 input), the 1000x750 draft decode,
   and a full 12 MP picture (what a 12 MP HEIC, PNG or WebP reaches the indexer as: it keeps 8x the model input).
2. Distances (--no-samples skips). The samples, their copies (as tests/test_dupes_core.py makes them) and pictures
   cut from them 30% or more apart: shape bits of copies against distinct pictures, the tone of grey-scale copies,
   mirror images. MAX_SHAPE_DISTANCE and MAX_TONE_DISTANCE sit between the two.
3. Scale. --count hashes: random ones (uniform bits: distances to each other of mean 128, sd 8, as measured
   between distinct photos) and --groups planted groups of 2-5 copies of one picture, each copy as far from it as
   copies were measured (0-48 shape bits, tone +-5). copy_pairs (faiss, exact) and the star grouping are timed, and
   the planted groups checked.

    python benchmarks/bench_dupes.py                         # 100k hashes, 5,000 planted groups
    python benchmarks/bench_dupes.py --count 200000 --no-samples
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imgsearch import dupes, images  # noqa: E402

LIMIT = 178_956_970


def versions() -> str:
    import faiss

    python = platform.python_version()
    return f"python {python}, numpy {np.__version__}, Pillow {Image.__version__}, faiss {faiss.__version__}"


def timed_ms(work: Callable[[], object], runs: int) -> float:
    """Median wall ms of runs, after one warm-up."""
    work()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def photo(size: tuple[int, int]) -> Image.Image:
    """A sample photo at this size, with noise like a sensor's (sigma 3 of 255), as bench_decode.py makes them."""
    picture = Image.open(ROOT / "samples" / "astronaut.jpg").convert("RGB").resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 3, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(picture, np.float32) + noise, 0, 255).astype(np.uint8))


def cost(runs: int) -> None:
    big = photo((4000, 3000))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    decode_ms = timed_ms(lambda: images.decode_sized(jpeg, LIMIT, 224), runs)
    drafted = images.decode_sized(jpeg, LIMIT, 224)[0]
    print(f"\n1. cost, median of {runs} (wall ms; 1 thread)")
    size = f"{drafted.size[0]}x{drafted.size[1]}"
    print(f"{'12 MP JPEG, decoded as index does (224 input)':52s} {decode_ms:8.2f}   -> {size}")
    pictures = {
        "picture 597x448 (2 x 224)": photo((597, 448)),
        "picture 683x512 (2 x 256)": photo((683, 512)),
        f"the 12 MP JPEG's draft decode, {drafted.size[0]}x{drafted.size[1]}": drafted,
        "a full 12 MP picture (HEIC/PNG/WebP reach index so)": big,
    }
    print(f"{'picture_hash of':52s} {'ms':>8s}   of the JPEG decode")
    for label, picture in pictures.items():
        ms = timed_ms(functools.partial(dupes.picture_hash, picture), runs * 10)
        print(f"{label:52s} {ms:8.3f}   {ms / decode_ms:6.1%}")


def distances() -> None:
    from tests import test_dupes_core as corpus

    worst: dict[str, int] = {}
    worst_tone: dict[str, int] = {}
    distinct: dict[str, bytes] = {}
    greys, mirrors = [], []
    for name in corpus.NAMES:
        h = dupes.picture_hash(corpus.original(name))
        distinct[name] = h
        for kind, data in corpus.copies(name).items():
            c = dupes.picture_hash(corpus.decoded(data))
            worst[kind] = max(worst.get(kind, 0), dupes.shape_distance(h, c))
            worst_tone[kind] = max(worst_tone.get(kind, 0), dupes.tone_distance(h, c))
        if name in corpus.COLOUR:
            greys.append(dupes.tone_distance(h, dupes.picture_hash(corpus.decoded(corpus.grey(name)))))
        mirrors.append(dupes.shape_distance(h, dupes.picture_hash(corpus.decoded(corpus.mirror(name)))))
        for kind, im in corpus.different_crops(name).items():
            distinct[f"{name}: {kind}"] = dupes.picture_hash(im)
    pairs = list(itertools.combinations(distinct, 2))
    apart = np.array([dupes.shape_distance(distinct[a], distinct[b]) for a, b in pairs])
    closest = min(pairs, key=lambda p: dupes.shape_distance(distinct[p[0]], distinct[p[1]]))
    print(f"\n2. distances on the {len(corpus.NAMES)} samples (shape: bits of {dupes.SHAPE_BITS}; tone: levels)")
    print(f"{'copy':28s} {'shape max':>9s} {'tone max':>9s}")
    for kind in worst:
        print(f"{kind:28s} {worst[kind]:9d} {worst_tone[kind]:9d}")
    low, one = np.percentile(apart, 0.1), np.percentile(apart, 1)
    print(f"distinct pictures ({len(distinct)}, {len(pairs)} pairs): shape min {apart.min()}, 0.1% {low:.0f},", end="")
    print(f" 1% {one:.0f},")
    print(f"  mean {apart.mean():.1f}, sd {apart.std():.1f}; the closest: {' / '.join(closest)}")
    print(f"grey-scale copies of the {len(greys)} colour samples: tone {min(greys)}-{max(greys)}")
    print(f"mirror images: shape {min(mirrors)}-{max(mirrors)}")
    copies_max, tones_max = max(worst.values()), max(worst_tone.values())
    sds = (apart.mean() - dupes.MAX_SHAPE_DISTANCE) / apart.std()
    print(
        f"thresholds: shape <= {dupes.MAX_SHAPE_DISTANCE} (copies <= {copies_max}, distinct >= {apart.min()},"
        f" their mean {sds:.1f} sd above); tone <= {dupes.MAX_TONE_DISTANCE} (copies <= {tones_max},"
        f" grey copies >= {min(greys)})"
    )


def planted(count: int, groups: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """count hashes: random, with `groups` groups of 2-5 copies planted at random rows."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 256, (count, dupes.HASH_BYTES), dtype=np.uint8)
    rows = rng.permutation(count)
    truth, at = [], 0
    for _ in range(groups):
        size = int(rng.integers(2, 6))
        members = rows[at : at + size].tolist()
        at += size
        leader = hashes[members[0]]
        for m in members[1:]:
            bits = np.unpackbits(leader[: dupes.SHAPE_BYTES])
            bits[rng.choice(dupes.SHAPE_BITS, int(rng.integers(0, 49)), replace=False)] ^= 1
            tone = leader[dupes.SHAPE_BYTES :].astype(int) + rng.integers(-5, 6, dupes.TONE_BYTES)
            hashes[m] = np.concatenate([np.packbits(bits), np.clip(tone, 0, 255).astype(np.uint8)])
        truth.append(sorted(members))
    return hashes, truth


def scale(count: int, groups: int, seed: int) -> None:
    import faiss

    hashes, truth = planted(count, groups, seed)
    members, threads = sum(map(len, truth)), faiss.omp_get_max_threads()
    print(f"\n3. {count:,} hashes, {groups:,} planted groups ({members:,} pictures); faiss threads {threads}")
    started = time.perf_counter()
    pairs = dupes.copy_pairs(hashes)
    searched = time.perf_counter() - started
    found = dupes.star_groups(len(hashes), pairs)
    total = time.perf_counter() - started
    expected = {tuple(g) for g in truth}
    got = {tuple(sorted(g)) for g in found}
    print(
        f"copy_pairs: {searched:.2f} s ({len(pairs):,} pairs); grouping: {total - searched:.2f} s; total {total:.2f} s"
    )
    print(
        f"planted groups found whole: {len(expected & got):,} of {len(expected):,}; other groups: {len(got - expected)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-samples", action="store_true", help="skip the distances on the sample photos")
    args = parser.parse_args()

    from imgsearch.embed.cpu import cpu_info

    print(f"cpu: {cpu_info().describe()}")
    print(versions())
    print(
        f"hash: {dupes.HASH_BYTES} bytes ({dupes.SHAPE_BITS} shape bits + {dupes.TONE_BYTES} tone bytes);"
        f" copies: shape <= {dupes.MAX_SHAPE_DISTANCE} bits, tone <= {dupes.MAX_TONE_DISTANCE} levels"
    )
    cost(args.runs)
    if not args.no_samples:
        distances()
    scale(args.count, args.groups, args.seed)


if __name__ == "__main__":
    main()

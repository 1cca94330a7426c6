"""Copies of one picture (imgsearch.dupes): the hash, the decision, the grouping and the best-copy rule.

Every picture here is hashed from what the indexer decodes (`images.decode_sized` with a ViT's 224-pixel input:
EXIF turned, JPEG draft-decoded), made from the sample photos: real content, where flat synthetic shapes would
collide. Copies: exact, JPEG q=50, half and quarter size, PNG -> WebP -> HEIC and HEIC -> WebP -> PNG, 1% and 2%
crops, EXIF turns. Not copies: grey-scale (for the colour samples), mirror images, crops 30% apart, synthetic
shapes, flat pictures.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch import dupes, images
from imgsearch.dupes import Candidate, copy_groups, copy_pairs, hash_array, is_copy, picture_hash, rank_copies
from tests.imagefiles import TURNS, encode, heic, with_orientation

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
LIMIT = 178_956_970
VIT_INPUT = 224
NAMES = sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
COLOUR = {"astronaut.jpg", "cat-chelsea.jpg", "coffee-cup.jpg", "retina.jpg", "rocket.jpg"}  # the rest are grey
HEIC_FROM = ("astronaut.jpg", "brick-wall.jpg", "coffee-cup.jpg")  # x265 takes 0.1-0.4 s a picture: a few
# What undoes each orientation's turn: the stored pixels of an upright picture.
UNDO = {o: t for o, t in TURNS.items() if o not in (6, 8)} | {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def decoded(data: bytes) -> Image.Image:
    """What the indexer hands to picture_hash."""
    return images.decode_sized(data, LIMIT, VIT_INPUT)[0]


def png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """The picture less these fractions of its width and height on each side."""
    w, h = image.size
    return image.crop((round(left * w), round(top * h), round(w - right * w), round(h - bottom * h)))


def resized(image: Image.Image, fraction: float) -> Image.Image:
    return image.resize((round(image.width * fraction), round(image.height * fraction)), Image.Resampling.LANCZOS)


@cache
def original(name: str) -> Image.Image:
    return decoded((SAMPLES / name).read_bytes())


def copies(name: str) -> dict[str, bytes]:
    """Files that hold the same picture as the sample: {kind: file bytes}."""
    im = original(name)
    out = {
        "exact": png(im),
        "jpeg q=50": encode(im, "JPEG", quality=50),
        "half": encode(resized(im, 1 / 2), "JPEG", quality=90),
        "quarter": encode(resized(im, 1 / 4), "JPEG", quality=90),
        "webp": encode(decoded(png(im)), "WEBP", quality=80),
        "crop 1% each side": encode(crop(im, 0.01, 0.01, 0.01, 0.01), "JPEG", quality=90),
        "crop 2% left": encode(crop(im, 0.02, 0, 0, 0), "JPEG", quality=90),
        "crop 2% top": encode(crop(im, 0, 0.02, 0, 0), "JPEG", quality=90),
        "crop 2% right": encode(crop(im, 0, 0, 0.02, 0), "PNG"),
        "crop 2% bottom": encode(crop(im, 0, 0, 0, 0.02), "WEBP", quality=80),
    }
    for orientation in (3, 6, 5):  # a half turn, a quarter turn, a quarter turn and a flip
        out[f"EXIF orientation {orientation}"] = with_orientation(im.transpose(UNDO[orientation]), orientation)
    if name in HEIC_FROM:
        out["png -> webp -> heic"] = heic(decoded(encode(decoded(png(im)), "WEBP", quality=80)), quality=50)
        out["heic -> webp -> png"] = png(decoded(encode(decoded(heic(im, quality=50)), "WEBP", quality=80)))
    if name == "coffee-cup.jpg":
        out["heic, EXIF orientation 6"] = heic(im.transpose(UNDO[6]), orientation=6)
    return out


def grey(name: str) -> bytes:
    return encode(original(name).convert("L"), "JPEG", quality=90)


def mirror(name: str) -> bytes:
    return encode(original(name).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", quality=90)


def different_crops(name: str) -> dict[str, Image.Image]:
    """Pictures cut from one photo, each 30% or more of its size away from the others and from the photo."""
    im = original(name)
    return {
        "left 70%": crop(im, 0, 0, 0.3, 0),
        "right 70%": crop(im, 0.3, 0, 0, 0),
        "top 70%": crop(im, 0, 0, 0, 0.3),
        "bottom 70%": crop(im, 0, 0.3, 0, 0),
        "centre 50%": crop(im, 0.25, 0.25, 0.25, 0.25),
    }


def shapes() -> dict[str, Image.Image]:
    """The tiny model's synthetic pictures at 256 pixels: one coloured shape each, on a light background. The
    same draw in another colour (the same layout and background) is another picture too."""
    from tests import tinyclip  # open_clip and torch: only for these

    out = {}
    for i, (colour, shape) in enumerate((c, s) for c in tinyclip.COLORS for s in tinyclip.SHAPES):
        out[f"{colour} {shape}"] = tinyclip.draw(colour, shape, random.Random(i), size=256)
    for colour in tinyclip.COLORS:
        out[f"{colour} circle, one layout"] = tinyclip.draw(colour, "circle", random.Random(99), size=256)
    return out


@dataclass(frozen=True)
class Hashed:
    label: str
    picture: str  # what a person would call the same picture
    hash: bytes


@pytest.fixture(scope="module")
def corpus() -> list[Hashed]:
    """Samples, their copies and edits, different crops of them, and synthetic pictures, all hashed."""
    out = []
    for name in NAMES:
        out.append(Hashed(name, name, picture_hash(original(name))))
        out += [Hashed(f"{name}: {kind}", name, picture_hash(decoded(data))) for kind, data in copies(name).items()]
        # A grey-scale copy of a grey picture is the same picture; of a colour one, an edit.
        out.append(
            Hashed(f"{name}: grey", f"{name} (grey)" if name in COLOUR else name, picture_hash(decoded(grey(name))))
        )
        out.append(Hashed(f"{name}: mirror", f"{name} (mirror)", picture_hash(decoded(mirror(name)))))
        for kind, im in different_crops(name).items():
            label = f"{name}: {kind}"
            out.append(Hashed(label, label, picture_hash(decoded(encode(im, "JPEG", quality=90)))))
    for label, im in shapes().items():
        out.append(Hashed(label, label, picture_hash(decoded(png(im)))))
        out.append(Hashed(f"{label}: jpeg", label, picture_hash(decoded(encode(im, "JPEG", quality=75)))))
    return out


@pytest.fixture(scope="module")
def groups(corpus: list[Hashed]) -> list[list[Hashed]]:
    found = copy_groups(hash_array([h.hash for h in corpus]))
    return [[corpus[i] for i in group] for group in found]


def test_the_colour_samples_are_the_colourful_ones() -> None:
    """What the grey-scale checks stand on: the other samples are grey pictures already."""
    for name in NAMES:
        rgb = np.asarray(original(name), np.int16)
        spread = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
        assert (spread > 5) == (name in COLOUR), (name, spread)


def test_every_copy_is_grouped_with_its_original(corpus: list[Hashed], groups: list[list[Hashed]]) -> None:
    group_of = {h.label: i for i, group in enumerate(groups) for h in group}
    for h in corpus:
        if h.picture in NAMES:
            assert h.label in group_of, f"{h.label}: in no group"
            assert group_of[h.label] == group_of[h.picture], f"{h.label}: not grouped with {h.picture}"


def test_no_group_mixes_pictures(groups: list[list[Hashed]]) -> None:
    for group in groups:
        assert len({h.picture for h in group}) == 1, [h.label for h in group]


def test_every_group_member_is_a_copy_of_the_groups_leader(groups: list[list[Hashed]]) -> None:
    for leader, *members in groups:
        assert members
        assert all(is_copy(leader.hash, m.hash) for m in members)


def test_each_drawing_groups_with_its_jpeg_alone(groups: list[list[Hashed]]) -> None:
    drawings = set(shapes())
    drawn = sorted(h.label for group in groups if group[0].picture in drawings for h in group)
    assert drawn == sorted([*drawings, *(f"{label}: jpeg" for label in drawings)])
    assert all(len(group) == 2 for group in groups if group[0].picture in drawings)


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_a_grey_scale_copy_of_a_colour_photo_is_an_edit(name: str) -> None:
    """The shape bits cannot see colour; the tone cells decide."""
    photo, grey_copy = picture_hash(original(name)), picture_hash(decoded(grey(name)))
    assert dupes.shape_distance(photo, grey_copy) <= 4
    assert dupes.tone_distance(photo, grey_copy) > dupes.MAX_TONE_DISTANCE
    assert not is_copy(photo, grey_copy)


def test_a_mirror_image_is_as_far_as_another_picture() -> None:
    for name in NAMES:
        distance = dupes.shape_distance(picture_hash(original(name)), picture_hash(decoded(mirror(name))))
        assert distance >= 100, name  # as far as different pictures are (mean 127), far past MAX_SHAPE_DISTANCE


def test_flat_pictures_are_told_apart_by_their_tone_and_copied_by_their_shape() -> None:
    colours = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (200, 30, 30)}
    hashes = {
        name: picture_hash(decoded(encode(Image.new("RGB", (300, 200), rgb), "PNG"))) for name, rgb in colours.items()
    }
    for a in hashes:
        for b in hashes:
            assert is_copy(hashes[a], hashes[b]) == (a == b), (a, b)
    red_jpeg = picture_hash(decoded(encode(Image.new("RGB", (600, 400), colours["red"]), "JPEG", quality=50)))
    assert is_copy(hashes["red"], red_jpeg)


def test_the_hash_layout() -> None:
    """32 bytes of shape bits, then Y, Cb, Cr of each quarter (BT.601, Cb and Cr offset by 128)."""
    im = Image.new("RGB", (200, 100), (255, 0, 0))
    im.paste((0, 0, 255), (100, 50, 200, 100))  # the bottom-right quarter blue
    h = picture_hash(im)
    assert len(h) == dupes.HASH_BYTES == 44
    red, blue = (76, 85, 255), (29, 255, 107)
    assert list(h[dupes.SHAPE_BYTES :]) == [*red, *red, *red, *blue]
    assert picture_hash(im.convert("RGBA")) == h
    assert picture_hash(im.convert("L")) == picture_hash(im.convert("L").convert("RGB"))


def test_a_large_picture_is_sampled_and_still_hashes_as_its_smaller_copies() -> None:
    """Above 2 x SAMPLED_SIDE the picture is sampled before averaging: a 6 MP version of a sample (enlarged, with
    a sensor's noise) is a copy of the sample and of its indexer-sized JPEG."""
    small = original("coffee-cup.jpg")
    big = small.resize((3000, 2000), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 3, (big.height, big.width, 3))
    big = Image.fromarray(np.clip(np.asarray(big, np.float32) + noise, 0, 255).astype(np.uint8))
    jpeg = decoded(encode(big, "JPEG", quality=90))  # draft-decoded to about 1000 pixels
    assert min(big.size) >= 2 * dupes.SAMPLED_SIDE > min(jpeg.size)
    hashes = [picture_hash(im) for im in (big, jpeg, small)]
    assert is_copy(hashes[0], hashes[1]) and is_copy(hashes[0], hashes[2]) and is_copy(hashes[1], hashes[2])


# The search and the grouping, on hashes made by hand


def flipped(base: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """base with `bits` of its shape bits flipped."""
    out = base.copy()
    shape = np.unpackbits(out[: dupes.SHAPE_BYTES])
    shape[rng.choice(dupes.SHAPE_BITS, bits, replace=False)] ^= 1
    out[: dupes.SHAPE_BYTES] = np.packbits(shape)
    return out


def test_the_thresholds_are_inclusive() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, dupes.HASH_BYTES, dtype=np.uint8)
    base[dupes.SHAPE_BYTES :] = 100
    at, past = flipped(base, dupes.MAX_SHAPE_DISTANCE, rng), flipped(base, dupes.MAX_SHAPE_DISTANCE + 1, rng)
    toned, overtoned = base.copy(), base.copy()
    toned[-1] += dupes.MAX_TONE_DISTANCE
    overtoned[-1] += dupes.MAX_TONE_DISTANCE + 1
    hashes = np.stack([base, at, past, toned, overtoned])
    # at is a copy of toned too (60 bits, 12 levels); toned and overtoned are a level apart; past is 61 bits from
    # base, and about 128 from at; overtoned is 13 levels from base and at.
    assert copy_pairs(hashes).tolist() == [[0, 1], [0, 3], [1, 3], [3, 4]]
    assert [is_copy(base.tobytes(), h.tobytes()) for h in hashes[1:]] == [True, False, True, False]


def brute_force(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pairs within both thresholds, pairs within the shape threshold only), i < j."""
    shape_bits = np.unpackbits(hashes[:, : dupes.SHAPE_BYTES], axis=1).astype(np.int16)
    shape = (shape_bits[:, None, :] != shape_bits[None, :, :]).sum(axis=2)
    tones = hashes[:, dupes.SHAPE_BYTES :].astype(np.int16)
    tone = np.abs(tones[:, None, :] - tones[None, :, :]).max(axis=2)
    near = np.triu(shape <= dupes.MAX_SHAPE_DISTANCE, 1)
    return np.argwhere(near & (tone <= dupes.MAX_TONE_DISTANCE)), np.argwhere(near)


def test_copy_pairs_finds_what_brute_force_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Across blocks (made small here), with near pairs at every distance around the thresholds."""
    monkeypatch.setattr(dupes, "_BATCH", 37)
    rng = np.random.default_rng(2)
    bases = rng.integers(0, 256, (60, dupes.HASH_BYTES), dtype=np.uint8)
    near = [flipped(bases[i % 60], int(rng.integers(20, 80)), rng) for i in range(200)]
    hashes = np.concatenate([bases, np.stack(near)])
    for row in rng.choice(len(hashes), 60, replace=False):
        tone = hashes[row, dupes.SHAPE_BYTES :].astype(int) + rng.integers(-20, 21, dupes.TONE_BYTES)
        hashes[row, dupes.SHAPE_BYTES :] = np.clip(tone, 0, 255)
    hashes = hashes[rng.permutation(len(hashes))]
    expected, shape_only = brute_force(hashes)
    assert len(expected) > 50 and len(shape_only) > len(expected)  # something to find, something to leave out
    assert copy_pairs(hashes).tolist() == expected.tolist()


def test_copy_pairs_of_nothing_and_of_bad_input() -> None:
    assert copy_pairs(np.zeros((0, dupes.HASH_BYTES), np.uint8)).shape == (0, 2)
    assert copy_groups(np.zeros((0, dupes.HASH_BYTES), np.uint8)) == []
    with pytest.raises(ValueError, match="44"):
        copy_pairs(np.zeros((3, 40), np.uint8))
    with pytest.raises(ValueError, match="44"):
        hash_array([b"\0" * 44, b"\0" * 43])


def test_groups_are_stars_and_do_not_chain() -> None:
    """0-1-2-3-4 in a chain, each a copy of the next only: 1 leads (most copies, lowest index) and takes 0 and 2;
    3 then leads 4. 5 has the most copies of all (6, 7, 8) and leads first."""
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [5, 6], [5, 7], [5, 8], [6, 7]])
    assert dupes.star_groups(10, pairs) == [[5, 6, 7, 8], [1, 0, 2], [3, 4]]


# The best copy


def test_the_best_copy_is_the_largest_then_the_original_then_the_oldest() -> None:
    phone = dict(camera="Apple iPhone 12", taken="2021-06-05T10:00:00")
    files = [
        Candidate("mail/IMG_0001.jpg", 1024, 768, **phone, mtime=1.7e9),
        Candidate("export/IMG_0001.png", 4032, 3024, mtime=1.65e9),
        Candidate("backup/IMG_0001.HEIC", 4032, 3024, **phone, mtime=1.6e9),
        Candidate("phone/IMG_0001.HEIC", 4032, 3024, **phone, mtime=1.62e9),
        Candidate("edits/IMG_0001.jpg", 4032, 3024, taken="2021-06-05T10:00:00", mtime=1.63e9),
        Candidate("camera/IMG_0001.dng", 4032, 3024, **phone, mtime=1.64e9),
        Candidate("old/IMG_0001.jpg", 4032, 3024, camera="Apple iPhone 12", taken="2021-06-05T09:59:00"),
        Candidate("copy/IMG_0001.jpg", 4032, 3024, camera="Apple iPhone 12", mtime=1.5e9),
    ]
    expected = [
        ("camera/IMG_0001.dng", ""),
        ("old/IMG_0001.jpg", "not the RAW: JPEG from Apple iPhone 12 vs RAW"),
        ("backup/IMG_0001.HEIC", "not the RAW: HEIC from Apple iPhone 12 vs RAW"),
        ("phone/IMG_0001.HEIC", "not the RAW: HEIC from Apple iPhone 12 vs RAW"),
        ("copy/IMG_0001.jpg", "not the RAW: JPEG from Apple iPhone 12 vs RAW"),
        ("edits/IMG_0001.jpg", "re-encoded: JPEG without camera vs RAW"),
        ("export/IMG_0001.png", "re-encoded: PNG vs RAW"),
        ("mail/IMG_0001.jpg", "smaller: 1024x768 vs 4032x3024"),
    ]
    for seed in range(5):  # the order of the input does not matter
        shuffled = random.Random(seed).sample(files, len(files))
        assert [(r.candidate.path, r.reason) for r in rank_copies(shuffled)] == expected


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        (
            Candidate("b.jpg", 3000, 2000, "Canon EOS R6", "2022-01-01T00:00:00", 2.0),
            "newer: taken 2022-01-01T00:00:00",
        ),
        (Candidate("b.jpg", 3000, 2000, "Canon EOS R6", None, 2.0), "capture time unknown vs 2021-01-01T00:00:00"),
        (Candidate("b.jpg", 3000, 2000, "Canon EOS R6", "2021-01-01T00:00:00", 3.0), "newer: modified 1970"),
        (Candidate("b.jpg", 3000, 2000, "Canon EOS R6", "2021-01-01T00:00:00"), "modification time unknown"),
        (Candidate("b.jpg", 3000, 2000, "Canon EOS R6", "2021-01-01T00:00:00", 2.0), "the path sorts after a.jpg"),
        (Candidate("b.webp", 3000, 2000, "Canon EOS R6", "2021-01-01T00:00:00", 2.0), "re-encoded: WEBP vs JPEG"),
        (Candidate("b.jpg", 2000, 3000, None, "2020-01-01T00:00:00", 1.0), "re-encoded: JPEG without camera vs"),
        (Candidate("b.jpg", 2999, 2000, "Canon EOS R6", "2020-01-01T00:00:00", 1.0), "smaller: 2999x2000 vs 3000x2000"),
    ],
)
def test_each_other_copy_says_where_it_lost(other: Candidate, reason: str) -> None:
    best = Candidate("a.jpg", 3000, 2000, "Canon EOS R6", "2021-01-01T00:00:00", 2.0)
    ranked = rank_copies([other, best])
    assert [r.candidate for r in ranked] == [best, other]
    assert ranked[0].reason == ""
    assert reason in ranked[1].reason


def test_no_candidates_rank_to_nothing() -> None:
    assert rank_copies([]) == []


def test_hashing_is_deterministic_and_cheap() -> None:
    """Hashing costs a box average: far below the indexer's decode (about 20 ms for a 12 MP JPEG here)."""
    im = original("astronaut.jpg").resize((597, 448))
    hashes, timings = set(), []
    for _ in range(31):
        started = time.perf_counter()
        hashes.add(picture_hash(im))
        timings.append(time.perf_counter() - started)
    assert len(hashes) == 1
    assert statistics.median(timings) < 0.005  # about 0.5 ms on a Zen 4 core; generous for a busy machine


def test_hash_bytes_round_trip_through_an_array() -> None:
    hashes = [picture_hash(original(name)) for name in NAMES[:3]]
    array = hash_array(hashes)
    assert array.shape == (3, dupes.HASH_BYTES)
    assert [row.tobytes() for row in array] == hashes

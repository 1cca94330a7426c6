"""Decoding: every awkward kind of file becomes the picture a person sees, or a recorded reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch import Library, load_settings
from imgsearch.errors import ImageDecodeError
from imgsearch.images import MAX_ASPECT, REDUCED_SIDE, decode
from tests.conftest import SAMPLES, vitb32_overrides
from tests.imagefiles import TURNS, encode, gray16, rgb16_png, rgb16_tiff, widen, with_orientation

LIMIT = 178_956_970


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)], axis=-1)
    return Image.fromarray(rgb)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: the signature and IHDR of a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a JPEG\n", "not an image"),
        (encode(gradient(256, 256), "JPEG", quality=95)[:1500], "corrupt or truncated"),
        (encode(gradient(), "PNG")[:100], "corrupt or truncated"),
        (png_header_only(200_000, 200_000), "decompression bomb"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "bomb"],
)
def test_bad_files_raise_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode(data, LIMIT)


def test_png_with_bad_crc_is_refused() -> None:
    data = bytearray(encode(gradient(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(ImageDecodeError):
        decode(bytes(data), LIMIT)


def test_exif_rotation_is_applied() -> None:
    image = gradient(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    decoded = decode(encode(image, "JPEG", exif=exif, quality=95), LIMIT)
    assert decoded.size == (32, 64)
    upright = image.transpose(Image.Transpose.ROTATE_270)
    diff = np.abs(np.asarray(decoded, np.int16) - np.asarray(upright, np.int16)).mean()
    assert diff < 3


def test_16bit_png_is_scaled_not_clipped() -> None:
    values = np.linspace(0, 65535, 64 * 16, dtype=np.uint16).reshape(16, 64)
    decoded = np.asarray(decode(encode(Image.fromarray(values), "PNG"), LIMIT))
    assert decoded.shape == (16, 64, 3)
    assert decoded[..., 0].min() == 0 and decoded[..., 0].max() == 255
    assert 100 < decoded[8, 32, 0] < 155  # mid-grey stays mid-grey


def test_16bit_tiff_is_scaled() -> None:
    values = np.full((8, 8), 32768, dtype=np.uint16)
    decoded = np.asarray(decode(encode(Image.fromarray(values), "TIFF"), LIMIT))
    assert 120 <= decoded[0, 0, 0] <= 135


def test_palette_with_transparency_composites_on_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    decoded = np.asarray(decode(encode(image, "PNG", transparency=0), LIMIT))
    assert tuple(decoded[0, 0]) == (255, 0, 0)
    assert tuple(decoded[0, 7]) == (255, 255, 255)


def test_rgba_composites_on_white_and_cmyk_converts() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    assert tuple(np.asarray(decode(encode(rgba, "PNG"), LIMIT))[0, 0]) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    r, g, b = np.asarray(decode(encode(cmyk, "JPEG"), LIMIT))[0, 0]
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_takes_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, _ = np.asarray(decode(buf.getvalue(), LIMIT))[0, 0]
    assert r > 200 and g < 50


def test_large_jpeg_draft_decodes_at_least_twice_the_model_size() -> None:
    big = gradient(2000, 1500).resize((2000, 1500))
    decoded = decode(encode(big, "JPEG"), LIMIT, draft_side=224)
    assert min(decoded.size) >= 448 and decoded.size[0] < 2000
    assert decode(encode(big, "JPEG"), LIMIT).size == (2000, 1500)


def test_grayscale_and_bilevel_become_rgb() -> None:
    assert decode(encode(Image.new("L", (4, 4), 7), "PNG"), LIMIT).mode == "RGB"
    assert decode(encode(Image.new("1", (4, 4), 1), "PNG"), LIMIT).mode == "RGB"


def test_a_known_signature_that_cannot_be_read_is_called_truncated_not_foreign() -> None:
    gif = encode(gradient(), "GIF")
    for data in (gif[:20], b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", encode(gradient(), "WEBP")[:20]):
        with pytest.raises(ImageDecodeError, match="^corrupt or truncated image"):
            decode(data, LIMIT)


def test_a_decoder_surprise_becomes_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_plugin(*args: object, **kw: object) -> Image.Image:
        raise IndexError("list index out of range")  # what fuzzers find in Pillow's less used plugins

    monkeypatch.setattr(Image, "open", broken_plugin)
    with pytest.raises(ImageDecodeError, match=r"^cannot decode image \(IndexError: list index out of range\)$"):
        decode(encode(gradient(), "PNG"), LIMIT)


# Bounded work: strips and very large images


def test_a_strip_is_cropped_to_its_centre() -> None:
    strip = np.zeros((1, 100_000, 3), np.uint8)
    strip[0, 49_990:50_010] = (255, 0, 0)
    wide = decode(encode(Image.fromarray(strip), "PNG"), LIMIT)
    assert wide.size == (MAX_ASPECT, 1)
    assert (np.asarray(wide)[0] == (255, 0, 0)).all()
    tall = decode(encode(Image.fromarray(strip.transpose(1, 0, 2)), "PNG"), LIMIT)
    assert tall.size == (1, MAX_ASPECT)


def test_a_strip_gives_the_model_the_same_input(vitb32) -> None:  # type: ignore[no-untyped-def]
    """CLIP's preprocessing only sees the central square, so the crop changes nothing it sees."""
    strip = Image.open(SAMPLES / "rocket.jpg").convert("RGB").resize((30, 1500))
    data = encode(strip, "PNG")
    full = vitb32.preprocess(Image.open(io.BytesIO(data)).convert("RGB")).numpy().ravel()
    cropped = vitb32.prepare(decode(data, LIMIT)).ravel()
    assert decode(data, LIMIT).size == (30, 30 * MAX_ASPECT)
    assert float(full @ cropped / np.linalg.norm(full) / np.linalg.norm(cropped)) >= 0.999


def big(mode: str) -> tuple[Image.Image, str]:
    """A 1600x1200 photo in a mode, and a format that keeps that mode."""
    cup = Image.open(SAMPLES / "coffee-cup.jpg").convert("RGB").resize((1600, 1200))
    if mode == "1":
        return cup.convert("1"), "PNG"
    if mode == "P":
        return cup.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"
    if mode == "PA":
        return cup.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).convert("PA"), "TIFF"
    if mode == "I;16":
        return Image.fromarray(np.asarray(cup.convert("L"), np.uint16) * 257), "TIFF"
    return cup.convert(mode), "PNG"


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "P-transparent", "PA", "I;16"])
def test_large_images_are_reduced_for_the_model_keeping_their_look(mode: str) -> None:
    image, fmt = big(mode.split("-")[0])
    data = encode(image, fmt, **({"transparency": 0} if mode == "P-transparent" else {}))
    reduced = decode(data, LIMIT, draft_side=32)
    assert reduced.mode == "RGB" and reduced.size == (400, 300)  # by 4: the most that leaves 8 x 32 pixels
    full = decode(data, LIMIT)
    assert full.size == (1600, 1200)
    expected = np.asarray(full.resize(reduced.size, Image.Resampling.BOX), np.float32)
    assert np.abs(np.asarray(reduced, np.float32) - expected).mean() < 4


def tiled_texture(w: int, h: int) -> Image.Image:
    texture = Image.open(SAMPLES / "gravel.jpg").convert("RGB")
    tiled = Image.new("RGB", (w, h))
    for x in range(0, w, texture.width):
        for y in range(0, h, texture.height):
            tiled.paste(texture, (x, y))
    return tiled


@pytest.mark.parametrize("size", [(2048, 1536), (2739, 2049), (1031, 777)])
def test_reduction_keeps_the_model_input_on_fine_texture(tiny_embedder, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    """The worst case for a box reduction (as test_embed checks the JPEG draft), at the tiny model's
    32-pixel input, where one input pixel spans 64 of these: compared at the model's input."""
    data = encode(tiled_texture(*size), "PNG", compress_level=1)
    reduced = decode(data, LIMIT, tiny_embedder.input_size)
    assert REDUCED_SIDE * tiny_embedder.input_size <= min(reduced.size) <= min(size) // 2
    full = tiny_embedder.prepare(decode(data, LIMIT)).ravel()
    drafted = tiny_embedder.prepare(reduced).ravel()
    cos = float(full @ drafted / np.linalg.norm(full) / np.linalg.norm(drafted))
    assert cos >= 0.999, cos


def test_a_reduced_photo_gives_vitb32_the_same_input(vitb32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "big.bmp"  # not a JPEG, so reduced rather than drafted; quick to write and read
    Image.open(SAMPLES / "astronaut.jpg").convert("RGB").resize((3700, 3600)).save(path)
    reduced = decode(path.read_bytes(), LIMIT, vitb32.input_size)
    assert reduced.size == (1850, 1800)
    full = vitb32.preprocess(Image.open(path)).numpy().ravel()  # open_clip's recipe, on every pixel
    drafted = vitb32.prepare(reduced).ravel()
    cos = float(full @ drafted / np.linalg.norm(full) / np.linalg.norm(drafted))
    assert cos >= 0.9999, cos


# Fidelity through the product's own embedding path (Library.index), on the tiny model and on ViT-B-32


@pytest.fixture
def vit_lib(tmp_path: Path, vitb32, vitb32_checkpoint: Path):  # type: ignore[no-untyped-def]
    settings = load_settings(
        tmp_path / "vit-home",
        overrides=vitb32_overrides(vitb32_checkpoint),
        environ={},
    )
    with Library(settings, embedder=vitb32) as library:
        yield library


def stored_vectors(library: Library, folder: Path) -> dict[str, np.ndarray]:
    """Index folder; {file name: the vector stored for it}."""
    report = library.index([folder])
    assert not report.skipped
    ids, vectors = library.store.all_vectors()
    paths = library.store.paths_of(ids.tolist())
    return {Path(paths[i]).name: v for i, v in zip(ids.tolist(), vectors, strict=True)}


def photo() -> Image.Image:
    return Image.open(SAMPLES / "cat-chelsea.jpg").convert("RGB")


def write_orientations(folder: Path) -> Path:
    """The photo's pixels tagged with each EXIF orientation, the same turned by hand, and untagged."""
    folder.mkdir()
    stored = photo()
    for orientation, turn in TURNS.items():
        (folder / f"tagged-{orientation}.jpg").write_bytes(with_orientation(stored, orientation, quality=95))
        (folder / f"turned-{orientation}.jpg").write_bytes(encode(stored.transpose(turn), "JPEG", quality=95))
    (folder / "untagged.jpg").write_bytes(encode(stored, "JPEG", quality=95))
    return folder


def orientation_cosines(vectors: dict[str, np.ndarray]) -> dict[int, tuple[float, float]]:
    """Per orientation: cosine(tagged, turned) and, had the tag been ignored, cosine(untagged, turned)."""
    turned = {o: vectors[f"turned-{o}.jpg"] for o in TURNS}
    return {o: (float(vectors[f"tagged-{o}.jpg"] @ t), float(vectors["untagged.jpg"] @ t)) for o, t in turned.items()}


@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_exif_orientation_embeds_like_the_turned_photo(
    model: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    library = request.getfixturevalue("lib" if model == "tiny" else "vit_lib")
    cosines = orientation_cosines(stored_vectors(library, write_orientations(tmp_path / "photos")))
    print(
        f"\n{model}: "
        + ", ".join(f"{o}: {same:.4f} (ignored: {ignored:.4f})" for o, (same, ignored) in cosines.items())
    )
    for orientation, (same, ignored) in cosines.items():
        assert same >= 0.99, (orientation, same)
        assert ignored < 0.99, f"orientation {orientation} makes too little difference to this model to test"


def write_depths(folder: Path) -> Path:
    folder.mkdir()
    colour, grey = photo(), photo().convert("L")
    (folder / "rgb8.png").write_bytes(encode(colour, "PNG"))
    (folder / "rgb16.png").write_bytes(rgb16_png(widen(colour)))
    (folder / "rgb16.tif").write_bytes(rgb16_tiff(widen(colour)))
    (folder / "gray8.png").write_bytes(encode(grey, "PNG"))
    (folder / "gray16.png").write_bytes(gray16(grey, "PNG"))
    (folder / "gray16.tif").write_bytes(gray16(grey, "TIFF"))
    clipped = np.minimum(widen(colour), 255).astype(np.uint8)  # what a decoder that clips would see
    (folder / "rgb16-clipped.png").write_bytes(encode(Image.fromarray(clipped), "PNG"))
    return folder


def test_16bit_photos_decode_to_the_8bit_pixels(tmp_path: Path) -> None:
    folder = write_depths(tmp_path / "depths")
    pixels = {p.name: np.asarray(decode(p.read_bytes(), LIMIT), np.int16) for p in folder.iterdir()}
    for name in ("rgb16.png", "rgb16.tif"):
        assert np.abs(pixels[name] - pixels["rgb8.png"]).max() <= 1, name
    for name in ("gray16.png", "gray16.tif"):
        assert np.abs(pixels[name] - pixels["gray8.png"]).max() <= 1, name
    dark = np.asarray(photo().convert("L"), np.uint16)  # 16-bit values 0..255: nearly black, not "8-bit"
    assert np.asarray(decode(encode(Image.fromarray(dark), "PNG"), LIMIT)).max() <= 1


@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_16bit_photos_embed_like_their_8bit_copies(model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    library = request.getfixturevalue("lib" if model == "tiny" else "vit_lib")
    vectors = stored_vectors(library, write_depths(tmp_path / "depths"))
    cosines = {
        name: float(vectors[name] @ vectors[("gray8.png" if name.startswith("gray") else "rgb8.png")])
        for name in ("rgb16.png", "rgb16.tif", "gray16.png", "gray16.tif")
    }
    clipped = float(vectors["rgb16-clipped.png"] @ vectors["rgb8.png"])
    print(f"\n{model}: {cosines}; clipped: {clipped:.4f}")
    assert min(cosines.values()) >= 0.999, cosines
    assert clipped < 0.99, "the model would not notice clipping: this test would prove nothing"


def test_the_recorded_size_is_the_pictures_own_not_the_reduced_one(lib: Library, tmp_path: Path) -> None:
    """Decoding is reduced for the model, but the index records the size a viewer shows: EXIF turns included."""
    folder = tmp_path / "big"
    folder.mkdir()
    picture = photo().resize((1600, 1200))
    picture.save(folder / "landscape.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned a quarter: 1200 wide, 1600 high
    picture.save(folder / "turned.jpg", quality=90, exif=exif)
    picture.save(folder / "large.png")
    lib.index([folder])
    sizes = {}
    for image_id, path in lib.store.paths_of(lib.store.all_vectors()[0].tolist()).items():
        info = lib.image_info(image_id)
        sizes[Path(path).name] = (info.width, info.height)
    assert decode((folder / "landscape.jpg").read_bytes(), LIMIT, 32).size != (1600, 1200), "it was reduced"
    assert sizes == {"landscape.jpg": (1600, 1200), "turned.jpg": (1200, 1600), "large.png": (1600, 1200)}

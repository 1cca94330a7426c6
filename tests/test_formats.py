"""What phones and cameras write: HEIC, AVIF, JPEG XL and camera RAW (DNG), made here from the sample photos.

Each is indexed and found by its own picture at rank 1; the lossy ones reach the model within cosine 0.99 of
their source; orientation holds; a RAW beside its JPEG is that photo's original; the web page gets JPEGs.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from imgsearch import Library, images, load_settings, photometa, raw
from imgsearch.errors import ImageDecodeError
from imgsearch.indexer.scan import NameFilter
from imgsearch.types import PhotoMeta
from tests.conftest import SAMPLES, tiny_env, vitb32_overrides
from tests.imagefiles import TURNS, avif, dms, dng, encode, heic, jxl

LIMIT = 178_956_970


def sample(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    picture = Image.open(SAMPLES / name).convert("RGB")
    return picture.resize(size, Image.Resampling.LANCZOS) if size else picture


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    a = a.convert("RGB").resize(b.size, Image.Resampling.BOX)
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b.convert("RGB"), np.float32)).mean())


# The photos: each format made from its own sample, so that a query by that sample has one right answer.
BIG = (1200, 800)  # a RAW preview must be twice ViT-B-32's input (224) on its short side to be used
FORMATS: dict[str, tuple[str, str]] = {  # file name: (sample, how it is written)
    "cat.heic": ("cat-chelsea.jpg", "heic"),
    "astronaut.avif": ("astronaut.jpg", "avif"),
    "coffee.jxl": ("coffee-cup.jpg", "jxl"),
    "rocket.dng": ("rocket.jpg", "dng-preview"),
    "clock.dng": ("clock.jpg", "dng-mosaic"),
}
LOSSY = ("cat.heic", "astronaut.avif", "coffee.jxl", "rocket.dng")  # rocket.dng reaches the model as its JPEG
OTHERS = ("brick-wall.jpg", "grass.jpg", "gravel.jpg", "hubble-deep-field.jpg", "retina.jpg", "cameraman.jpg")


def write_format(path: Path, picture: Image.Image, how: str) -> None:
    if how == "heic":
        path.write_bytes(heic(picture))
    elif how == "avif":
        path.write_bytes(avif(picture))
    elif how == "jxl":
        path.write_bytes(jxl(picture))
    elif how == "dng-preview":
        path.write_bytes(dng(picture, preview=picture))
    else:
        path.write_bytes(dng(picture))


def write_photos(folder: Path) -> Path:
    folder.mkdir()
    for name, (source, how) in FORMATS.items():
        write_format(folder / name, sample(source, BIG), how)
    for name in OTHERS:
        shutil.copy(SAMPLES / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def indexed(  # type: ignore[no-untyped-def]
    tmp_path_factory: pytest.TempPathFactory, vitb32, vitb32_checkpoint: Path
) -> Iterator[tuple[Library, Path]]:
    root = tmp_path_factory.mktemp("formats")
    overrides = vitb32_overrides(vitb32_checkpoint)
    library = Library(load_settings(root / "home", overrides=overrides, environ={}), embedder=vitb32)
    folder = write_photos(root / "photos")
    report = library.index([folder])
    assert not report.skipped, report.skipped
    yield library, folder
    library.close()


def test_every_format_is_indexed_and_found_by_its_own_picture_at_rank_1(indexed: tuple[Library, Path]) -> None:
    library, _ = indexed
    assert library.store.count() == len(FORMATS) + len(OTHERS)
    for name, (source, _) in FORMATS.items():
        hits = library.query(images=[SAMPLES / source], k=3)
        assert Path(hits[0].path).name == name, (name, [(Path(h.path).name, round(h.score, 4)) for h in hits])


def test_lossy_formats_reach_the_model_within_099_of_their_source(indexed: tuple[Library, Path], vitb32) -> None:  # type: ignore[no-untyped-def]
    """At the model input (the preprocessed pixels) and as stored embeddings, against the source photo."""
    library, folder = indexed
    ids, vectors = library.store.all_vectors()
    by_name = {Path(p).name: vectors[list(ids).index(i)] for i, p in library.store.paths_of(ids.tolist()).items()}
    found = {}
    for name, (source, _) in FORMATS.items():
        data = (folder / name).read_bytes()
        decoded = images.decode(data, LIMIT, vitb32.input_size, raw_file=raw.is_raw(name))
        original = sample(source, BIG)
        at_input = cosine(vitb32.prepare(decoded), vitb32.prepare(original))
        embedded = cosine(by_name[name], vitb32.embed_images([original])[0])
        found[name] = (round(at_input, 4), round(embedded, 4))
    print("\n(model input, embedding) cosine to the source:", found)
    for name in LOSSY:
        assert min(found[name]) >= 0.99, (name, found[name])
    assert min(found["clock.dng"]) >= 0.95, found["clock.dng"]  # demosaiced by LibRaw: its own rendering


# Orientation


# What undoes each orientation's turn: the stored pixels of an upright picture
UNDO = {o: t for o, t in TURNS.items() if o not in (6, 8)}
UNDO |= {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def test_heic_orientation_turns_the_stored_pixels_upright() -> None:
    upright = sample("cat-chelsea.jpg")
    for orientation in TURNS:
        stored = upright.transpose(UNDO[orientation])
        decoded, size = images.decode_sized(heic(stored, orientation), LIMIT)
        assert decoded.size == size == upright.size, orientation
        assert mean_difference(decoded, upright) < 4, orientation


@pytest.mark.parametrize("preview", [False, True], ids=["demosaiced", "preview"])
def test_raw_orientation_turns_the_picture_upright(preview: bool) -> None:
    upright = sample("rocket.jpg")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back a quarter clockwise
    data = dng(stored, orientation=6, preview=stored if preview else None)
    decoded, size = images.decode_sized(data, LIMIT, 32, raw_file=True)
    assert size == upright.size
    assert decoded.width < decoded.height if upright.width < upright.height else decoded.width > decoded.height
    right, wrong = (
        mean_difference(decoded, upright),
        mean_difference(decoded, upright.transpose(Image.Transpose.ROTATE_180)),
    )
    print(f"\nmean difference to the upright picture {right:.1f}, to it turned 180 degrees {wrong:.1f}")
    assert right < (6 if preview else 0.5 * wrong)


def test_the_recorded_size_of_a_turned_raw_and_heic_is_upright(lib: Library, tmp_path: Path) -> None:
    stored = sample("rocket.jpg").transpose(Image.Transpose.ROTATE_90)
    (tmp_path / "raw.dng").write_bytes(dng(stored, orientation=6))
    (tmp_path / "phone.heic").write_bytes(heic(stored, orientation=6))
    assert lib.index([tmp_path]).skipped == []
    shown = lib.newest(k=5, all_copies=True)  # one picture twice: a search would show it once
    sizes = {Path(h.path).name: (lib.image_info(h.id).width, lib.image_info(h.id).height) for h in shown}
    assert sizes == {"raw.dng": (stored.height, stored.width), "phone.heic": (stored.height, stored.width)}


# RAW: preview or demosaic


def marked(picture: Image.Image) -> Image.Image:
    """The picture mirrored: a preview that says which path decoded the RAW."""
    return picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def test_a_raw_preview_twice_the_model_input_is_used_and_a_smaller_one_is_not() -> None:
    picture = sample("rocket.jpg", (600, 400))
    data = dng(picture, preview=marked(picture))
    by_preview = images.decode(data, LIMIT, 200, raw_file=True)  # 400 >= 2 x 200: the preview
    assert mean_difference(by_preview, marked(picture)) < mean_difference(by_preview, picture)
    demosaiced = images.decode(data, LIMIT, 201, raw_file=True)  # 400 < 2 x 201: LibRaw's half-size demosaic
    assert demosaiced.size == (300, 200)
    assert mean_difference(demosaiced, picture) < mean_difference(demosaiced, marked(picture))


def test_a_letterboxed_preview_is_not_taken_for_the_photo() -> None:
    picture = sample("rocket.jpg", (600, 400))  # 3:2
    letterboxed = Image.new("RGB", (1280, 720))  # 16:9, the photo inside black bars
    letterboxed.paste(marked(picture).resize((1080, 720)), (100, 0))
    decoded = images.decode(dng(picture, preview=letterboxed), LIMIT, 32, raw_file=True)
    assert decoded.size == (300, 200)  # demosaiced


def test_without_a_model_size_a_raw_is_never_decoded_beyond_half_size() -> None:
    picture = sample("rocket.jpg", (600, 400))
    assert images.decode(dng(picture), LIMIT, raw_file=True).size == (300, 200)
    with_preview = images.decode(dng(picture, preview=marked(picture)), LIMIT, raw_file=True)
    assert with_preview.size == (600, 400)  # a preview at least half the sensor is used as it is


def test_a_raw_over_max_pixels_is_a_bomb_before_any_pixel_is_read() -> None:
    data = dng(sample("rocket.jpg", (600, 400)), size=(12_288, 8_192))  # claims 100 MP; holds 0.24
    with pytest.raises(ImageDecodeError, match=r"^decompression bomb \(12288x8192 pixels, limit index.max_pixels="):
        images.decode(data, 50_000_000, raw_file=True)


def test_raw_and_jxl_sizes_come_from_the_header_alone() -> None:
    stored = sample("rocket.jpg").transpose(Image.Transpose.ROTATE_90)
    assert images.header_size(dng(stored, orientation=6), raw_file=True) == (stored.height, stored.width)
    assert images.header_size(jxl(stored)) == stored.size
    assert images.header_size(b"not an image", raw_file=True) == (0, 0)


def test_a_jpeg_saved_under_a_raw_name_is_read_as_a_jpeg() -> None:
    picture = sample("rocket.jpg")
    assert images.decode(encode(picture, "JPEG", quality=95), LIMIT, raw_file=True).size == picture.size


def test_jpeg_xl_takes_its_orientation_from_the_codestream_only() -> None:
    """A JPEG with EXIF orientation 6, recompressed losslessly to JPEG XL: libjxl moves the orientation into
    the codestream and keeps the Exif box; turning by both would turn the picture twice."""
    import pylibjxl

    upright = sample("rocket.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    decoded = images.decode(bytes(pylibjxl.jpeg_to_jxl(jpeg)), LIMIT)
    assert decoded.size == upright.size
    assert mean_difference(decoded, upright) < 4


# RAW+JPEG pairs: one photo, indexed through the JPEG, the RAW its original


def write_pair(folder: Path, stem: str = "IMG_0001") -> tuple[Path, Path]:
    folder.mkdir(exist_ok=True)
    picture = sample("rocket.jpg")
    jpeg, raw_file = folder / f"{stem}.JPG", folder / f"{stem}.DNG"
    jpeg.write_bytes(encode(picture, "JPEG", quality=92))
    raw_file.write_bytes(dng(picture))
    return jpeg, raw_file


def indexed_paths(library: Library) -> set[str]:
    return {Path(p).name for p in library.store.paths_of(library.store.all_vectors()[0].tolist()).values()}


def test_a_raw_jpeg_pair_is_one_photo_with_the_raw_as_its_original(lib: Library, tmp_path: Path) -> None:
    jpeg, raw_file = write_pair(tmp_path / "photos")
    alone = tmp_path / "photos" / "IMG_0002.dng"
    alone.write_bytes(dng(sample("clock.jpg")))
    report = lib.index([tmp_path / "photos"])
    assert (report.embedded, report.skipped) == (2, [])
    assert indexed_paths(lib) == {"IMG_0001.JPG", "IMG_0002.dng"}
    hits = {Path(h.path).name: h for h in lib.newest(k=5)}
    assert hits["IMG_0001.JPG"].raw == str(raw_file)
    assert hits["IMG_0002.dng"].raw is None
    assert lib.image(hits["IMG_0001.JPG"].id).raw == str(raw_file)
    assert lib.query(images=[jpeg], k=1)[0].raw == str(raw_file)


def test_a_raw_is_indexed_on_its_own_when_its_jpeg_goes_and_leaves_when_it_comes(lib: Library, tmp_path: Path) -> None:
    jpeg, raw_file = write_pair(tmp_path / "photos")
    lib.index([tmp_path / "photos"])
    kept = jpeg.read_bytes()
    jpeg.unlink()
    lib.index([tmp_path / "photos"])
    assert indexed_paths(lib) == {"IMG_0001.DNG"}
    assert lib.newest(k=1)[0].raw is None
    jpeg.write_bytes(kept)
    lib.index([str(jpeg), str(raw_file)])  # what `watch` hands the pipeline: the JPEG and the RAW beside it
    assert indexed_paths(lib) == {"IMG_0001.JPG"}


def test_watch_looks_again_at_the_raw_beside_a_jpeg_that_changed(tmp_path: Path) -> None:
    from imgsearch.indexer.watch import Watcher

    jpeg, raw_file = write_pair(tmp_path / "photos")
    (tmp_path / "photos" / "IMG_0001.txt").write_text("not an image")
    watcher = Watcher([str(tmp_path)], ["jpg", "dng"], [".*"], 0.1)
    assert watcher._with_raws([str(jpeg)]) == {str(jpeg), str(raw_file)}
    assert watcher._with_raws([str(raw_file)]) == {str(raw_file)}


def test_the_pair_rule_follows_the_indexed_extensions(tmp_path: Path) -> None:
    jpeg, raw_file = write_pair(tmp_path)
    assert NameFilter(["jpg", "dng"]).paired_raw(str(raw_file))
    assert not NameFilter(["png", "dng"]).paired_raw(str(raw_file))  # JPEGs are not indexed: the RAW stands alone
    assert NameFilter(["jpg", "dng"], ["IMG_0001.JPG"]).raw_of(str(jpeg)) == str(raw_file)
    assert NameFilter(["jpg", "dng"]).raw_of(str(raw_file)) is None


def test_query_json_names_the_raw_original(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    from imgsearch.cli import cli

    jpeg, raw_file = write_pair(tmp_path / "photos")
    env = {**tiny_env(tiny), "IMGSEARCH_HOME": str(tmp_path / "home")}
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(tmp_path / "photos")], env=env).exit_code == 0
    result = runner.invoke(cli, ["query", "--image", str(jpeg), "--json", "-k", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert [(h["path"], h["raw"]) for h in json.loads(result.output)] == [(str(jpeg), str(raw_file))]


# The web page: a JPEG for every format a browser cannot show


@pytest.fixture
def api(tmp_path: Path, tiny, tiny_embedder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from imgsearch.web.server import create_app
    from tests.conftest import tiny_overrides

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, (source, how) in FORMATS.items():
        write_format(folder / name, sample(source), how)
    write_pair(folder)
    overrides = {**tiny_overrides(tiny), "serve.thumbnail_size": "64"}
    library = Library(load_settings(tmp_path / "home", overrides=overrides, environ={}), embedder=tiny_embedder)
    library.index([folder])
    with TestClient(create_app(library, token="t", port=80), base_url="http://localhost") as client:
        yield client
    library.close()


def test_thumbnails_and_the_lightbox_get_jpegs_for_heic_jxl_and_raw(api: TestClient) -> None:
    # every file: the JPEG of the RAW+JPEG pair is the rocket again, a copy of rocket.dng
    hits = {h["name"]: h for h in api.get("/api/search", params={"copies": "all"}).json()["hits"]}
    assert set(hits) == {*FORMATS, "IMG_0001.JPG"}
    for name, hit in hits.items():
        thumbnail = api.get(hit["thumbnail"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg", name
        assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 64, name
        full = api.get(hit["original"])
        expected = "image/avif" if name.endswith(".avif") else "image/jpeg"  # browsers show AVIF themselves
        assert full.status_code == 200 and full.headers["content-type"] == expected, name
        picture = Image.open(io.BytesIO(full.content))
        source = sample(FORMATS[name][0]) if name in FORMATS else sample("rocket.jpg")
        assert abs(picture.width / picture.height - source.width / source.height) < 0.02, name
        assert mean_difference(picture, source) < 40, name
    pair = api.get(f"/api/images/{hits['IMG_0001.JPG']['id']}").json()
    assert pair["raw"].endswith("IMG_0001.DNG") and hits["IMG_0001.JPG"]["raw"] == pair["raw"]


# RAW metadata: when, with what and where, from the RAW file itself

SHOT = ("2024:07:14 18:02:11", "RF24-105mm F4 L IS USM", (48.8584, -2.2945))


def exif_tiff(tags: dict[int, object]) -> bytes:
    """A TIFF stream whose IFD0 holds tags (what a CR3's CMT boxes hold)."""
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    return exif.tobytes()[6:]  # without "Exif\0\0"


def box(kind: bytes, body: bytes) -> bytes:
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def shot(data: bytes, name: str = "IMG_0001.DNG") -> PhotoMeta:
    """What the index reads of a RAW in memory (imgsearch.photometa, as for a JPEG)."""
    return photometa.read(data, name, None)


def assert_shot(found: PhotoMeta, camera: str) -> None:
    assert (found.taken_iso, found.source, found.lens, found.camera) == ("2024-07-14T18:02:11", "exif", SHOT[1], camera)
    assert found.lat is not None and found.lon is not None
    assert np.allclose((found.lat, found.lon), SHOT[2], atol=1e-6)


def test_a_dng_says_when_with_what_and_where_it_was_shot(tmp_path: Path) -> None:
    data = dng(sample("rocket.jpg"), shot=SHOT)
    assert_shot(shot(data), "imgsearch test mosaic")
    assert_shot(shot(b"IIRO" + data[4:], "P1010001.ORF"), "imgsearch test mosaic")  # an ORF's header, TIFF inside
    undated = shot(dng(sample("rocket.jpg")), "IMG_0002.DNG")
    assert (undated.camera, undated.source, undated.lat) == ("imgsearch test mosaic", None, None)
    text = shot(b"not a raw file")
    assert (text.camera, text.taken, text.notes) == (None, None, "RAW header holds no EXIF")
    on_disk = tmp_path / "IMG_20240714_180211.DNG"
    on_disk.write_bytes(data)
    assert_shot(photometa.read(str(on_disk), str(on_disk), 0), "imgsearch test mosaic")  # the backfill's way


def gps_tags() -> dict[int, object]:
    lat, lon = SHOT[2]
    return {1: "N", 2: tuple(n / d for n, d in dms(lat)), 3: "W", 4: tuple(n / d for n, d in dms(lon))}


def test_a_cr3_and_a_raf_say_it_too() -> None:
    """The layouts Canon and Fujifilm write: CMT1/CMT2/CMT4 boxes (IFD0, Exif, GPS) in a CR3's moov box; in a
    RAF, the offset and length of a JPEG that carries the EXIF, at bytes 84-91 of its header."""
    cmt1 = exif_tiff({0x010F: "Canon", 0x0110: "Canon EOS R6"})
    cmt2 = exif_tiff({0x9003: SHOT[0], 0xA434: SHOT[1]})
    ftyp = box(b"ftyp", b"crx \0\0\0\1crx isom")
    cmt4 = exif_tiff(gps_tags())
    cr3 = ftyp + box(b"moov", box(b"uuid", bytes(16) + box(b"CMT1", cmt1) + box(b"CMT2", cmt2) + box(b"CMT4", cmt4)))
    assert_shot(shot(cr3, "IMG_0001.CR3"), "Canon EOS R6")

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "FUJIFILM", "X-T5"
    exif.get_ifd(0x8769).update({0x9003: SHOT[0], 0xA434: SHOT[1]})
    exif.get_ifd(0x8825).update(gps_tags())
    jpeg = encode(sample("rocket.jpg"), "JPEG", exif=exif)
    header = b"FUJIFILMCCD-RAW 0201FF383501".ljust(84, b"\0") + (100).to_bytes(4, "big") + len(jpeg).to_bytes(4, "big")
    assert_shot(shot(header.ljust(100, b"\0") + jpeg, "DSCF0001.RAF"), "FUJIFILM X-T5")

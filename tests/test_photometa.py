"""Reading capture dates, cameras and positions from real files (imgsearch.photometa, imgsearch.places)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pyexiv2
import pytest
from PIL.TiffImagePlugin import IFDRational

from imgsearch import photometa, places
from imgsearch.indexer import photos
from imgsearch.types import PhotoMeta
from tests.photofiles import BUENOS_AIRES, LISBON, SYDNEY, TOKYO, Shot, with_raw_exif, write

NIKON = Shot(
    taken="2019:07:14 16:20:05",
    offset="+09:00",
    make="NIKON CORPORATION",
    model="NIKON D750",
    lens="24-120mm f/4",
    gps=TOKYO,
)
MTIME = datetime(2021, 3, 4, 5, 6, 7).timestamp()


def read(path: Path) -> PhotoMeta:
    return photometa.read(str(path), str(path), path.stat().st_mtime_ns)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".heic", ".tif", ".webp"])
def test_every_format_gives_its_date_offset_camera_lens_and_position(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"photo{suffix}", NIKON, mtime=MTIME)
    for found in (read(path), photometa.read(path.read_bytes(), path.name, None)):  # from disk, from bytes
        assert (found.taken, found.offset, found.source) == ("2019-07-14T16:20:05", 9 * 60, "exif")
        assert found.taken_iso == "2019-07-14T16:20:05+09:00"
        assert (found.camera, found.lens) == ("NIKON D750", "24-120mm f/4")
        assert found.lat == pytest.approx(TOKYO[0], abs=1e-4) and found.lon == pytest.approx(TOKYO[1], abs=1e-4)
        assert found.notes == "" and found.version == photometa.VERSION


def test_the_files_are_what_exiv2_reads(tmp_path: Path) -> None:
    """The fixtures are real EXIF and XMP: exiv2 (what digiKam and darktable use) reads the same values."""
    for suffix in (".jpg", ".tif"):
        path = write(tmp_path / f"photo{suffix}", NIKON)
        with pyexiv2.Image(str(path)) as image:
            tags = image.read_exif()
        assert tags["Exif.Photo.DateTimeOriginal"] == "2019:07:14 16:20:05"
        assert tags["Exif.GPSInfo.GPSLatitudeRef"] == "N" and tags["Exif.Image.Model"] == "NIKON D750"
    path = write(tmp_path / "xmp.jpg", Shot(xmp={"photoshop:DateCreated": "2018-03-04T05:06:07+02:00"}))
    with pyexiv2.Image(str(path)) as image:
        assert image.read_xmp()["Xmp.photoshop.DateCreated"] == "2018-03-04T05:06:07+02:00"


@pytest.mark.parametrize(
    ("gps", "signs"), [(LISBON, (1, -1)), (TOKYO, (1, 1)), (SYDNEY, (-1, 1)), (BUENOS_AIRES, (-1, -1))]
)
def test_positions_in_every_hemisphere(tmp_path: Path, gps: tuple[float, float], signs: tuple[int, int]) -> None:
    found = read(write(tmp_path / "p.jpg", Shot(gps=gps)))
    assert (found.lat, found.lon) == (pytest.approx(gps[0], abs=1e-4), pytest.approx(gps[1], abs=1e-4))
    assert (found.lat > 0) == (signs[0] > 0) and (found.lon > 0) == (signs[1] > 0)


def test_the_sources_of_a_date_in_order_each_marked(tmp_path: Path) -> None:
    xmp = {"photoshop:DateCreated": "2018-03-04T05:06:07+02:00", "exif:DateTimeOriginal": "2017-01-01T00:00:00"}
    both = write(tmp_path / "IMG_20200101_101010.jpg", Shot(taken="2019:07:14 16:20:05", xmp=xmp), mtime=MTIME)
    assert (read(both).taken, read(both).source) == ("2019-07-14T16:20:05", "exif")
    no_exif = write(tmp_path / "IMG_20200101_101010.png", Shot(xmp=xmp), mtime=MTIME)
    assert (read(no_exif).taken, read(no_exif).offset, read(no_exif).source) == ("2018-03-04T05:06:07", 120, "xmp")
    xmp_exif_only = write(tmp_path / "x.tif", Shot(xmp={"exif:DateTimeOriginal": "2017-05-06T07:08:09Z"}))
    assert (read(xmp_exif_only).taken, read(xmp_exif_only).offset) == ("2017-05-06T07:08:09", 0)
    named = write(tmp_path / "IMG_20200101_101010.webp", Shot(make="Canon"), mtime=MTIME)
    assert (read(named).taken, read(named).offset, read(named).source) == ("2020-01-01T10:10:10", None, "filename")
    plain = write(tmp_path / "holiday.jpg", Shot(), mtime=MTIME)
    local = datetime.fromtimestamp(MTIME).astimezone()
    assert (read(plain).taken, read(plain).source) == ("2021-03-04T05:06:07", "mtime")
    assert read(plain).offset == int(local.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "taken"),
    [
        ("IMG_20230512_140322.jpg", "2023-05-12T14:03:22"),
        ("PXL_20230512_140322123.jpg", "2023-05-12T14:03:22"),
        ("PXL_20230512_140322123.MP.jpg", "2023-05-12T14:03:22"),
        ("2023-05-12 14.03.22.jpg", "2023-05-12T14:03:22"),
        ("Screenshot_20230512-140322.png", "2023-05-12T14:03:22"),
        ("20230512_140322.heic", "2023-05-12T14:03:22"),
        ("IMG-20230512-WA0001.jpg", "2023-05-12T00:00:00"),
        ("signal-2023-05-12-140322.jpg", "2023-05-12T14:03:22"),
        ("holiday 2023_05_12.jpg", "2023-05-12T00:00:00"),
        ("a3f20230512ee.jpg", None),  # a hash, not a date
        ("IMG_1234.jpg", None),
        ("IMG_20231345_000000.jpg", None),  # no 45th day of a 13th month
        ("IMG_18000101_000000.jpg", None),  # before photography
    ],
)
def test_dates_in_file_names(name: str, taken: str | None) -> None:
    found = photometa.read(b"", name, None)
    assert (found.taken, found.source) == (taken, "filename" if taken else None)


def test_broken_or_absurd_exif_leaves_the_field_empty_with_the_reason(tmp_path: Path) -> None:
    absurd = Shot(
        taken="0000:00:00 00:00:00",
        offset="+99:00",
        make=b"\xff\xfe\x00\x81 garbage",  # bytes where text belongs (written as UNDEFINED)
        model="EOS R5",
        gps_raw=("N", (IFDRational(900, 1), IFDRational(0, 1), IFDRational(0, 1)), "E", (IFDRational(1, 0),)),
    )
    found = read(write(tmp_path / "IMG_20200101_101010.jpg", absurd))
    assert (found.taken, found.source) == ("2020-01-01T10:10:10", "filename"), "the next source takes over"
    assert found.camera == "EOS R5" and found.lat is None and found.lon is None
    for reason in ("DateTimeOriginal '0000:00:00 00:00:00' is not a date", "Make holds bytes", "latitude 900"):
        assert reason in found.notes
    future = read(write(tmp_path / "f.jpg", Shot(taken="2099:01:01 00:00:00", offset="+9:00")))
    assert future.source == "mtime" and "'2099:01:01 00:00:00' is not a date" in future.notes
    nowhere = read(write(tmp_path / "n.jpg", Shot(gps=(0.0, 0.0))))
    assert nowhere.lat is None and "0, 0" in nowhere.notes
    wrong_ref = read(write(tmp_path / "r.jpg", Shot(gps_raw=("Q", (IFDRational(1, 1),), "E", (IFDRational(1, 1),)))))
    assert wrong_ref.lat is None and "reference 'Q'" in wrong_ref.notes


@pytest.mark.parametrize(
    "raw",
    [
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",  # an IFD that claims 65535 entries and ends
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x87\x69\x00\x04\x00\x00\x00\x01\x7f\xff\xff\xff",  # far offset
        b"Exif\x00\x00garbage, not TIFF at all",
        b"\x00" * 40,
    ],
)
def test_garbage_exif_blocks_are_noted_and_the_rest_still_counts(tmp_path: Path, raw: bytes) -> None:
    path = with_raw_exif(tmp_path / "IMG_20200101_101010.jpg", raw)
    found = read(path)
    assert (found.taken, found.source) == ("2020-01-01T10:10:10", "filename")
    assert found.camera is None and found.lat is None


def test_not_an_image_still_has_its_name_and_mtime() -> None:
    found = photometa.read(b"not an image at all", "/x/notes.jpg", int(MTIME * 1e9))
    assert found.source == "mtime" and "header unreadable" in found.notes


def test_camera_names_are_make_and_model_once(tmp_path: Path) -> None:
    cases = [
        (Shot(make="Canon", model="Canon EOS 5D Mark II"), "Canon EOS 5D Mark II"),
        (Shot(make="Apple", model="iPhone 12"), "Apple iPhone 12"),
        (Shot(make="NIKON CORPORATION", model="NIKON D750"), "NIKON D750"),
        (Shot(make="FUJIFILM  ", model="X-T3\x00\x00"), "FUJIFILM X-T3"),
        (Shot(make="Google"), "Google"),
    ]
    for i, (shot, camera) in enumerate(cases):
        assert read(write(tmp_path / f"{i}.jpg", shot)).camera == camera


@pytest.mark.skipif(not places.available(), reason="the places extra (reverse_geocoder) is not installed")
@pytest.mark.parametrize(
    ("gps", "place"),
    [
        (LISBON, "Lisbon, Portugal"),
        (TOKYO, "Tokyo, Japan"),
        (SYDNEY, "Sydney, New South Wales, Australia"),
        (BUENOS_AIRES, "Buenos Aires, Buenos Aires F.D., Argentina"),
    ],
)
def test_places_are_named_offline(tmp_path: Path, gps: tuple[float, float], place: str) -> None:
    path = write(tmp_path / "p.jpg", Shot(gps=gps))
    assert photos.describe(str(path), str(path), None).place == place


def test_reading_a_header_is_fast(tmp_path: Path) -> None:
    """Only the header is read: a 24 MP JPEG's metadata costs no decode (about a millisecond)."""
    from PIL import Image

    big = write(tmp_path / "big.jpg", NIKON, Image.new("RGB", (6000, 4000), "gray"))
    started = time.perf_counter()
    for _ in range(20):
        assert read(big).camera == "NIKON D750"
    assert (time.perf_counter() - started) / 20 < 0.02

"""Capture date, camera and place in the index, on both stores: every filter, with text, image, tag and folder
terms; date sorting; listings without text; what --json and status say; the backfill of an index made before
revision 0005 (no model call); export, import and migrate carry the fields; a photo with garbage EXIF is indexed.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner

from imgsearch import Library, load_settings, places
from imgsearch.cli import cli
from imgsearch.store import repository
from imgsearch.types import Progress
from tests import tinyclip
from tests.conftest import tiny_env, tiny_overrides
from tests.photofiles import BUENOS_AIRES, LISBON, SYDNEY, TOKYO, Shot, picture, with_raw_exif, write

pytestmark = pytest.mark.both_stores
PLACES = places.available()
OLD = datetime(2017, 5, 5, 12, 0, 0).timestamp()  # the mtime of every test photo


def shoot(folder: Path) -> dict[str, Path]:
    """A library of trips: {name: path}. Every mtime is OLD, so that only the file-time photos date from it."""
    canon = {"make": "Canon", "model": "Canon EOS 5D Mark II", "lens": "EF24-105mm f/4L IS USM"}
    nikon = {"make": "NIKON CORPORATION", "model": "NIKON D750"}
    xmp = {"photoshop:DateCreated": "2020-02-03T04:05:06-03:00"}
    shots: dict[str, tuple[str, Shot, str, str]] = {
        "lisbon1": ("trips/lisbon/a.jpg", Shot("2019:07:14 10:00:00", "+01:00", gps=LISBON, **canon), "red", "circle"),
        "lisbon2": (
            "trips/lisbon/b.heic",
            Shot("2019:07:15 18:30:00", "+01:00", gps=LISBON, **canon),
            "blue",
            "square",
        ),
        "tokyo": (
            "trips/tokyo.jpg",
            Shot("2023:06:01 00:30:00", "+09:00", "Apple", "iPhone 12", gps=TOKYO),
            "red",
            "circle",
        ),
        "sydney": ("trips/sydney.tif", Shot("2021:12:25 09:00:00", gps=SYDNEY, **nikon), "green", "triangle"),
        "baires": ("ba.png", Shot(gps=BUENOS_AIRES, xmp=xmp), "red", "square"),
        "pixel": ("PXL_20220808_120000000.jpg", Shot(), "blue", "circle"),
        "plain": ("plain.png", Shot(), "green", "circle"),
    }
    out = {}
    for name, (relative, shot, color, shape) in shots.items():
        out[name] = write(folder / relative, shot, picture(len(out), color, shape), mtime=OLD)
    garbage = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff"  # an IFD that claims 65535 entries and ends
    out["garbage"] = with_raw_exif(folder / "garbage.jpg", garbage, picture(9, "red", "triangle"))
    os.utime(out["garbage"], (OLD + 60, OLD + 60))
    return out


@pytest.fixture
def trips(lib: Library, tmp_path: Path) -> dict[str, Path]:
    photos = shoot(tmp_path / "photos")
    report = lib.index([tmp_path / "photos"])
    assert report.embedded == len(photos) and not report.skipped, "garbage EXIF costs no file its place"
    return photos


def names(hits: list[Any], photos: dict[str, Path]) -> list[str]:
    by_path = {str(p): name for name, p in photos.items()}
    return [by_path[h.path] for h in hits]


def found(lib: Library, photos: dict[str, Path], text: str = "", **kw: Any) -> set[str]:
    return set(names(lib.query(text, k=50, **kw), photos))


def test_every_filter_alone_and_with_text_image_tag_and_folder_terms(lib: Library, trips: dict[str, Path]) -> None:
    assert found(lib, trips, "a red circle", after="2019-07", before="2019-07") == {"lisbon1", "lisbon2"}
    assert found(lib, trips, "a red circle", after="2023-06-01") == {"tokyo"}, "00:30 local on 1 June is June"
    assert found(lib, trips, "a red circle", before="2019") == {"lisbon1", "lisbon2", "plain", "garbage"}
    assert found(lib, trips, "a red circle", after="2020", before="2022-08-08") == {"baires", "sydney", "pixel"}
    assert found(lib, trips, "a red circle", after="2022-08-09", before="2023-05") == set()
    assert found(lib, trips, "a red circle", camera="canon") == {"lisbon1", "lisbon2"}
    assert found(lib, trips, "a red circle", camera="IPHONE") == {"tokyo"}
    assert found(lib, trips, "a red circle", camera="nikon d7") == {"sydney"}
    assert found(lib, trips, "a red circle", camera="Leica") == set()
    if PLACES:
        assert found(lib, trips, "a red circle", place="lisbon") == {"lisbon1", "lisbon2"}
        assert found(lib, trips, "a red circle", place="JAPAN") == {"tokyo"}
        assert found(lib, trips, "a red circle", place="argentina", after="2020-02") == {"baires"}
    assert found(lib, trips, images=[trips["lisbon1"]], camera="Canon") == {"lisbon1", "lisbon2"}
    lib.set_tag("favourite", [trips["lisbon1"], trips["tokyo"], trips["plain"]])
    assert found(lib, trips, "a red circle", tags=["favourite"], camera="canon") == {"lisbon1"}
    assert found(lib, trips, tags=["favourite"], before="2020") == {"lisbon1", "plain"}
    assert found(lib, trips, "a red circle", path_prefix=trips["tokyo"].parent, after="2021") == {"tokyo", "sydney"}
    best = lib.query("a red circle", k=2, camera="canon")
    assert names(best, trips) == ["lisbon1", "lisbon2"], "the k best among the filtered, by relevance"


def test_date_sorting_and_listings_without_text(lib: Library, trips: dict[str, Path]) -> None:
    oldest = ["plain", "garbage", "lisbon1", "lisbon2", "baires", "sydney", "pixel", "tokyo"]
    assert names(lib.query(after="1990", sort="date", k=50), trips) == oldest
    assert names(lib.query(after="1990", sort="-date", k=50), trips) == oldest[::-1]
    assert names(lib.query(camera="canon", k=50), trips) == ["lisbon2", "lisbon1"], "a listing: newest first"
    assert names(lib.query(camera="canon", sort="date", k=1), trips) == ["lisbon1"]
    top = lib.query("a red circle", k=4)
    assert names(lib.query("a red circle", k=4, sort="date"), trips) == [n for n in oldest if n in names(top, trips)], (
        "the same k hits, in order of capture"
    )
    if PLACES:
        assert names(lib.query(place="Lisbon", sort="date"), trips) == ["lisbon1", "lisbon2"]


def test_hits_carry_the_photo_fields(lib: Library, trips: dict[str, Path]) -> None:
    tokyo = next(h for h in lib.query("a red circle", k=50) if h.path == str(trips["tokyo"]))
    assert (tokyo.taken, tokyo.taken_source, tokyo.camera, tokyo.lens) == (
        "2023-06-01T00:30:00+09:00",
        "exif",
        "Apple iPhone 12",
        None,
    )
    assert (tokyo.lat, tokyo.lon) == (pytest.approx(TOKYO[0], abs=1e-4), pytest.approx(TOKYO[1], abs=1e-4))
    assert tokyo.place == ("Tokyo, Japan" if PLACES else None)
    by_name = {names([h], trips)[0]: h for h in lib.query(after="1990", k=50)}
    assert by_name["baires"].taken == "2020-02-03T04:05:06-03:00" and by_name["baires"].taken_source == "xmp"
    assert (by_name["pixel"].taken, by_name["pixel"].taken_source) == ("2022-08-08T12:00:00", "filename")
    assert by_name["plain"].taken_source == "mtime" and by_name["plain"].taken.startswith("2017-05-05T12:00:00")
    info = lib.image(tokyo.id)
    assert info.photo.camera == "Apple iPhone 12" and info.photo.taken_iso == tokyo.taken
    garbage = lib.image(by_name["garbage"].id).photo
    assert garbage.camera is None and "EXIF" in garbage.notes and garbage.source == "mtime"


def test_status_counts_each_field(lib: Library, trips: dict[str, Path]) -> None:
    counts = lib.status().photos
    assert counts.taken == {"exif": 4, "xmp": 1, "filename": 1, "mtime": 2}
    assert (counts.camera, counts.lens, counts.gps, counts.unread) == (4, 2, 5, 0)
    assert (counts.place, counts.unnamed) == ((5, 0) if PLACES else (0, 5))
    if PLACES:
        assert lib.values("place")[0] == ("Lisbon, Portugal", 2)
    assert lib.values("camera") == [("Canon EOS 5D Mark II", 2), ("Apple iPhone 12", 1), ("NIKON D750", 1)]


def test_cli_filters_json_and_one_line_errors(trips: dict[str, Path], tiny, home: Path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner(env=tiny_env(tiny))
    done = runner.invoke(cli, ["query", "--camera", "canon", "--sort", "-date", "--json"])  # "-date" is a value
    assert done.exit_code == 0, done.output
    hits = json.loads(done.output)
    assert [Path(h["path"]).name for h in hits] == ["b.heic", "a.jpg"]
    assert set(hits[0]) >= {"taken", "taken_source", "camera", "lens", "place", "lat", "lon", "score"}
    assert hits[0]["taken"] == "2019-07-15T18:30:00+01:00" and hits[0]["lens"] == "EF24-105mm f/4L IS USM"
    text = runner.invoke(cli, ["query", "a red circle", "--after", "2019", "--before", "2019", "--sort=date"])
    assert text.exit_code == 0 and text.output.splitlines()[0].startswith("2019-07-14T10:00:00+01:00\t")
    status = runner.invoke(cli, ["status"])
    assert "capture dates" in status.output and "4 EXIF, 1 XMP, 1 file name, 2 file time" in status.output
    for args, message in [
        (["--after", "June"], "--after takes a date like 2023, 2023-06 or 2023-06-14, not 'June'"),
        (["--before", "2023-13"], "--before takes a date like"),
        (["--after", "2024", "--before", "2023"], "--after 2024 is later than --before 2023"),
        (["--sort", "size"], "--sort takes relevance, date, -date, not 'size'"),
        (["--camera", "canon", "--generate-if-missing"], "--generate-if-missing works with a text query alone"),
    ]:
        bad = runner.invoke(cli, ["query", "a cat", *args])
        assert bad.exit_code == 2, bad.output
        assert message in bad.output
        if "generate" not in message:  # that one is click's own usage error, with its usage lines
            assert len(bad.output.strip().splitlines()) == 1, bad.output


def test_a_selective_filter_still_returns_its_k_best(lib: Library, tmp_path: Path) -> None:
    """Three photos of 2016 among sixty of 2015: the three come back, and they are the exact best among them."""
    folder = tmp_path / "many"
    for i in range(60):
        color, shape = tinyclip.CLASSES[i % len(tinyclip.CLASSES)]
        taken = "2016:01:01 10:00:00" if i % 20 == 0 else "2015:01:01 10:00:00"
        write(folder / f"{i:02d}.jpg", Shot(taken=taken), picture(i, color, shape))
    lib.index([folder])
    query = lib.query_vector(lib.parse_query("a red circle"))
    ids, vectors = lib.store.all_vectors()
    allowed = lib.store.allowed_ids(None, (), _year(2016))
    assert allowed is not None and len(allowed) == 3
    exact = [int(i) for i in ids[np.argsort(-(vectors @ query))] if i in set(allowed.tolist())]
    for k in (2, 3, 10):
        hits = lib.query("a red circle", k=k, after="2016", before="2016")
        assert [h.id for h in hits] == exact[:k]


def _year(year: int) -> Any:
    from imgsearch.search.dates import photo_filter

    return photo_filter(str(year), str(year))


def test_backfill_of_an_index_made_before_the_upgrade_embeds_nothing(
    lib: Library, trips: dict[str, Path], tiny, tiny_embedder, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    before = {h.path: h for h in lib.query(after="1990", k=50)}
    database = lib.settings.store.url or lib.settings.database_path
    lib.close()
    _downgrade(repository.Store(database), "0004")
    calls: list[int] = []
    for name in ("embed_prepared", "embed_images", "embed_texts"):
        real = getattr(tiny_embedder, name)
        monkeypatch.setattr(tiny_embedder, name, lambda x, real=real: calls.append(len(x)) or real(x))
    upgraded = Library(load_settings(home, overrides=tiny_overrides(tiny)), embedder=tiny_embedder)
    assert upgraded.status().photos.unread == len(trips), "after the upgrade nothing is read yet"
    events: list[Progress] = []
    report = upgraded.index(on_progress=events.append)
    assert calls == [], "no model call: headers only"
    assert report.embedded == 0 and report.photos_read == len(trips)
    assert [e.done for e in events if e.phase == "photos"][-1] == len(trips)
    after = {h.path: h for h in upgraded.query(after="1990", k=50)}
    assert after == before, "the same fields as when indexed"
    assert upgraded.index().photos_read == 0, "once"
    upgraded.close()


def _downgrade(store: repository.Store, revision: str) -> None:
    """Take a current database back to an older schema, as an imgsearch of that time left it."""
    config = Config()
    config.set_main_option("script_location", str(repository.MIGRATIONS))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
    store.close()


def test_export_import_carry_the_fields(lib: Library, trips: dict[str, Path], tmp_path: Path, request) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    lib.export_embeddings(tmp_path / "export")
    table = pq.read_table(tmp_path / "export" / "metadata").to_pylist()
    tokyo = next(r for r in table if r["image_path"] == str(trips["tokyo"]))
    assert (tokyo["taken"], tokyo["taken_source"], tokyo["camera"]) == (
        "2023-06-01T00:30:00+09:00",
        "exif",
        "Apple iPhone 12",
    )
    overrides = tiny_overrides(request.getfixturevalue("tiny"))
    if lib.store.postgres:
        overrides["store.url"] = request.getfixturevalue("postgres").new_database()
    other = Library(load_settings(tmp_path / "home2", overrides=overrides), embedder=lib.embedder)
    other.import_embeddings(tmp_path / "export")
    assert {h.path: h for h in other.query(after="1990", k=50)} == {h.path: h for h in lib.query(after="1990", k=50)}
    assert other.status().photos.unread == 0
    other.close()


def test_the_api_takes_the_same_filters_and_describes_them(lib: Library, trips: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from imgsearch.web.server import create_app

    with TestClient(create_app(lib, token="t", port=80), base_url="http://localhost") as api:
        listing = api.get("/api/search", params={"camera": "canon", "sort": "date"}).json()
        assert [Path(h["path"]).name for h in listing["hits"]] == ["a.jpg", "b.heic"]
        assert listing["hits"][0]["score"] is None, "a listing has no score"
        first = listing["hits"][0]
        assert (first["taken"], first["taken_source"], first["camera"]) == (
            "2019-07-14T10:00:00+01:00",
            "exif",
            "Canon EOS 5D Mark II",
        )
        text = api.get("/api/search", params={"q": "a red circle", "after": "2023", "limit": 5}).json()
        assert [Path(h["path"]).name for h in text["hits"]] == ["tokyo.jpg"] and text["hits"][0]["score"] > 0
        with trips["lisbon1"].open("rb") as f:
            form = {"camera": "canon", "sort": "-date"}
            by_image = api.post("/api/search/image", files={"file": f}, data=form, headers={"X-Imgsearch-Token": "t"})
        assert [Path(h["path"]).name for h in by_image.json()["hits"]] == ["b.heic", "a.jpg"]
        bad = api.get("/api/search", params={"q": "cat", "after": "June"})
        assert bad.status_code == 400 and "--after takes a date" in bad.json()["detail"]
        image = api.get(f"/api/images/{first['id']}").json()
        assert image["camera"] == "Canon EOS 5D Mark II" and image["lens"] == "EF24-105mm f/4L IS USM"
        facets = api.get("/api/facets").json()
        assert facets["cameras"][0] == {"value": "Canon EOS 5D Mark II", "images": 2}
        assert [p["value"] for p in facets["places"]][:1] == (["Lisbon, Portugal"] if PLACES else [])
        spec = api.get("/openapi.json").json()
        params = {p["name"]: p for p in spec["paths"]["/api/search"]["get"]["parameters"]}
        assert {"after", "before", "camera", "place", "sort"} <= set(params)
        assert "2023-06" in params["after"]["description"]
        assert "taken" in spec["components"]["schemas"]["HitOut"]["properties"]


def test_migrate_carries_the_fields(lib: Library, trips: dict[str, Path], tiny, home: Path, request) -> None:  # type: ignore[no-untyped-def]
    before = {h.path: h for h in lib.query(after="1990", k=50)}
    url = "" if lib.store.postgres else request.getfixturevalue("postgres").new_database()
    lib.migrate(url or "sqlite")  # SQLite into PostgreSQL, or PostgreSQL back into SQLite
    other = Library(load_settings(home, overrides={**tiny_overrides(tiny), "store.url": url}), embedder=lib.embedder)
    assert other.store.postgres != lib.store.postgres
    assert {h.path: h for h in other.query(after="1990", k=50)} == before
    assert other.status().photos == lib.status().photos
    other.close()


def test_tag_export_leaves_the_dates_of_existing_sidecars_alone(lib: Library, trips: dict[str, Path]) -> None:
    import pyexiv2

    photo = trips["lisbon1"]
    sidecar = photo.with_name(photo.name + ".xmp")
    sidecar.write_text(
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        ' <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
        ' xmp:CreateDate="2019-07-14T10:00:00+01:00" xmp:ModifyDate="2024-01-02T03:04:05+01:00"'
        ' photoshop:DateCreated="2019-07-14T10:00:00.25+01:00">\n'
        "  <exif:DateTimeOriginal>2019-07-14T10:00:00+01:00</exif:DateTimeOriginal>\n"
        ' </rdf:Description>\n</rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>',
        encoding="utf-8",
    )

    def dates() -> dict[str, str]:
        with pyexiv2.Image(str(sidecar)) as read:
            return {k: v for k, v in read.read_xmp().items() if "Date" in k}

    before = dates()
    assert len(before) == 4
    lib.set_tag("portugal", [photo])
    assert lib.export_xmp().written == 1
    assert dates() == before, "the export touched none of the date fields"
    with pyexiv2.Image(str(sidecar)) as read:
        assert "portugal" in str(read.read_xmp()["Xmp.dc.subject"])

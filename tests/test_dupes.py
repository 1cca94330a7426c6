"""Duplicates in the index (imgsearch dupes, collapsed results), with random-init weights: the groups come from the
pixels alone (and hold when every embedding is made the same, as CLIP sees pictures with some random weights).

The library: the sample photos, and copies of them as a real library holds them: an exact copy in a backup folder,
a JPEG re-encoded at q=50, half- and quarter-size copies, a PNG -> WebP -> HEIC chain, a 2% crop, an EXIF-turned
copy, and a grey-scale copy (an edit: not a copy of its colour original; see imgsearch.dupes).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgsearch import Library, load_settings
from imgsearch.cli import cli
from imgsearch.store import repository
from imgsearch.types import Progress
from tests.conftest import SAMPLES, vitb32_overrides
from tests.imagefiles import encode, heic, with_orientation

COLOUR_SAMPLES = ["astronaut", "brick-wall", "cat-chelsea", "clock", "coffee-cup", "grass", "gravel", "rocket"]


def sample(name: str) -> Image.Image:
    return Image.open(SAMPLES / f"{name}.jpg").convert("RGB")


def write_library(folder: Path) -> tuple[list[set[str]], dict[str, str]]:
    """The photos and their copies: (the expected groups as sets of paths, {role: path})."""
    folder.mkdir(parents=True)
    (folder / "backup").mkdir()
    paths: dict[str, str] = {}

    def put(role: str, name: str, data: bytes) -> str:
        path = folder / name
        path.write_bytes(data)
        paths[role] = str(path)
        return str(path)

    for name in [*COLOUR_SAMPLES, "cameraman", "hubble-deep-field", "retina"]:
        shutil.copy(SAMPLES / f"{name}.jpg", folder / f"{name}.jpg")
        paths[name] = str(folder / f"{name}.jpg")
    shutil.copy(SAMPLES / "rocket.jpg", folder / "backup" / "rocket.jpg")
    paths["rocket exact"] = str(folder / "backup" / "rocket.jpg")
    put("cat q50", "backup/cat-chelsea.jpg", encode(sample("cat-chelsea"), "JPEG", quality=50))
    astronaut = sample("astronaut")
    put("astronaut half", "astronaut-half.jpg", encode(astronaut.resize((256, 256)), "JPEG", quality=90))
    put("astronaut quarter", "astronaut-quarter.png", encode(astronaut.resize((128, 128)), "PNG"))
    coffee = sample("coffee-cup")
    put("coffee png", "coffee.png", encode(coffee, "PNG"))
    put("coffee webp", "coffee.webp", encode(Image.open(paths["coffee png"]), "WEBP", quality=90))
    put("coffee heic", "coffee.heic", heic(Image.open(paths["coffee webp"]).convert("RGB")))
    clock = sample("clock")
    w, h = clock.size
    put("clock crop", "clock-crop.jpg", encode(clock.crop((0, 0, round(w * 0.98), h)), "JPEG", quality=92))
    stored = sample("brick-wall").transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back upright
    put("brick turned", "brick-turned.jpg", with_orientation(stored, 6, quality=92))
    put("cat grey", "cat-grey.jpg", encode(sample("cat-chelsea").convert("L").convert("RGB"), "JPEG", quality=92))
    groups = [
        {paths["rocket"], paths["rocket exact"]},
        {paths["cat-chelsea"], paths["cat q50"]},
        {paths["astronaut"], paths["astronaut half"], paths["astronaut quarter"]},
        {paths["coffee-cup"], paths["coffee png"], paths["coffee webp"], paths["coffee heic"]},
        {paths["clock"], paths["clock crop"]},
        {paths["brick-wall"], paths["brick turned"]},
    ]
    return groups, paths


@pytest.fixture(scope="module")
def indexed(  # type: ignore[no-untyped-def]
    tmp_path_factory: pytest.TempPathFactory, vitb32, vitb32_checkpoint: Path
) -> Iterator[tuple[Library, list[set[str]], dict[str, str]]]:
    root = tmp_path_factory.mktemp("dupes")
    overrides = vitb32_overrides(vitb32_checkpoint)
    library = Library(load_settings(root / "home", overrides=overrides, environ={}), embedder=vitb32)
    groups, paths = write_library(root / "photos")
    report = library.index([root / "photos"])
    assert not report.skipped and report.embedded + report.copied == len(paths)
    yield library, groups, paths
    library.close()


def test_groups_hold_when_clip_sees_every_picture_alike(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Random weights can put unrelated pictures at cosine 0.9998: here every stored embedding is made the same,
    and the groups do not move, since they come from the pixels alone."""
    from imgsearch.indexer import copies

    lib, expected, _ = indexed
    home = tmp_path / "home"
    shutil.copytree(lib.settings.home, home, ignore=shutil.ignore_patterns("thumbnails", "models"))
    with sqlite3.connect(home / "imgsearch.db") as db:
        db.execute("UPDATE images SET vector = (SELECT vector FROM images ORDER BY id LIMIT 1)")
        db.execute("UPDATE images SET copy_group = NULL, copy_rank = NULL")
    store = repository.Store(home / "imgsearch.db")
    try:
        _, vectors = store.all_vectors()
        assert np.allclose(vectors @ vectors[0], 1.0, atol=1e-5), "CLIP sees one picture"
        assert copies.regroup(store, force=True) == len(expected)
        found = [{m.path for m in members} for members in store.copies.all_groups()]
        assert sorted(map(sorted, found)) == sorted(map(sorted, expected))
    finally:
        store.close()


def test_every_copy_is_grouped_with_its_original_and_no_group_mixes_pictures(indexed) -> None:  # type: ignore[no-untyped-def]
    lib, expected, paths = indexed
    found = lib.dupes()
    assert sorted(map(sorted, ({c.path for c in g.copies} for g in found))) == sorted(map(sorted, expected))
    grey = paths["cat grey"]
    assert not any(grey in {c.path for c in g.copies} for g in found), "a grey-scale copy is an edit"
    levels = {frozenset(c.path for c in g.copies): g.level for g in found}
    assert levels[frozenset({paths["rocket"], paths["rocket exact"]})] == "exact"
    assert levels[frozenset({paths["cat-chelsea"], paths["cat q50"]})] == "copy"
    under = lib.dupes([Path(paths["rocket exact"]).parent])
    assert [{c.path for c in g.copies} for g in under] == [
        {paths["rocket"], paths["rocket exact"]},
        {paths["cat-chelsea"], paths["cat q50"]},
    ] or [{c.path for c in g.copies} for g in under][::-1] == [
        {paths["rocket"], paths["rocket exact"]},
        {paths["cat-chelsea"], paths["cat q50"]},
    ], "a folder shows the groups with a file in it, whole"


def test_the_best_copy_rule(indexed) -> None:  # type: ignore[no-untyped-def]
    lib, _, paths = indexed
    groups = {g.copies[0].path: g for g in lib.dupes()}
    astronaut = groups[paths["astronaut"]]  # the most pixels first
    assert [c.path for c in astronaut.copies] == [
        paths[n] for n in ("astronaut", "astronaut half", "astronaut quarter")
    ]
    assert astronaut.copies[0].reason == "" and astronaut.copies[1].reason == "smaller: 256x256 vs 512x512"
    coffee = next(g for g in groups.values() if paths["coffee png"] in {c.path for c in g.copies})
    # all 600x400: the camera formats (JPEG, HEIC) over PNG and WebP, then the oldest mtime
    assert {c.path for c in coffee.copies[:2]} == {paths["coffee-cup"], paths["coffee heic"]}
    assert all(c.reason.startswith("re-encoded") for c in coffee.copies[2:])


def test_results_hold_one_entry_per_picture_unless_all_copies(indexed) -> None:  # type: ignore[no-untyped-def]
    lib, expected, paths = indexed
    everything = len(paths)
    collapsed = lib.query("a photo", k=everything)
    pictures = everything - sum(len(g) - 1 for g in expected)
    assert len(collapsed) == pictures == len({h.path for h in collapsed})
    by_path = {h.path: h for h in collapsed}
    for group in expected:
        shown = group & by_path.keys()
        assert len(shown) == 1, group
        assert by_path[shown.pop()].copies == len(group) - 1
    assert by_path[paths["astronaut"]].copies == 2, "the best copy stands for its group"
    assert len(lib.query("a photo", k=everything, all_copies=True)) == everything
    assert len(lib.query("a photo", k=3)) == 3
    like = lib.similar(lib.image_id_of(paths["astronaut"]) or 0, k=everything)
    assert not {h.path for h in like} & expected[2], "more like this leaves out the image's own copies"
    info = lib.image(lib.image_id_of(paths["astronaut half"]) or 0)
    assert [c.path for c in info.copies] == [paths["astronaut"], paths["astronaut quarter"]]


def test_the_hash_backfill_makes_no_model_call(  # type: ignore[no-untyped-def]
    indexed, vitb32, vitb32_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_photos import _downgrade

    lib, expected, _ = indexed
    home = tmp_path / "home"
    shutil.copytree(lib.settings.home, home, ignore=shutil.ignore_patterns("thumbnails", "models"))
    _downgrade(repository.Store(home / "imgsearch.db"), "0005")
    calls: list[int] = []
    for name in ("embed_prepared", "embed_images", "embed_texts"):
        real = getattr(vitb32, name)
        monkeypatch.setattr(vitb32, name, lambda x, real=real: calls.append(len(x)) or real(x))
    overrides = vitb32_overrides(vitb32_checkpoint)
    with Library(load_settings(home, overrides=overrides, environ={}), embedder=vitb32) as upgraded:
        assert upgraded.dupes() == [], "no hash, no group yet"
        events: list[Progress] = []
        report = upgraded.index(on_progress=events.append)
        assert calls == [] and report.embedded == 0
        assert report.hashed == upgraded.store.count() and events[-1].phase in ("hashes", "photos")
        assert sorted(map(sorted, ({c.path for c in g.copies} for g in upgraded.dupes()))) == sorted(
            map(sorted, expected)
        )
        assert upgraded.index().hashed == 0, "once"


def test_dupes_cli_json_html_and_tag(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lib, expected, paths = indexed
    runner = CliRunner()
    env = {"IMGSEARCH_HOME": str(lib.settings.home)}
    args = ["--set", f"model.pretrained={lib.settings.model.pretrained}", "--set", "model.backend=open_clip"]
    done = runner.invoke(cli, [*args, "dupes", "--json"], env=env)
    assert done.exit_code == 0, done.output
    groups = json.loads(done.output)["groups"]
    assert sorted(map(sorted, ({c["path"] for c in g["copies"]} for g in groups))) == sorted(map(sorted, expected))
    page = tmp_path / "dupes.html"
    text = runner.invoke(cli, [*args, "dupes", "--html", str(page)], env=env)
    assert text.exit_code == 0 and "copy: 4 files" in text.output and "best copy" in text.output
    html = page.read_text()
    assert html.count('<section class="group"') == len(expected) and html.count("data:image/jpeg") == sum(
        map(len, expected)
    )
    tagged = runner.invoke(cli, [*args, "dupes", "--tag", "duplicate"], env=env)
    assert tagged.exit_code == 0, tagged.output
    marked = {h.path for h in lib.tagged(["duplicate"], k=100, all_copies=True)}
    assert marked == {p for g in lib.dupes() for p in [c.path for c in g.copies[1:]]}
    assert paths["astronaut"] not in marked and paths["astronaut half"] in marked
    assert all(Path(p).exists() for p in paths.values()), "no file is ever moved or deleted"
    lib.set_tag("duplicate", sorted(marked), present=False)
    missing = runner.invoke(cli, [*args, "dupes", str(tmp_path / "nowhere")], env=env)
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_the_api_collapses_lists_groups_and_copies(indexed) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from imgsearch.web.server import create_app

    lib, expected, paths = indexed
    with TestClient(create_app(lib, token="t", port=80), base_url="http://localhost") as api:
        one = api.get("/api/search", params={"q": "a photo", "limit": 100}).json()["hits"]
        every = api.get("/api/search", params={"q": "a photo", "limit": 100, "copies": "all"}).json()["hits"]
        assert len(every) == len(paths) and len(one) == len(paths) - sum(len(g) - 1 for g in expected)
        assert {h["path"]: h["copies"] for h in one}[paths["astronaut"]] == 2
        listed = api.get("/api/search", params={"limit": 100}).json()["hits"]
        assert len(listed) == len(one), "browsing collapses too"
        groups = api.get("/api/dupes").json()
        assert sorted(map(sorted, ({c["path"] for c in g["copies"]} for g in groups))) == sorted(map(sorted, expected))
        image = api.get(f"/api/images/{lib.image_id_of(paths['astronaut'])}").json()
        assert [c["path"] for c in image["copies"]] == [paths["astronaut half"], paths["astronaut quarter"]]
        schema = api.get("/openapi.json").json()
        assert "/api/dupes" in schema["paths"]
        assert any(p["name"] == "copies" for p in schema["paths"]["/api/search"]["get"]["parameters"])


@pytest.mark.both_stores
def test_both_stores_group_collapse_and_follow_changes(lib: Library, tmp_path: Path) -> None:
    """On SQLite and PostgreSQL alike; a copy that comes or goes changes its group at the next run."""
    expected, paths = write_library(tmp_path / "photos")
    lib.index([tmp_path / "photos"])
    found = sorted(map(sorted, ({c.path for c in g.copies} for g in lib.dupes())))
    assert found == sorted(map(sorted, expected))
    assert len(lib.query("a red circle", k=100)) == len(paths) - sum(len(g) - 1 for g in expected)
    Path(paths["astronaut quarter"]).unlink()
    shutil.copy(paths["clock"], tmp_path / "photos" / "backup" / "clock.jpg")
    lib.index()
    groups = {frozenset(c.path for c in g.copies): g.level for g in lib.dupes()}
    assert groups[frozenset({paths["astronaut"], paths["astronaut half"]})] == "copy"
    clock = frozenset({paths["clock"], paths["clock crop"], str(tmp_path / "photos" / "backup" / "clock.jpg")})
    assert groups[clock] == "copy" and len(groups) == len(expected)
    assert lib.status().copy_groups == len(expected)


def test_similar_groups_near_identical_shots_of_one_kind(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    """--similar, on the model the suite trained: drawings of one colour and shape (a burst, to the model) group
    as "similar"; different kinds never share a group; no pixel-hash copy exists among them."""
    folder, labels = shapes
    lib.index([folder])
    assert lib.dupes() == []
    found = lib.dupes(similar=True)
    assert found and all(g.level == "similar" for g in found)
    kinds = [{labels[c.path] for c in g.copies} for g in found]
    assert all(len(k) == 1 for k in kinds), kinds
    assert len(found) >= len(set(labels.values())) // 2, "most kinds have their burst"


def test_new_pictures_without_copies_leave_the_groups_standing(
    lib: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that only adds pictures looks the new ones up among all hashes, and decides every group again only
    when one has a copy (or a grouped picture went): a watch pass over new photos stays cheap at 100k."""
    from imgsearch.indexer import copies

    expected, paths = write_library(tmp_path / "photos")
    lib.index([tmp_path / "photos"])
    decided: list[int] = []
    real = copies.decide
    monkeypatch.setattr(copies, "decide", lambda found: decided.append(len(found)) or real(found))

    def groups() -> list[list[str]]:
        return sorted(map(sorted, ({c.path for c in g.copies} for g in lib.dupes())))

    shutil.copy(SAMPLES / "horse-silhouette.png", tmp_path / "photos" / "horse.png")  # no copy of it here
    assert lib.index().embedded == 1 and decided == [] and groups() == sorted(map(sorted, expected))
    quarter = sample("rocket").resize((160, 107))
    (tmp_path / "photos" / "rocket-small.jpg").write_bytes(encode(quarter, "JPEG", quality=85))
    lib.index()
    assert len(decided) == 1 and any(str(tmp_path / "photos" / "rocket-small.jpg") in g for g in groups())
    Path(paths["clock crop"]).unlink()
    lib.index()
    assert len(decided) == 2 and not any(paths["clock"] in g for g in groups()), "a group of one is no group"

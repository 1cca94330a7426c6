"""The HTTP API through FastAPI's test client, and the CLI asking a running server for warm queries."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgsearch import Library, load_settings, remote
from imgsearch.web.server import create_app
from tests.conftest import draw_shapes, tiny_env, tiny_overrides

TOKEN = "test-token"
AUTH = {"X-Imgsearch-Token": TOKEN}


def _mean(picture: Image.Image) -> tuple[int, ...]:
    return tuple(picture.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)))  # type: ignore[arg-type]


def _class(path: str) -> str:
    return "-".join(Path(path).stem.split("-")[:2])


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny, tiny_embedder) -> Iterator[Library]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("web")
    overrides = {
        **tiny_overrides(tiny),
        "generate.generator": "fourier",
        "generate.size": "32",
        "generate.add_to_index": "true",
        "serve.thumbnail_size": "40",
    }
    lib = Library(load_settings(root / "home", overrides=overrides, environ={}), embedder=tiny_embedder)
    draw_shapes(root / "pictures", per_class=3)
    lib.index([root / "pictures"])
    lib.set_tag("favourite", [root / "pictures" / "red-circle-0.png", root / "pictures" / "blue-square-1.png"])
    yield lib
    lib.close()


@pytest.fixture(scope="module")
def api(library: Library) -> Iterator[TestClient]:
    with TestClient(create_app(library, token=TOKEN, port=80), base_url="http://localhost") as c:
        yield c


def test_text_search_ranks_the_described_images_first(api: TestClient) -> None:
    page = api.get("/api/search", params={"q": "a red circle", "limit": 3}).json()
    assert [_class(h["path"]) for h in page["hits"]] == ["red-circle"] * 3
    first = page["hits"][0]
    assert first["name"] == Path(first["path"]).name
    assert first["thumbnail"] == f"/api/images/{first['id']}/thumbnail"
    assert first["score"] >= page["hits"][1]["score"] >= page["hits"][2]["score"] > 0


def test_pages_follow_each_other_without_gaps_or_repeats(api: TestClient) -> None:
    whole = api.get("/api/search", params={"q": "a green square", "limit": 36}).json()
    assert len(whole["hits"]) == 36 and not whole["more"]  # 12 classes x 3 pictures
    pages, offset = [], 0
    while True:
        page = api.get("/api/search", params={"q": "a green square", "limit": 10, "offset": offset}).json()
        pages += page["hits"]
        if not page["more"]:
            break
        offset += 10
    assert [h["id"] for h in pages] == [h["id"] for h in whole["hits"]]


def test_browsing_without_a_query_lists_the_library_newest_first(api: TestClient, library: Library) -> None:
    page = api.get("/api/search", params={"limit": 100}).json()
    assert len(page["hits"]) == library.store.count() == 36
    assert all(h["score"] is None for h in page["hits"])
    times = [library.image(h["id"]).indexed_at for h in page["hits"]]
    assert times == sorted(times, reverse=True)


def test_tags_list_and_filter(api: TestClient) -> None:
    assert {"label": "favourite", "images": 2, "auto": 0, "hand": 2} in api.get("/api/tags").json()
    tagged = api.get("/api/search", params={"tag": "favourite"}).json()["hits"]
    assert sorted(Path(h["path"]).name for h in tagged) == ["blue-square-1.png", "red-circle-0.png"]
    narrowed = api.get("/api/search", params={"tag": "FAVOURITE", "q": "a blue square"}).json()["hits"]
    assert [Path(h["path"]).name for h in narrowed] == ["blue-square-1.png", "red-circle-0.png"]


def test_more_like_this_leaves_the_image_out_and_finds_its_kind(api: TestClient) -> None:
    seed = api.get("/api/search", params={"q": "a yellow triangle", "limit": 1}).json()["hits"][0]
    similar = api.get(f"/api/images/{seed['id']}/similar", params={"limit": 2}).json()["hits"]
    assert seed["id"] not in [h["id"] for h in similar]
    assert [_class(h["path"]) for h in similar] == ["yellow-triangle"] * 2
    assert api.get("/api/images/999999/similar").status_code == 404


def test_search_by_uploaded_example(api: TestClient, library: Library, tmp_path: Path) -> None:
    example = tmp_path / "example.png"
    draw_shapes(tmp_path / "new", per_class=1, seed=9)
    (tmp_path / "new" / "blue-triangle-0.png").rename(example)
    with example.open("rb") as f:
        response = api.post("/api/search/image", files={"file": f}, data={"limit": "3"}, headers=AUTH)
    assert response.status_code == 200
    assert [_class(h["path"]) for h in response.json()["hits"]] == ["blue-triangle"] * 3
    empty = api.post("/api/search/image", files={"file": io.BytesIO(b"")}, headers=AUTH)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    junk = api.post("/api/search/image", files={"file": io.BytesIO(b"not an image")}, headers=AUTH)
    assert junk.status_code == 400 and "\n" not in junk.json()["detail"]


def test_image_details_and_hand_tags_round_trip(api: TestClient) -> None:
    hit = api.get("/api/search", params={"q": "a green circle", "limit": 1}).json()["hits"][0]
    added = api.post(f"/api/images/{hit['id']}/tags", json={"label": "Garden"}, headers=AUTH).json()
    assert {"label": "Garden", "source": "hand", "probability": None} in added["tags"]
    assert added["width"] == added["height"] == 64 and added["path"] == hit["path"]
    assert hit["id"] in [h["id"] for h in api.get("/api/search", params={"tag": "garden"}).json()["hits"]]
    removed = api.post(f"/api/images/{hit['id']}/tags", json={"label": "garden", "present": False}, headers=AUTH)
    assert [t["label"] for t in removed.json()["tags"]] == []
    bad = api.post(f"/api/images/{hit['id']}/tags", json={"label": "a, b"}, headers=AUTH)
    assert bad.status_code == 400


def test_thumbnails_are_made_once_and_then_served_from_the_cache(api: TestClient, library: Library) -> None:
    hit = api.get("/api/search", params={"q": "a red square", "limit": 1}).json()["hits"][0]
    first = api.get(hit["thumbnail"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(first.content))
    assert max(picture.size) == 40
    source = Image.open(hit["path"]).convert("RGB")
    assert max(abs(a - b) for a, b in zip(_mean(picture), _mean(source), strict=True)) < 8  # the same picture
    cached = list(library.settings.thumbnail_dir.rglob("*.jpg"))
    assert len(cached) == 1
    made = cached[0].stat().st_mtime_ns
    Path(hit["path"]).write_bytes(b"")  # the original is unreadable now: only the cache can answer
    again = api.get(hit["thumbnail"])
    assert again.content == first.content and cached[0].stat().st_mtime_ns == made
    assert api.get(hit["original"]).status_code == 404  # not what was indexed any more: refused


def test_the_original_file_is_served_as_an_image(api: TestClient) -> None:
    hit = api.get("/api/search", params={"q": "a blue circle", "limit": 1}).json()["hits"][0]
    response = api.get(hit["original"])
    assert response.headers["content-type"] == "image/png"
    assert response.content == Path(hit["path"]).read_bytes()
    assert "nosniff" in response.headers["x-content-type-options"]


def test_labelling_an_upload(api: TestClient, tmp_path: Path) -> None:
    draw_shapes(tmp_path, per_class=1, seed=5)
    with (tmp_path / "green-square-0.png").open("rb") as f:
        response = api.post("/api/label", files={"file": f}, data={"labels": "red circle, green square"}, headers=AUTH)
    labels = response.json()
    assert [x["label"] for x in labels] == ["green square", "red circle"]
    assert labels[0]["probability"] > 0.9 and abs(sum(x["probability"] for x in labels) - 1) < 1e-6


def test_status_and_openapi(api: TestClient) -> None:
    status = api.get("/api/status").json()
    assert status["images"] >= 36 and status["model_id"].startswith("imgsearch-tiny-test") and not status["public"]
    spec = api.get("/openapi.json").json()
    for path in ("/api/search", "/api/search/image", "/api/images/{image_id}/similar", "/api/tags", "/api/label"):
        assert path in spec["paths"]
    assert "/api/generate" in spec["paths"] and "post" in spec["paths"]["/api/generate"]
    assert api.get("/docs").status_code == 404  # the Swagger page would load scripts from a CDN


def test_the_page_carries_the_token_for_its_owner_and_its_own_assets(api: TestClient) -> None:
    assert f'content="{TOKEN}"' not in api.get("/").text  # another local user: browsing only
    page = api.get("/", headers={"Cookie": f"imgsearch_token={TOKEN}"})  # the owner: opened the printed URL
    assert page.headers["cache-control"] == "no-store"
    assert f'content="{TOKEN}"' in page.text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        if asset.startswith("data:") or asset == "/":
            continue  # inline, fetched from nowhere; the page itself
        assert asset.startswith("/static/"), asset
        assert api.get(asset).status_code == 200
    assert api.get("/static/nothing.js").status_code == 404


def test_generate_runs_as_a_job_with_progress(api: TestClient, library: Library) -> None:
    started = api.post("/api/generate", json={"prompt": "a red circle", "steps": 6, "seed": 1}, headers=AUTH)
    assert started.status_code == 202
    job = started.json()["job"]
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = api.get(f"/api/jobs/{job}").json()
        seen.append((state["phase"], state["done"], state["total"]))
        if state["state"] != "running":
            break
        time.sleep(0.05)
    assert state["state"] == "done", state
    result = state["result"]
    assert result["generator"] == "fourier" and result["image_id"] is not None
    image = Image.open(io.BytesIO(api.get(result["image"]).content))
    assert image.size == (32, 32)
    assert library.image(result["image_id"]).generated
    assert state["done"] == state["total"] == 6
    assert api.get("/api/jobs/nope").status_code == 404


def test_errors_are_one_line_json(api: TestClient) -> None:
    for response in (
        api.get("/api/images/424242"),
        api.get("/api/images/424242/thumbnail"),
        api.get("/api/search", params={"q": "dog + ''"}),
        api.post("/api/generate", json={"prompt": "   "}, headers=AUTH),
    ):
        assert 400 <= response.status_code < 500
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and detail


def test_query_text_is_never_read_as_a_file_on_the_server(api: TestClient, library: Library) -> None:
    picture = next(iter(library.store.paths_of([1]).values()))
    hits = api.get("/api/search", params={"q": picture, "limit": 1}).json()["hits"]
    local = library.query(picture, k=1)  # the CLI would search by that image; the server takes it as words
    assert local[0].path == picture and local[0].score > 0.99
    assert hits[0]["score"] < 0.99


def test_a_format_browsers_cannot_show_is_sent_as_a_jpeg_rendition(api: TestClient, library: Library) -> None:
    folder = Path(library.store.paths_of([1])[1]).parent
    Image.open(folder / "green-circle-0.png").save(folder / "scan.tif")
    library.index([folder])
    image_id = library.image_id_of(folder / "scan.tif")
    response = api.get(f"/api/images/{image_id}/file")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    shown = Image.open(io.BytesIO(response.content))
    assert shown.size == (64, 64)  # never enlarged
    assert max(abs(a - b) for a, b in zip(_mean(shown), _mean(Image.open(folder / "scan.tif")), strict=True)) < 8


# The CLI and a running server


@pytest.fixture
def served(tmp_path: Path, tiny) -> Iterator[tuple[dict[str, str], Path]]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "IMGSEARCH_HOME": str(tmp_path / "home"), **tiny_env(tiny)}
    draw_shapes(tmp_path / "pictures")
    subprocess.run([sys.executable, "-m", "imgsearch", "index", "-q", str(tmp_path / "pictures")], env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsearch", "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("serving http://127.0.0.1:"), line
    try:
        yield env, tmp_path
    finally:
        proc.terminate()
        proc.wait(20)
    assert not (tmp_path / "home" / "serve.json").exists()


# Runs a query in-process and reports whether torch (the model) was imported to answer it.
PROBE = """
import sys
from imgsearch.cli import cli
try:
    cli.main(["query", "-k", "3", "--json"] + sys.argv[1:], standalone_mode=False)
finally:
    print("TORCH" if "torch" in sys.modules else "NO-TORCH", file=sys.stderr)
"""


def test_a_cli_query_is_answered_by_the_running_server(served: tuple[dict[str, str], Path]) -> None:
    env, _ = served
    run = subprocess.run([sys.executable, "-c", PROBE, "a blue triangle"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().endswith("NO-TORCH")  # a new prompt, yet no model loaded here
    hits = json.loads(run.stdout)
    assert [_class(h["path"]) for h in hits[:2]] == ["blue-triangle", "blue-triangle"]
    local = subprocess.run(
        [sys.executable, "-c", PROBE, "a blue triangle"],
        env={**env, "IMGSEARCH_SERVE__QUERY_VIA_SERVER": "false"},
        capture_output=True,
        text=True,
    )
    assert json.loads(local.stdout) == hits  # the same answer, computed here
    bad = subprocess.run([sys.executable, "-m", "imgsearch", "query", "dog + ''"], env=env, capture_output=True)
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1


def test_a_server_for_other_settings_or_a_dead_one_is_not_asked(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(tmp_path, overrides=tiny_overrides(tiny), environ={})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    remote.announce(settings, remote.Server("http://127.0.0.1:9/", "t", dead.pid, remote.fingerprint(settings)))
    assert remote.running(settings) is None
    live = remote.Server("http://127.0.0.1:9/", "t", os.getpid(), "another")
    remote.announce(settings, live)
    assert remote.running(settings) == live
    assert remote.query(settings, "a cat", k=1, path_prefix=None, tags=(), include_generated=False) is None
    remote.announce(settings, remote.Server("http://127.0.0.1:9/", "t", os.getpid(), remote.fingerprint(settings)))
    started = time.monotonic()
    assert remote.query(settings, "a cat", k=1, path_prefix=None, tags=(), include_generated=False) is None
    assert time.monotonic() - started < 2  # nothing listens on port 9: refused at once, answered locally
    remote.withdraw(settings)
    assert not settings.server_file.exists()

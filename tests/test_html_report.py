"""`imgsearch query ... --html FILE`: one self-contained page, thumbnails embedded, every name escaped.

The pages are read back with html.parser, the way a browser would see them, not searched as text.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgsearch import Library, load_settings
from imgsearch.cli import cli
from imgsearch.errors import ImageDecodeError, NotFoundError, UsageError
from imgsearch.types import Hit
from imgsearch.web import report
from tests.conftest import tiny_env, tiny_overrides

SIDE = 24  # serve.thumbnail_size in these tests: smaller than the 64-pixel shapes, so really a thumbnail
CSP = "default-src 'none'; img-src data: file:; style-src 'unsafe-inline'"
ODD_NAME = '<b>"x"&\'<script>alert(1)<!--.png'  # legal on Linux: anything but '/' and NUL


@dataclass
class Cell:
    rank: str = ""
    score: str = ""
    name: str = ""
    path: str = ""
    href: str = ""
    image: str | None = None  # the <img> src
    missing: str | None = None  # the placeholder's text


class Page(HTMLParser):
    """The cells of a results page, in document order, and every tag and attribute seen."""

    def __init__(self, text: str):
        super().__init__()
        self.cells: list[Cell] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.metas: list[dict[str, str | None]] = []
        self.h1 = self.header = ""
        self._field: str | None = None
        self._in_header = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        self._in_header = self._in_header or tag == "header"
        if tag == "meta":
            self.metas.append(a)
        elif tag == "li" and "hit" in classes:
            self.cells.append(Cell())
        elif tag == "img":
            self.cells[-1].image = a["src"]
        elif "missing" in classes:
            self.cells[-1].missing = ""
            self._field = "missing"
        elif tag == "a" and "path" in classes:
            self.cells[-1].href = a["href"] or ""
            self._field = "path"
        elif set(classes) & {"rank", "score", "name"}:
            self._field = classes[0]
        elif tag == "h1":
            self._field = "h1"

    def handle_endtag(self, tag: str) -> None:
        self._field = None
        self._in_header = self._in_header and tag != "header"

    def handle_data(self, data: str) -> None:
        if self._in_header:
            self.header += data
        if self._field == "h1":
            self.h1 += data
        elif self._field:
            cell = self.cells[-1]
            setattr(cell, self._field, (getattr(cell, self._field) or "") + data)


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def embedded(src: str | None) -> Image.Image:
    assert src is not None and src.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.partition(",")[2], validate=True)))
    image.load()
    return image


def mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def reddish(image: Image.Image) -> bool:
    red, green, blue = mean_colour(image)
    return bool(red > green + 10 and red > blue + 10)


@pytest.fixture
def small_thumbs(home: Path, tiny, tiny_embedder) -> Iterator[Library]:  # type: ignore[no-untyped-def]
    overrides = {**tiny_overrides(tiny), "serve.thumbnail_size": str(SIDE)}
    library = Library(load_settings(home, overrides=overrides), embedder=tiny_embedder)
    yield library
    library.close()


@pytest.fixture
def indexed(small_thumbs: Library, shapes) -> tuple[Library, Path, dict[str, str]]:  # type: ignore[no-untyped-def]
    folder, captions = shapes
    shutil.copy(next(p for p in sorted(captions) if "red-circle" in p), folder / ODD_NAME)
    captions = {**captions, str(folder / ODD_NAME): "a red circle"}
    small_thumbs.index([folder])
    return small_thumbs, folder, captions


def test_one_cell_per_hit_in_rank_order_with_embedded_thumbnails(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lib, _, captions = indexed
    hits = lib.query("a red circle", k=8)
    out = tmp_path / "results.html"
    assert report.write(out, "a red circle", hits, lib.thumbnail) == 8
    page = read_page(out)
    assert page.h1 == "a red circle" and "8 results" in page.header and "imgsearch" in page.header
    assert [c.path for c in page.cells] == [h.path for h in hits]
    assert [c.rank for c in page.cells] == [f"#{i}" for i in range(1, 9)]
    assert [c.score for c in page.cells] == [f"{h.score:.4f}" for h in hits]
    assert [c.name for c in page.cells] == [Path(h.path).name for h in hits]
    assert [c.href for c in page.cells] == [Path(h.path).as_uri() for h in hits]
    assert captions[page.cells[0].path] == "a red circle"
    for cell in page.cells:
        thumb = embedded(cell.image)
        assert thumb.format == "JPEG" and max(thumb.size) == SIDE
        with Image.open(cell.path) as source:
            assert np.abs(mean_colour(thumb) - mean_colour(source)).max() < 12, cell.path
    assert reddish(embedded(page.cells[0].image))


def test_markup_in_a_file_name_stays_text(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lib, folder, _ = indexed
    hits = [h for h in lib.query("a red circle", k=30, all_copies=True) if Path(h.path).name == ODD_NAME]
    out = tmp_path / "odd.html"
    report.write(out, "<i>query</i> & more", hits, lib.thumbnail)
    raw = out.read_text(encoding="utf-8")
    page = Page(raw)
    assert [c.name for c in page.cells] == [ODD_NAME] and page.cells[0].path == str(folder / ODD_NAME)
    assert page.h1 == "<i>query</i> & more"
    assert not {"b", "i", "script"} & set(page.tags)
    assert "<script" not in raw and "<b>" not in raw and "<!--" not in raw
    href = page.cells[0].href
    assert href == (folder / ODD_NAME).as_uri() and "%3Cb%3E%22x%22%26" in href
    assert reddish(embedded(page.cells[0].image))


def test_the_page_fetches_nothing(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lib, _, _ = indexed
    out = tmp_path / "results.html"
    report.write(out, "a blue square", lib.query("a blue square", k=5), lib.thumbnail)
    raw = out.read_text(encoding="utf-8")
    page = Page(raw)
    assert "http:" not in raw.lower() and "https:" not in raw.lower()
    assert 'src="/' not in raw and 'src="file:' not in raw
    sources = [v for k, v in page.attrs if k == "src"]
    assert len(sources) == 5 and all(v and v.startswith("data:image/jpeg;base64,") for v in sources)
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(page.tags)
    policy = [m["content"] for m in page.metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert policy == [CSP]


def test_a_file_gone_since_indexing_gets_a_placeholder(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lib, _, _ = indexed
    hits = lib.query("a green triangle", k=4)
    Path(hits[0].path).unlink()
    stranger = Hit(10**6, "/nowhere/stranger.png", 0.1)
    out = tmp_path / "results.html"
    assert report.write(out, "a green triangle", [*hits, stranger], lib.thumbnail) == 5
    cells = read_page(out).cells
    assert [c.path for c in cells] == [h.path for h in [*hits, stranger]]
    assert cells[0].image is None and "green-triangle-1.png is gone since it was indexed" in (cells[0].missing or "")
    assert cells[-1].image is None and cells[-1].missing == f"no indexed image has id {10**6}"
    assert all(c.missing is None and embedded(c.image) for c in cells[1:-1])


def test_thumbnail_errors_never_fail_the_page(tmp_path: Path) -> None:
    def thumbnail(image_id: int) -> Path:
        if image_id == 1:
            raise ImageDecodeError("not an image")
        if image_id == 2:
            raise NotFoundError("no indexed image has id 2")
        return tmp_path / "vanished.jpg"

    hits = [Hit(i, f"/pictures/{i}.png", 0.5) for i in (1, 2, 3)]
    out = tmp_path / "results.html"
    report.write(out, "anything", hits, thumbnail)
    reasons = [c.missing or "" for c in read_page(out).cells]
    assert reasons[:2] == ["not an image", "no indexed image has id 2"]
    assert reasons[2].startswith("thumbnail unreadable:")


def test_no_hits_is_a_page_that_says_so(tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    assert report.write(out, "a purple hexagon", [], lambda _: tmp_path) == 0
    page = read_page(out)
    assert page.cells == [] and "0 results" in page.header


@pytest.mark.parametrize("where", ["missing/out.html", "a-file/out.html", "a-folder"])
def test_a_target_that_cannot_be_written_is_a_usage_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(UsageError, match="^cannot write ") as caught:
        report.write(tmp_path / where, "q", [], lambda _: tmp_path)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a-file", "a-folder"]


def test_writing_replaces_the_whole_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "results.html"
    out.write_text("old " * 100_000)
    report.write(out, "new", [], lambda _: tmp_path)
    assert read_page(out).h1 == "new" and "old" not in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["results.html"]


def test_query_title() -> None:
    assert report.query_title("  a red circle ") == "a red circle"
    assert report.query_title("", ["/x/holiday.jpg"], ["cat", "sofa"]) == "like holiday.jpg · tagged cat, sofa"
    assert report.query_title("") == "imgsearch results"


@pytest.fixture
def runner(home: Path, tiny, monkeypatch: pytest.MonkeyPatch, shapes) -> CliRunner:  # type: ignore[no-untyped-def]
    for name, value in tiny_env(tiny).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMGSEARCH_SERVE__THUMBNAIL_SIZE", str(SIDE))
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(shapes[0])]).exit_code == 0
    return runner


def test_cli_query_writes_the_page(runner: CliRunner, shapes, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _, captions = shapes
    monkeypatch.chdir(tmp_path)
    plain = runner.invoke(cli, ["query", "a red circle", "-k", "4"])
    result = runner.invoke(cli, ["query", "a red circle", "-k", "4", "--html", "out.html"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "wrote 4 results to out.html\n"
    assert result.stdout == plain.stdout and len(result.stdout.splitlines()) == 4
    page = read_page(tmp_path / "out.html")
    assert page.h1 == "a red circle" and len(page.cells) == 4
    assert [c.path for c in page.cells] == [line.split("\t")[-1] for line in plain.stdout.splitlines()]
    assert captions[page.cells[0].path] == "a red circle" and reddish(embedded(page.cells[0].image))
    assert max(embedded(page.cells[0].image).size) == SIDE


def test_cli_html_with_json_and_image_query(runner: CliRunner, shapes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, captions = shapes
    example = next(p for p in sorted(captions) if "blue-square" in p)
    out = tmp_path / "like.html"
    result = runner.invoke(cli, ["query", "--image", example, "-k", "3", "--json", "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote 3 results to {out}\n" and result.stdout.startswith("[")
    page = read_page(out)
    assert page.h1 == f"like {Path(example).name}" and page.cells[0].path == example


def test_cli_unwritable_target_is_exit_2_and_one_line(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "folder" / "out.html"
    result = runner.invoke(cli, ["query", "a red circle", "--html", str(target)])
    assert result.exit_code == 2
    assert result.stderr == f"imgsearch: cannot write {target}: no such folder {target.parent}\n"
    folder = runner.invoke(cli, ["query", "a red circle", "--html", str(tmp_path)])
    assert folder.exit_code == 2 and "is a directory" in folder.stderr

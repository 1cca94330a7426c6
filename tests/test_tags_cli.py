"""The labelling and tagging commands through the CLI, and tags leaving the tool (CSV, JSON, XMP sidecars)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgsearch import xmp
from imgsearch.cli import cli
from tests.conftest import tiny_env
from tests.test_tags import CONCEPTS, colour_and_shape

pytestmark = pytest.mark.both_stores


@pytest.fixture
def runner(home: Path, tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:  # type: ignore[no-untyped-def]
    for name, value in tiny_env(tiny).items():
        monkeypatch.setenv(name, value)
    vocab = tmp_path / "concepts.txt"
    vocab.write_text(CONCEPTS)
    monkeypatch.setenv("IMGSEARCH_TAGGING__VOCABULARY", str(vocab))
    monkeypatch.setenv("IMGSEARCH_TAGGING__MIN_PROBABILITY", "0.2")
    return CliRunner()


@pytest.fixture
def tagged(runner: CliRunner, shapes):  # type: ignore[no-untyped-def]
    folder, captions = shapes
    assert runner.invoke(cli, ["index", str(folder)]).exit_code == 0
    result = runner.invoke(cli, ["tag", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == len(captions)
    return folder, captions


def test_label_prints_probabilities_best_first(runner: CliRunner, shapes) -> None:  # type: ignore[no-untyped-def]
    _, captions = shapes
    path = next(p for p in captions if "green-triangle" in p)
    result = runner.invoke(cli, ["label", path, "--labels", "red circle, green triangle ,blue square"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.output.strip().splitlines()]
    assert next(r[1] for r in rows) == "green triangle" and len(rows) == 3
    probs = [float(r[0]) for r in rows]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-3
    data = json.loads(runner.invoke(cli, ["label", path, "--json", "-k", "2"]).output)  # the vocabulary
    assert data[0]["path"] == path and len(data[0]["labels"]) == 2
    assert {x["label"] for x in data[0]["labels"]} == {"green", "triangle"}


def test_tag_tags_query_and_exports(runner: CliRunner, tagged) -> None:  # type: ignore[no-untyped-def]
    folder, captions = tagged
    listing = runner.invoke(cli, ["tags"]).output.splitlines()
    assert listing[0].split() == ["tag", "images", "auto", "hand"]
    assert {line.split()[0] for line in listing[1:]} <= set(CONCEPTS.split())
    hits = json.loads(runner.invoke(cli, ["query", "--tag", "blue", "a square", "--json", "-k", "3"]).output)
    assert colour_and_shape(hits[0]["path"]) == {"blue", "square"}
    alone = runner.invoke(cli, ["query", "--tag", "yellow", "-k", "50"])
    assert alone.exit_code == 0 and all("yellow" in line for line in alone.output.splitlines())
    rows = list(csv.DictReader(io.StringIO(runner.invoke(cli, ["tag", "export", "--csv"]).output)))
    assert rows and set(rows[0]) == {"path", "label", "source", "score", "probability"}
    assert all(r["label"] in colour_and_shape(r["path"]) for r in rows)
    out = folder.parent / "tags.json"
    assert runner.invoke(cli, ["tag", "export", "--json", "-o", str(out)]).exit_code == 0
    data = json.loads(out.read_text())
    assert {d["path"] for d in data} <= set(captions) and all(d["tags"] for d in data)


def test_hand_tags_by_cli(runner: CliRunner, tagged) -> None:  # type: ignore[no-untyped-def]
    folder, captions = tagged
    path = sorted(captions)[0]
    assert runner.invoke(cli, ["tag", "add", "best of 2026", path]).output.strip() == "tagged 1 images 'best of 2026'"
    assert "removed 'best of 2026' from 1 images" in runner.invoke(cli, ["tag", "remove", "best of 2026", path]).output
    assert runner.invoke(cli, ["tag", "add", "trip", str(folder)]).exit_code == 0
    counts = json.loads(runner.invoke(cli, ["tags", "--json"]).output)
    assert {"label": "trip", "auto": 0, "hand": len(captions)} in counts
    assert all(c["label"] != "best of 2026" for c in counts)


def test_xmp_sidecars_carry_the_tags_and_images_are_untouched(runner: CliRunner, tagged) -> None:  # type: ignore[no-untyped-def]
    _folder, captions = tagged
    digests = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in captions}
    path = sorted(captions)[0]
    runner.invoke(cli, ["tag", "add", "family", path])
    result = runner.invoke(cli, ["tag", "export", "--xmp"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {len(captions)} XMP sidecars")
    for p in captions:
        sidecar = Path(p + ".xmp")
        subjects = set(xmp.read_subjects(sidecar))
        assert subjects and subjects <= colour_and_shape(p) | {"family"}
        assert hashlib.sha256(Path(p).read_bytes()).hexdigest() == digests[p]
    assert "family" in xmp.read_subjects(path + ".xmp")
    again = runner.invoke(cli, ["tag", "export", "--xmp"])
    assert again.output.startswith(f"wrote 0 XMP sidecars, {len(captions)} already up to date")
    runner.invoke(cli, ["tag", "remove", "family", path])
    runner.invoke(cli, ["tag", "export", "--xmp"])
    assert "family" not in xmp.read_subjects(path + ".xmp")
    pyexiv2 = pytest.importorskip("pyexiv2")
    image = pyexiv2.Image(path + ".xmp")
    try:
        assert set(image.read_xmp()["Xmp.dc.subject"]) == set(xmp.read_subjects(path + ".xmp"))
    finally:
        image.close()


def test_stem_sidecars_and_a_broken_sidecar_is_reported_not_fatal(runner: CliRunner, tagged) -> None:  # type: ignore[no-untyped-def]
    _folder, captions = tagged
    broken = sorted(captions)[0]
    Path(broken).with_suffix(".xmp").write_text("<not xml")
    result = runner.invoke(cli, ["tag", "export", "--xmp", "--sidecar-name", "stem"])
    assert result.exit_code == 3
    assert f"wrote {len(captions) - 1} XMP sidecars" in result.output and "1 failed" in result.output
    assert Path(broken).with_suffix(".xmp").read_text() == "<not xml"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["label", "/no/such.png", "--labels", "cat"], "label: no such image file: /no/such.png"),
        (["tag", "--vocabulary", "/no/vocab.txt"], "tagging.vocabulary: no such file: /no/vocab.txt"),
        (["tag", "add", "cat", "/no/such.png"], "tag: /no/such.png is not indexed"),
        (["tag", "export"], "choose a format: --xmp, --csv or --json"),
        (["--set", "tagging.min_probability=2", "tags"], "tagging.min_probability must be between 0 and 1"),
        (["--set", "tagging.templates=a photo", "tags"], "tagging.templates must contain {} exactly once"),
    ],
)
def test_tagging_mistakes_are_one_line(runner: CliRunner, tagged, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output

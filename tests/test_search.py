"""Search semantics on the tiny model that really learned colours and shapes; query parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgsearch import Library
from imgsearch.errors import IndexEmptyError, UsageError
from imgsearch.search.query import parse
from imgsearch.types import QueryTerm

pytestmark = pytest.mark.both_stores


@pytest.fixture
def indexed(lib: Library, shapes) -> tuple[Library, Path, dict[str, str]]:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    lib.index([folder])
    return lib, folder, labels


@pytest.mark.parametrize("caption", ["a red circle", "a blue square", "a yellow triangle", "a green circle"])
def test_text_query_ranks_the_right_shapes_first(indexed, caption: str) -> None:  # type: ignore[no-untyped-def]
    lib, _, labels = indexed
    hits = lib.query(caption, k=2)
    assert [labels[h.path] for h in hits] == [caption, caption]
    assert hits[0].score >= hits[1].score


def test_image_query_finds_the_same_kind(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import random

    from tests import tinyclip

    lib, _, labels = indexed
    probe = tmp_path / "probe.png"
    tinyclip.draw("green", "triangle", random.Random(1234)).save(probe)
    hits = lib.query(images=[probe], k=2)
    assert [labels[h.path] for h in hits] == ["a green triangle"] * 2


def test_combined_query_is_the_weighted_sum_of_term_embeddings(indexed) -> None:  # type: ignore[no-untyped-def]
    lib, _, labels = indexed
    some_image = sorted(labels)[0]
    terms = lib.parse_query(f"2:a red circle + {some_image} - a blue square")
    vec = lib.query_vector(terms)
    e = lib.embedder
    expected = 2 * e.embed_texts(["a red circle"])[0] - e.embed_texts(["a blue square"])[0]
    from imgsearch.images import decode

    expected = expected + e.embed_images([decode(Path(some_image).read_bytes(), 10**9)])[0]
    np.testing.assert_allclose(vec, expected / np.linalg.norm(expected), atol=1e-5)


def test_negative_term_pushes_results_away(indexed) -> None:  # type: ignore[no-untyped-def]
    lib, _, labels = indexed
    plain = [labels[h.path] for h in lib.query("a red circle", k=6)]
    minus = [labels[h.path] for h in lib.query("a red circle - 3:red", k=6)]
    assert sum("red" in c for c in minus) < sum("red" in c for c in plain)


def test_path_prefix_restricts_results(lib: Library, tmp_path: Path) -> None:
    from tests.conftest import draw_shapes

    a = draw_shapes(tmp_path / "lib" / "a", per_class=1, seed=3)
    draw_shapes(tmp_path / "lib" / "ab", per_class=1, seed=4)
    lib.index([tmp_path / "lib"])
    hits = lib.query("a red circle", k=50, path_prefix=tmp_path / "lib" / "a")
    assert {h.path for h in hits} == set(a)
    assert lib.query("a red circle", path_prefix=tmp_path / "elsewhere") == []


def test_query_on_empty_index_says_so(lib: Library) -> None:
    with pytest.raises(IndexEmptyError, match="empty: run `imgsearch index FOLDER` first"):
        lib.query("a red circle")


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("old teacher at blackboard", [QueryTerm("text", "old teacher at blackboard", 1.0)]),
        ("t-shirt + hat", [QueryTerm("text", "t-shirt", 1.0), QueryTerm("text", "hat", 1.0)]),
        ('"2:golden retriever" - fruit', [QueryTerm("text", "golden retriever", 2.0), QueryTerm("text", "fruit", -1)]),
        ("- night + 0.5:day", [QueryTerm("text", "night", -1.0), QueryTerm("text", "day", 0.5)]),
        ("10:00 meeting", [QueryTerm("text", "10:00 meeting", 1.0)]),
    ],
)
def test_query_parsing(text: str, terms: list[QueryTerm]) -> None:
    assert parse(text) == terms


def test_query_parsing_of_images_and_errors(tmp_path: Path) -> None:
    pic = tmp_path / "pool.jpg"
    pic.write_bytes(b"x")
    assert parse(f"dog + {pic}")[1] == QueryTerm("image", str(pic), 1.0)
    with pytest.raises(UsageError, match=r"no such image file: missing\.jpg"):
        parse("dog + missing.jpg")
    with pytest.raises(UsageError, match="empty term"):
        parse("dog + ''")


def test_a_repeated_text_query_does_not_load_the_model(home: Path, tiny, shapes) -> None:  # type: ignore[no-untyped-def]
    """Prompt embeddings are remembered in the database: asking again needs no model (nor torch) at all."""
    from imgsearch import load_settings
    from tests.conftest import tiny_overrides

    folder, labels = shapes
    with Library(load_settings(home, overrides=tiny_overrides(tiny))) as first:
        first.index([folder])
        before = first.query("a green square", k=3)
        assert first._embedder is not None
    with Library(load_settings(home, overrides=tiny_overrides(tiny))) as second:
        again = second.query("a green square", k=3)
        assert second._embedder is None, "the model was loaded for a prompt seen before"
        assert [(h.path, round(h.score, 5)) for h in again] == [(h.path, round(h.score, 5)) for h in before]
        assert labels[again[0].path] == "a green square"
        second.query("2:a green square - a red circle", k=1)  # a new term: the model loads for it alone
        assert second._embedder is not None

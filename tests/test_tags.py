"""Zero-shot labels and auto-tagging, checked for meaning on the tiny model trained on coloured shapes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Library, load_settings
from imgsearch.errors import ConfigError, UsageError
from imgsearch.search import labels as lb
from tests import tinyclip
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.both_stores

CONCEPTS = "red\ngreen\nblue\nyellow\ncircle\nsquare\ntriangle\n"


def colour_and_shape(path: str) -> set[str]:
    colour, shape, _ = Path(path).stem.split("-")
    return {colour, shape}


@pytest.fixture
def vocab(tmp_path: Path) -> Path:
    path = tmp_path / "concepts.txt"
    path.write_text("# colours\n" + CONCEPTS.replace("circle", "\ncircle", 1))  # a blank line too
    return path


def tags_by_path(lib: Library) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in lib.tag_records():
        out.setdefault(r.path, set()).add(r.label)
    return out


def make_lib(home: Path, tiny, tiny_embedder, **extra: str) -> Library:  # type: ignore[no-untyped-def]
    return Library(load_settings(home, overrides=dict(tiny_overrides(tiny), **extra)), embedder=tiny_embedder)


# labels of single images


def test_label_ranks_the_true_class_first(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    _, captions = shapes
    names = ",".join(f"{c} {s}" for c, s in tinyclip.CLASSES)
    results = lib.label(list(captions), names)
    right = 0
    for r in results:
        assert len(r.labels) == 12
        probs = [s.probability for s in r.labels]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
        right += "a " + r.labels[0].label == captions[r.path]
    assert right >= len(captions) - 1, f"{right}/{len(captions)} right"


def test_prompt_ensembling_is_the_normalised_mean_of_the_template_embeddings(lib: Library) -> None:
    labels = lb.parse_labels("red circle,blue")
    matrix = lib.label_vectors().matrix(lib.embedder.model_id, labels)
    for row, name in zip(matrix, ["red circle", "blue"], strict=True):
        prompts = [t.format(name) for t in tinyclip.TEMPLATES]
        mean = lib.embedder.embed_texts(prompts).mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-5)


def test_label_vectors_are_cached_per_model(lib: Library) -> None:
    vectors = lib.label_vectors()
    vectors.matrix(lib.embedder.model_id, lb.parse_labels("red,green"))
    assert vectors.embedded == 6  # 2 labels x 3 templates
    again = lib.label_vectors()
    again.matrix(lib.embedder.model_id, lb.parse_labels("green,red,blue"))
    assert again.embedded == 3  # only blue's prompts are new


# vocabularies


def test_vocabulary_file_with_synonyms_comments_blank_lines_and_thresholds() -> None:
    text = "# animals\n\ncat, kitten,  kitty \n  dog  # a comment\n\nsunset, dusk | 0.3\n"
    labels = lb.parse_vocabulary(text, "v.txt")
    assert [x.name for x in labels] == ["cat", "dog", "sunset"]
    assert labels[0].phrases == ("cat", "kitten", "kitty")
    assert labels[2].min_probability == 0.3 and labels[0].min_probability is None
    assert lb.prompts(labels[2], ["a photo of a {}.", "{} at night"]) == [
        "a photo of a sunset.",
        "sunset at night",
        "a photo of a dusk.",
        "dusk at night",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat\ndog\nCat\n", "v.txt:3: label 'Cat' is already on line 1"),
        ("cat | 2\n", "v.txt:1: the threshold after | must be between 0 and 1, got '2'"),
        ("cat | x\n", "v.txt:1: the threshold after | must be between 0 and 1"),
        ("| 0.2\n", "v.txt:1: a line needs a label"),
        ("# nothing\n\n", "v.txt: the vocabulary has no labels"),
    ],
)
def test_bad_vocabulary_lines_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        lb.parse_vocabulary(text, "v.txt")


def test_builtin_vocabulary_has_a_few_hundred_distinct_everyday_labels() -> None:
    labels, name = lb.load_vocabulary("")
    assert name == "built-in" and 300 <= len(labels) <= 500
    phrases = [p.casefold() for x in labels for p in x.phrases]
    assert len(phrases) == len(set(phrases))
    assert {"cat", "dog", "beach", "birthday party", "screenshot"} <= {x.name for x in labels}


def test_rule_top_k_probability_and_margin() -> None:
    labels = lb.parse_labels("a,b,c,d")
    scores = np.array([[0.9, 0.8, 0.5, 0.1]], dtype=np.float32)
    probs = lb.probabilities(scores, 10.0)
    pick = lambda rule: [c.label for c in lb.choose(scores, probs, labels, rule, 10.0)[0]]  # noqa: E731
    assert pick(lb.Rule(5, 0.0, 100.0)) == [0, 1, 2, 3]
    assert pick(lb.Rule(2, 0.0, 100.0)) == [0, 1]
    assert pick(lb.Rule(5, 0.01, 100.0)) == [0, 1, 2]  # p = .72, .27, .013, .0002
    assert pick(lb.Rule(5, 0.05, 100.0)) == [0, 1]
    assert pick(lb.Rule(5, 0.0, 1.5)) == [0, 1]  # logits 9, 8, 5, 1: within 1.5 of the best
    assert pick(lb.Rule(0, 0.0, 100.0)) == []
    own = [lb.Label("a", ("a",)), lb.Label("b", ("b",), min_probability=0.5), *labels[2:]]
    assert [c.label for c in lb.choose(scores, probs, own, lb.Rule(5, 0.0, 100.0), 10.0)[0]] == [0, 2, 3]
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)
    sig = lb.probabilities(scores, 10.0, -5.0)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-(10 * scores - 5))), rtol=1e-6)


# tagging the index


def test_each_image_gets_its_colour_and_its_shape(home: Path, tiny, tiny_embedder, shapes, vocab: Path) -> None:  # type: ignore[no-untyped-def]
    folder, captions = shapes
    # The tiny model splits about 95% of the probability between colour and shape; the threshold sits above the rest.
    with make_lib(home, tiny, tiny_embedder, **{"tagging.min_probability": "0.2"}) as lib:
        lib.index([folder])
        report = lib.tag(vocabulary=str(vocab))
        assert (report.images, report.labels, report.prompts_embedded) == (len(captions), 7, 21)
        got = tags_by_path(lib)
        exact = sum(got.get(p) == colour_and_shape(p) for p in captions)
        assert exact >= len(captions) - 2, got
        assert all(t <= colour_and_shape(p) for p, t in got.items()), "a wrong tag"
        counts = {c.label: c.auto for c in lib.tags()}
        assert counts["red"] >= 5 and counts["circle"] >= 6 and set(counts) <= set(CONCEPTS.split())
        for r in lib.tag_records():
            assert r.source == "auto" and r.probability is not None and r.score is not None and r.probability >= 0.2


def test_thresholds_in_config_and_per_label(home: Path, tiny, tiny_embedder, shapes, vocab: Path) -> None:  # type: ignore[no-untyped-def]
    folder, _captions = shapes
    with make_lib(home, tiny, tiny_embedder, **{"tagging.top_k": "1"}) as lib:
        lib.index([folder])
        lib.tag(vocabulary=str(vocab))
        assert all(len(t) == 1 for t in tags_by_path(lib).values())
    with make_lib(home, tiny, tiny_embedder, **{"tagging.min_probability": "0.99"}) as lib:
        lib.tag(vocabulary=str(vocab))
        assert tags_by_path(lib) == {}
    vocab.write_text(CONCEPTS.replace("red\n", "red | 1.0\n"))
    with make_lib(home, tiny, tiny_embedder) as lib:
        lib.tag(vocabulary=str(vocab))
        got = tags_by_path(lib)
        assert not any("red" in t for t in got.values())
        assert sum("circle" in t for t in got.values()) >= 7


def test_retagging_touches_only_what_changed(lib: Library, shapes, vocab: Path) -> None:  # type: ignore[no-untyped-def]
    folder, captions = shapes
    lib.index([folder])
    lib.tag(vocabulary=str(vocab))
    before = tags_by_path(lib)
    again = lib.tag(vocabulary=str(vocab))
    assert (again.images, again.changed, again.prompts_embedded) == (0, 0, 0)
    vocab.write_text(CONCEPTS + "red circle\n")
    grown = lib.tag(vocabulary=str(vocab))
    assert grown.prompts_embedded == 3 and grown.images == len(captions)  # only the new label's prompts
    after = tags_by_path(lib)
    changed = {p for p in captions if after.get(p) != before.get(p)}
    assert grown.changed == len(changed) and changed
    assert all(colour_and_shape(p) & {"red", "circle"} for p in changed), changed
    assert all("red circle" in after[p] for p in captions if "red-circle" in p)
    vocab.write_text(CONCEPTS)
    lib.tag(vocabulary=str(vocab))
    assert tags_by_path(lib) == before
    vocab.write_text(CONCEPTS.replace("triangle\n", ""))
    shrunk = lib.tag(vocabulary=str(vocab))
    triangles = [p for p, t in before.items() if "triangle" in t]
    assert shrunk.prompts_embedded == 0 and shrunk.removed >= len(triangles)
    after = tags_by_path(lib)
    for path in captions:
        assert "triangle" not in after.get(path, set())
        if path not in triangles:
            assert after.get(path) == before.get(path)


def test_hand_tags_survive_retagging_content_changes_and_rebuilds(lib: Library, shapes, vocab: Path) -> None:  # type: ignore[no-untyped-def]
    folder, captions = shapes
    lib.index([folder])
    lib.tag(vocabulary=str(vocab))
    red = sorted(p for p in captions if "red-circle" in p)
    assert lib.set_tag("favourite", [red[0]]) == 1
    assert lib.set_tag("red", [red[1]], present=False) == 1
    assert lib.set_tag("Red", [red[1]], present=False) == 0  # already removed; tags ignore case
    assert lib.set_tag("holiday", [folder]) == len(captions)  # a folder: every image under it
    vocab.write_text(CONCEPTS + "red circle\n")
    lib.tag(vocabulary=str(vocab))
    got = tags_by_path(lib)
    assert "favourite" in got[red[0]] and "red" not in got[red[1]] and "circle" in got[red[1]]
    lib.index([folder], rebuild=True)
    lib.tag(vocabulary=str(vocab))
    got = tags_by_path(lib)
    assert "favourite" in got[red[0]] and "red" not in got[red[1]] and all("holiday" in t for t in got.values())
    tinyclip.draw("blue", "square", __import__("random").Random(5)).save(red[0])  # new content, same path
    lib.index([folder])
    assert tags_by_path(lib)[red[0]] == {"favourite", "holiday"}  # its old auto tags are gone, hand tags stay
    lib.tag(vocabulary=str(vocab))
    assert {"favourite", "holiday", "blue", "square"} <= tags_by_path(lib)[red[0]]
    with pytest.raises(UsageError, match="not indexed"):
        lib.set_tag("x", [folder.parent / "elsewhere.png"])
    with pytest.raises(UsageError, match="not a usable tag"):
        lib.set_tag("a, b", [red[0]])


def test_tags_follow_renames_and_go_with_deleted_files(lib: Library, shapes, vocab: Path) -> None:  # type: ignore[no-untyped-def]
    folder, captions = shapes
    lib.index([folder])
    lib.tag(vocabulary=str(vocab))
    path = sorted(captions)[0]
    lib.set_tag("keep", [path])
    before = tags_by_path(lib)[path]
    moved = folder / "sub" / "moved.png"
    moved.parent.mkdir()
    os.rename(path, moved)
    victim = sorted(captions)[1]
    os.remove(victim)
    lib.index([folder])
    got = tags_by_path(lib)
    assert got[str(moved)] == before and path not in got and victim not in got
    assert lib.tag(vocabulary=str(vocab)).images == 0  # a rename is not new content


def test_tag_filters_combine_with_text_queries(lib: Library, shapes, vocab: Path) -> None:  # type: ignore[no-untyped-def]
    folder, _captions = shapes
    lib.index([folder])
    lib.tag(vocabulary=str(vocab))
    tagged = tags_by_path(lib)
    hits = lib.query("a circle", tags=["red"], k=50)
    assert hits and all("red" in tagged[h.path] for h in hits)
    assert colour_and_shape(hits[0].path) == {"red", "circle"}
    both = lib.query("a blue square", tags=["RED", "circle"], k=50)  # tags ignore case; all must hold
    assert both and all({"red", "circle"} <= tagged[h.path] for h in both)
    assert lib.query("a circle", tags=["no such tag"]) == []
    assert lib.query("a circle", tags=["red"], path_prefix=folder / "nowhere") == []
    alone = lib.query(tags=["square"], k=50)
    squares = [p for p, t in tagged.items() if "square" in t]
    assert sorted(h.path for h in alone) == sorted(squares)
    assert [h.score for h in alone] == sorted((h.score for h in alone), reverse=True)
    lib.set_tag("square", [alone[-1].path])  # by hand: listed first
    assert lib.query(tags=["square"], k=1)[0].path == alone[-1].path


def test_a_tag_name_is_the_same_however_it_is_spaced(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    """One normalisation (whitespace runs collapsed, ends trimmed) wherever a tag name comes in: stored, filtered
    on, ranked by. A tag given with extra spaces finds and ranks its images."""
    folder, labels = shapes
    lib.index([folder])
    red = sorted(p for p in labels if "/red-" in p)
    assert lib.set_tag("  golden   retriever ", red) == len(red)
    assert {t.label for t in lib.tags()} == {"golden retriever"}
    for spelled in ("golden retriever", " golden  retriever ", "golden\tretriever"):
        assert sorted(h.path for h in lib.tagged([spelled], k=50)) == red, spelled
        assert sorted(h.path for h in lib.query("a red circle", tags=[spelled], k=50)) == red, spelled
    assert lib.set_tag("golden retriever ", red[:1], present=False) == 1


def test_auto_tagging_as_images_are_indexed(home: Path, tiny, tiny_embedder, shapes, vocab: Path) -> None:  # type: ignore[no-untyped-def]
    folder, captions = shapes
    overrides = {"tagging.auto": "true", "tagging.vocabulary": str(vocab), "tagging.min_probability": "0.2"}
    with make_lib(home, tiny, tiny_embedder, **overrides) as lib:
        report = lib.index([folder])
        assert report.tagged is not None and report.tagged.images == len(captions)
        tinyclip.draw("yellow", "triangle", __import__("random").Random(3)).save(folder / "new.png")
        report = lib.index([folder])
        assert report.tagged is not None and report.tagged.images == 1
        assert tags_by_path(lib)[str(folder / "new.png")] == {"yellow", "triangle"}


def test_a_bad_vocabulary_stops_auto_tagging_before_any_work(home: Path, tiny, tiny_embedder, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, _ = shapes
    overrides = {"tagging.auto": "true", "tagging.vocabulary": str(folder / "missing.txt")}
    with make_lib(home, tiny, tiny_embedder, **overrides) as lib:
        with pytest.raises(ConfigError, match="tagging.vocabulary: no such file"):
            lib.index([folder])
        assert lib.store.count() == 0


def test_watch_tags_new_images_as_they_arrive(home: Path, tiny, tiny_embedder, tmp_path: Path, vocab: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.test_watch import Running, draw, wait_for

    folder = tmp_path / "watched"
    draw(folder / "start.png", "blue", "square")
    overrides = {
        "tagging.auto": "true",
        "tagging.vocabulary": str(vocab),
        "tagging.min_probability": "0.2",
        "watch.settle_seconds": "0.3",
    }
    with make_lib(home, tiny, tiny_embedder, **overrides) as lib:
        w = Running(lib, folder)
        try:
            assert w.reports[0].tagged is not None and w.reports[0].tagged.images == 1
            draw(folder / "new.png", "green", "circle", seed=4)
            wait_for(lambda: str(folder / "new.png") in tags_by_path(lib))
            assert tags_by_path(lib)[str(folder / "new.png")] == {"green", "circle"}
        finally:
            w.stop.set()
            w.thread.join(timeout=30)


def test_a_version_1_database_upgrades_with_its_images(tmp_path: Path) -> None:
    """A database written before tags existed opens, gains the tag tables, and keeps every image."""
    import sqlite3

    from alembic import command
    from alembic.config import Config

    from imgsearch.store.repository import MIGRATIONS, Store, _engine

    path = tmp_path / "old.db"
    engine = _engine(path)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO images (path, size, mtime_ns, content_hash, width, height, vector, indexed_at) "
            "VALUES ('/p/a.jpg', 1, 1, 'h', 2, 2, ?, 0)",
            (np.ones(4, dtype="<f4").tobytes(),),
        )
    store = Store(path)
    try:
        assert store.count() == 1
        with store.write() as conn:
            from imgsearch.store import tags as sql

            assert sql.set_hand_tag(conn, ["/p/a.jpg"], "cat", True) == 1
            assert sql.indexed_paths(conn, None) == ["/p/a.jpg"]
    finally:
        store.close()

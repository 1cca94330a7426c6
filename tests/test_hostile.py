"""What an adversarial pass broke (issue: hostile files, settings and requests), one test per break, each
failing on the code before its fix: hangs, memory, errors that were not one line, data lost or written where it
should not be, and what reaches a terminal or another local user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgsearch.cli import cli
from tests.conftest import tiny_env


@pytest.fixture
def runner(home: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> CliRunner:  # type: ignore[no-untyped-def]
    for name, value in tiny_env(tiny).items():
        monkeypatch.setenv(name, value)
    return CliRunner()


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# 1. numeric settings outside their domain (batch_size 0 spun forever, ignoring SIGTERM)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("index.batch_size=0", "index.batch_size must be between 1 and 4096, got 0"),
        ("index.prefetch=0", "index.prefetch must be between 1 and 64, got 0"),
        ("index.workers=100000", "index.workers must be between 0 and 1024, got 100000"),
        ("search.hnsw_m=1", "search.hnsw_m must be between 2 and 256, got 1"),
        ("search.top_k=0", "search.top_k must be between 1 and 10000, got 0"),
        ("watch.settle_seconds=0", "watch.settle_seconds must be between 0.05 and 3600, got 0.0"),
        ("generate.size=3", "generate.size must be 0 (the device's default) or between 8 and 4096, got 3"),
        ("generate.learning_rate=0", "generate.learning_rate must be between 1e-06 and 10, got 0.0"),
        ("model.download_timeout=0", "model.download_timeout must be between 0.1 and 600, got 0.0"),
        ("tagging.top_k=0", "tagging.top_k must be between 1 and 1000, got 0"),
    ],
)
def test_a_number_outside_its_domain_is_one_line_before_any_work(
    runner: CliRunner, shapes, setting: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    folder, _ = shapes
    result = runner.invoke(cli, ["--set", setting, "index", str(folder)])
    assert result.exit_code == 2
    assert _one_line(result.output) == f"imgsearch: --set: {message}"


# 2. the first no-match check embedded ~2,400 contrast prompts while holding the server's model lock


class _Counting:
    """An embedder that counts the texts it embeds."""

    def __init__(self, inner):  # type: ignore[no-untyped-def]
        self.inner, self.texts = inner, 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def embed_texts(self, texts):  # type: ignore[no-untyped-def]
        self.texts += len(texts)
        return self.inner.embed_texts(texts)


class _Turns:
    """A lock that counts how often it is taken (the server's model lock, which queries take too)."""

    def __init__(self) -> None:
        import threading

        self.lock, self.taken = threading.RLock(), 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_the_no_match_check_answers_not_ready_until_its_prompts_are_embedded_in_turns(
    home: Path, tiny, tiny_embedder, shapes
) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from imgsearch import Library, load_settings
    from imgsearch.web.server import create_app
    from tests.conftest import tiny_overrides

    folder, _ = shapes
    counting = _Counting(tiny_embedder)
    lib = Library(load_settings(home, overrides=tiny_overrides(tiny)), embedder=counting)  # type: ignore[arg-type]
    lib.index([folder])
    lib.query("a red circle")  # the prompt itself is embedded: 1 text
    with TestClient(create_app(lib, token="t", port=80), base_url="http://localhost") as api:
        before = counting.texts
        verdict = api.get("/api/match", params={"q": "a red circle"}).json()
        assert verdict["ready"] is False and verdict["matched"] is False
        assert counting.texts == before, "no contrast prompt is embedded by the request itself"
        turns = _Turns()
        embedded = lib.prepare_match(turn=turns)
        assert embedded > 1000 and turns.taken == -(-embedded // 64), "one turn of the model lock a chunk"
        verdict = api.get("/api/match", params={"q": "a red circle"}).json()
        assert verdict["ready"] is True and verdict["evidence"] is not None  # a verdict (test_generate: its sense)
    assert lib.prepare_match() == 0, "kept: nothing to embed again"
    lib.close()


# 12. auto-tagging kept nothing until the end, said nothing of a long first pass, ignored Ctrl-C for 30 s


def test_a_first_tagging_pass_keeps_its_prompts_as_it_goes_says_its_cost_and_stops_between_chunks(
    lib, shapes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import threading

    from imgsearch.errors import InterruptedRun
    from imgsearch.search import tagger
    from imgsearch.types import Progress

    folder, _ = shapes
    lib.index([folder])
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("\n".join(f"thing number {i}" for i in range(300)) + "\n")
    monkeypatch.setattr(tagger, "LONG_FIRST_PASS", 0.0)  # every first pass is "long" here
    stop, notices = threading.Event(), []

    def stop_after_two_chunks(event: Progress) -> None:
        if event.phase == "labels" and event.done >= 2 * tagger.TEXT_BATCH:
            stop.set()

    with pytest.raises(InterruptedRun, match="label prompts embedded and kept"):
        lib.tag(vocabulary=str(vocabulary), on_progress=stop_after_two_chunks, stop=stop, on_notice=notices.append)
    (notice,) = notices
    assert notice.startswith("embedding 900 label prompts once for this model: about ")  # 300 labels x 3 templates
    report = lib.tag(vocabulary=str(vocabulary))
    assert report.prompts_embedded == 900 - 2 * tagger.TEXT_BATCH, "the two chunks done were kept"


# 4. the reader read any file whole (a 2 GB .jpg peaked at 2.2 GB); 5. the server read whatever an indexed path
# had become (a FIFO hung its threads, a link to /dev/zero grew it to 6 GB)


def test_a_file_too_large_for_any_legal_image_is_refused_unread(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from imgsearch import images

    folder = tmp_path / "photos"
    folder.mkdir()
    limit = images.size_limit(lib.settings.index.max_pixels)
    with open(folder / "huge.jpg", "wb") as f:  # sparse: no disk used, no time to write
        f.truncate(limit + 1)
    with open(folder / "video.jpg", "wb") as f:  # large, and not an image from its first bytes on
        f.write(b"\x00\x00\x00\x18ftypmp42")
        f.truncate(images.BIG_FILE + 1)
    report = lib.index([folder])
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons["huge.jpg"] == f"too large ({(limit + 1) >> 20} MB; at most {limit >> 20} MB is read)"
    assert reasons["video.jpg"] == f"not an image ({(images.BIG_FILE + 1) >> 20} MB that do not start like one)"


@pytest.mark.parametrize("becomes", ["fifo", "device link", "folder"])
def test_the_server_refuses_what_an_indexed_path_has_become_without_waiting(lib, shapes, becomes: str) -> None:  # type: ignore[no-untyped-def]
    import threading

    from fastapi.testclient import TestClient

    from imgsearch.web.server import create_app

    folder, labels = shapes
    lib.index([folder])
    path = Path(sorted(labels)[0])
    image_id = lib.image_id_of(path)
    path.unlink()
    if becomes == "fifo":
        os.mkfifo(path)
    elif becomes == "device link":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    answers: dict[str, object] = {}
    with TestClient(create_app(lib, token="t", port=80), base_url="http://localhost") as api:

        def ask() -> None:
            for what in ("file", "thumbnail"):
                answer = api.get(f"/api/images/{image_id}/{what}")
                answers[what] = (answer.status_code, answer.json()["detail"])

        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(20)
    assert set(answers) == {"file", "thumbnail"}, "the server answered at once"
    for status, detail in answers.values():  # type: ignore[misc]
        assert status == 404 and "not a regular file" in detail


# 9. `tag export --xmp --sidecar-name stem` kept one file's tags when two share a stem (a.heic + a.jpg);
# 11. a sidecar that is a dangling symlink was written through, outside the photo folder


def test_files_that_share_a_sidecar_share_its_keywords(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from imgsearch import xmp
    from tests import tinyclip

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = __import__("random").Random(1)
    tinyclip.draw("red", "circle", rng).save(folder / "a.png")
    tinyclip.draw("blue", "square", rng).convert("RGB").save(folder / "a.jpg")
    lib.index([folder])
    lib.set_tag("from png", [folder / "a.png"])
    lib.set_tag("from jpg", [folder / "a.jpg"])
    first = lib.export_xmp(naming="stem")
    assert (first.written, first.failed) == (1, [])
    assert sorted(xmp.read_subjects(folder / "a.xmp")) == ["from jpg", "from png"]
    again = lib.export_xmp(naming="stem")
    assert (again.written, again.unchanged) == (0, 1), "the shared sidecar is not rewritten on every run"


def test_a_sidecar_that_is_a_symlink_is_never_written_through(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from imgsearch import xmp
    from tests import tinyclip

    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    tinyclip.draw("red", "circle", __import__("random").Random(2)).save(folder / "x.png")
    lib.index([folder])
    lib.set_tag("holiday", [folder / "x.png"])
    (folder / "x.png.xmp").symlink_to(elsewhere / "planted.desktop")  # dangling
    report = lib.export_xmp()
    assert report.written == 1 and not (elsewhere / "planted.desktop").exists()
    sidecar = folder / "x.png.xmp"
    assert not sidecar.is_symlink() and xmp.read_subjects(sidecar) == ["holiday"]


# 8. a generation's seed was not checked by the API (-1 ran; 2**64 + 1 failed the job with an overflow)


@pytest.mark.parametrize("seed", [-1, 2**64 + 1])
def test_a_seed_outside_what_torch_takes_is_refused_by_the_api(lib, seed: int) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from imgsearch.web.server import create_app

    with TestClient(create_app(lib, token="t", port=80), base_url="http://localhost") as api:
        answer = api.post(
            "/api/generate", json={"prompt": "a lighthouse", "seed": seed}, headers={"X-Imgsearch-Token": "t"}
        )
        assert answer.status_code == 422 and "seed" in json.dumps(answer.json())


# 10. a tag with a control character was accepted, then failed the image's whole sidecar


@pytest.mark.parametrize("label", ["bad\x01tag", "bell\x07", "esc\x1b[2J"])
def test_a_tag_with_a_control_character_is_refused_at_input(runner: CliRunner, shapes, label: str) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    assert runner.invoke(cli, ["index", str(folder)]).exit_code == 0
    result = runner.invoke(cli, ["tag", "add", label, sorted(labels)[0]])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert line.startswith("imgsearch: tag: not a usable tag name: ") and line.isprintable()
    assert runner.invoke(cli, ["tags"]).output.strip() == "no tags yet (imgsearch tag)"


# 14. paths and names reached the terminal raw (an ESC sequence cleared the screen; a tab forged a result line)


def test_names_reach_the_terminal_escaped_and_json_exact(runner: CliRunner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests import tinyclip

    folder = tmp_path / "photos"
    folder.mkdir()
    hostile = folder / "x\x1b[2J\x1b]0;owned\x07\tfake 1.0000\n.png"
    tinyclip.draw("red", "circle", __import__("random").Random(3)).save(hostile)
    assert runner.invoke(cli, ["index", str(folder)]).exit_code == 0
    text = runner.invoke(cli, ["query", "a red circle"]).output
    assert "\x1b" not in text and "\x07" not in text and len(text.strip().splitlines()) == 1
    assert text.strip().split("\t")[1].endswith("x\\x1b[2J\\x1b]0;owned\\x07\\tfake 1.0000\\n.png")
    hits = json.loads(runner.invoke(cli, ["query", "a red circle", "--json"]).output)
    assert hits[0]["path"] == str(hostile)
    added = runner.invoke(cli, ["tag", "add", "holiday", str(hostile)]).output
    assert added.strip() == "tagged 1 images 'holiday'"


# 6. GET /api/search?path_prefix=%00 was a 500 in text/plain (Path.resolve on the request's value)


def test_a_path_prefix_from_a_request_is_compared_as_text(lib, shapes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from imgsearch.web.server import create_app

    folder, labels = shapes
    lib.index([folder])
    (tmp_path / "link").symlink_to(folder)
    with TestClient(create_app(lib, token="t", port=80), base_url="http://localhost") as api:
        bad = api.get("/api/search", params={"q": "a red circle", "path_prefix": "\x00"})
        assert bad.status_code == 400 and bad.json() == {"detail": "path prefix: a path cannot hold a NUL character"}
        through_dots = api.get("/api/search", params={"q": "a red circle", "path_prefix": f"{folder}/../pictures/"})
        assert len(through_dots.json()["hits"]) == len(labels) or through_dots.json()["more"]
        through_link = api.get("/api/search", params={"q": "a red circle", "path_prefix": str(tmp_path / "link")})
        assert through_link.status_code == 200 and through_link.json()["hits"] == [], "no lookup on disk"


# 13. a home inside an indexed folder indexed its own thumbnails, which grew each cycle


def test_imgsearch_never_indexes_its_own_folders(tiny, tiny_embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from imgsearch import Library, load_settings
    from tests.conftest import draw_shapes, tiny_overrides

    photos = tmp_path / "Pictures"
    labels = draw_shapes(photos, per_class=1)
    home = photos / "imgsearch-home"  # the home inside the indexed folder, not hidden by a dot-name
    overrides = {**tiny_overrides(tiny), "model.cache_dir": str(home / "models"), "serve.thumbnail_size": "40"}
    with Library(load_settings(home, overrides=overrides), embedder=tiny_embedder) as lib:
        (home / "generated").mkdir(parents=True)
        draw_shapes(home / "generated", per_class=1)  # as if generated, with add_to_index off
        draw_shapes(home / "models" / "some-cache", per_class=1)
        for _ in range(2):
            report = lib.index([photos])
            for hit in lib.query("a red circle", k=len(labels)):
                lib.thumbnail(hit.id)  # thumbnails are JPEG files under the home, inside the indexed folder
        assert lib.store.count() == len(labels) and report.embedded == 0
        indexed = lib.store.paths_of(lib.store.all_vectors()[0].tolist()).values()
        assert not [p for p in indexed if p.startswith(str(home))]


# 3. any page could make a browser GET the API (each new prompt embedded and stored for good), and a GET of 379
# terms held the model for 11 s


def test_api_requests_from_other_sites_are_refused_and_requests_write_nothing(lib, shapes) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from imgsearch.embed import configured_model_id
    from imgsearch.search.tagger import PromptMemory
    from imgsearch.web.server import create_app

    folder, _ = shapes
    lib.index([folder])
    lib.prompt_memory = PromptMemory(cap=50)
    with TestClient(create_app(lib, token="t", port=80), base_url="http://localhost") as api:
        for site in ("cross-site", "same-site"):
            answer = api.get("/api/search", params={"q": "a cat"}, headers={"Sec-Fetch-Site": site})
            assert answer.status_code == 403 and answer.json() == {"detail": "cross-site request refused"}
        assert (
            api.get("/api/search", params={"q": "a cat"}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        )
        prompts = [f"a picture number {i}" for i in range(60)]
        for prompt in prompts:
            assert api.get("/api/search", params={"q": prompt}).status_code == 200
        many = " + ".join(["a cat"] * 17)
        answer = api.get("/api/search", params={"q": many})
        assert answer.status_code == 400 and answer.json()["detail"] == "query: at most 16 terms (this one has 17)"
    assert lib.store.tags.cached_text_vectors(configured_model_id(lib.settings), prompts) == {}, "nothing stored"
    assert len(lib.prompt_memory) == 50, "at most its cap in memory, the least recently used dropped"


# 7. a read-only home gave tracebacks (index: writer.lock; serve: serve.json) and queries failed too


@pytest.fixture
def read_only_home(lib, shapes, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The test's indexed home, seen through a read-only bind mount (root writes anywhere, so permissions would
    not do): what read-only media or another user's home look like."""
    import shutil
    import subprocess

    folder, labels = shapes
    lib.index([folder])
    lib.close()
    mounted = tmp_path / "read-only-home"
    mounted.mkdir()
    mount = shutil.which("mount")
    made = mount and subprocess.run([mount, "--bind", str(lib.settings.home), str(mounted)], capture_output=True)
    if not made or made.returncode:
        pytest.skip("no bind mount here (needs root)")
    try:
        subprocess.run([mount, "-o", "remount,ro,bind", str(mounted)], check=True, capture_output=True)
        yield mounted, folder, labels
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True)


def test_a_read_only_home_answers_queries_and_refuses_writes_in_one_line(
    read_only_home, runner: CliRunner, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from imgsearch import Library, load_settings, remote
    from tests.conftest import tiny_overrides

    mounted, folder, labels = read_only_home
    monkeypatch.setenv("IMGSEARCH_HOME", str(mounted))
    status = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert status["images"] == len(labels)
    hits = json.loads(runner.invoke(cli, ["query", "a red circle", "-k", "2", "--json"]).output)
    assert [labels[h["path"]] for h in hits] == ["a red circle"] * 2
    for args, message in (
        (["index", str(folder)], f"imgsearch: cannot write to {mounted} (Read-only file system): indexing needs"),
        (["tag", "add", "x", str(folder)], f"imgsearch: {mounted} is read-only: queries work, but nothing"),
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and _one_line(result.output).startswith(message), result.output
    settings = load_settings(mounted, overrides=tiny_overrides(tiny))
    why = remote.announce(settings, remote.Server("http://127.0.0.1:1/", "t", os.getpid(), "f"))
    assert why is not None and why.startswith(f"cannot write {mounted / 'serve.json'} (Read-only file system)")
    with Library(settings) as lib:
        assert lib.thumbnail(hits[0]["id"], 40).is_file(), "thumbnails go to a private temp folder"

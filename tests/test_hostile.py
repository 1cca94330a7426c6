"""What an adversarial pass broke (issue: hostile files, settings and requests), one test per break, each
failing on the code before its fix: hangs, memory, errors that were not one line, data lost or written where it
should not be, and what reaches a terminal or another local user."""

from __future__ import annotations

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

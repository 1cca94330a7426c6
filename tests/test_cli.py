"""The CLI: CliRunner for the commands, and a real subprocess for the main path and the weights error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgsearch.cli import cli
from tests.conftest import SAMPLES, tiny_env


@pytest.fixture
def runner(home: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> CliRunner:  # type: ignore[no-untyped-def]
    for name, value in tiny_env(tiny).items():
        monkeypatch.setenv(name, value)
    return CliRunner()


def test_index_query_status_json(runner: CliRunner, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    result = runner.invoke(cli, ["index", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["embedded"] == len(labels)
    result = runner.invoke(cli, ["query", "a", "blue", "circle", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 2 and labels[hits[0]["path"]] == "a blue circle"
    assert hits[0]["score"] >= hits[1]["score"]
    text = runner.invoke(cli, ["query", "a blue circle", "-k", "1"]).output
    assert text.strip().endswith(hits[0]["path"])
    status = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert status["images"] == len(labels) and status["index_type"] == "flat"
    assert status["model_id"].startswith("imgsearch-tiny-test:file-")


def test_skipped_files_give_exit_code_3_and_are_listed(runner: CliRunner, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, _ = shapes
    (folder / "broken.jpg").write_text("not a picture")
    result = runner.invoke(cli, ["index", str(folder)])
    assert result.exit_code == 3
    assert "broken.jpg: not an image" in result.output
    errors = runner.invoke(cli, ["status", "--errors"])
    assert "broken.jpg\tnot an image" in errors.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["index", "/no/such/folder"], 2, "no such file or folder: /no/such/folder"),
        (["query", "a cat"], 1, "is empty: run `imgsearch index FOLDER` first"),
        (["query"], 2, "nothing to search for"),
        (["query", "cat + missing.jpg"], 2, "no such image file: missing.jpg"),
        (["--set", "index.batch_size=many", "status"], 2, "index.batch_size must be an integer"),
        (["--set", "nonsense", "status"], 2, "expected KEY=VALUE"),
    ],
)
def test_user_mistakes_are_one_line_with_exit_code(runner: CliRunner, args: list[str], code: int, message: str) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")} | env
    return subprocess.run(
        [sys.executable, "-m", "imgsearch", *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_real_process_index_and_query(tmp_path: Path, tiny, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    env = {"IMGSEARCH_HOME": str(tmp_path / "h"), **tiny_env(tiny)}
    indexed = _run(["index", str(folder)], env, tmp_path)
    assert indexed.returncode == 0, indexed.stderr
    assert f"indexed {len(labels)} new or changed" in indexed.stdout
    found = _run(["query", "a yellow square", "-k", "1"], env, tmp_path)
    assert found.returncode == 0, found.stderr
    assert labels[found.stdout.split("\t")[1].strip()] == "a yellow square"


def test_real_process_default_weights_offline_is_one_line(tmp_path: Path) -> None:
    """The README's first command on a machine without internet: one line naming the key, exit 1."""
    env = {"IMGSEARCH_HOME": str(tmp_path / "h"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = _run(["index", str(SAMPLES)], env, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imgsearch: model.pretrained: cannot download weights 'laion2b_s34b_b79k'")
    assert "IMGSEARCH_MODEL__PRETRAINED" in lines[0]

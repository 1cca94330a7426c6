"""Settings: layering, validation with key/type/line, and the packaged defaults file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from imgsearch.cli import cli
from imgsearch.config import defaults_yaml, load_settings
from imgsearch.errors import ConfigError

PACKAGED = Path(__file__).resolve().parent.parent / "imgsearch" / "config.yaml"


def test_packaged_config_yaml_documents_exactly_the_defaults(tmp_path: Path) -> None:
    assert PACKAGED.read_text() == defaults_yaml(), "regenerate: imgsearch config --defaults > imgsearch/config.yaml"
    from_file = load_settings(tmp_path, config_path=PACKAGED, environ={})
    assert from_file.model == load_settings(tmp_path, environ={}).model
    assert from_file.index == load_settings(tmp_path, environ={}).index


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model:\n  name: ViT-L-14\n  device: cpu\nsearch:\n  top_k: 5\n")
    env = {"IMGSEARCH_MODEL__NAME": "RN50", "IMGSEARCH_SEARCH__TOP_K": "7"}
    s = load_settings(tmp_path, overrides={"search.top_k": "9"}, environ=env)
    assert (s.model.name, s.model.device, s.search.top_k, s.index.batch_size) == ("RN50", "cpu", 9, 32)
    assert s.sources["model.name"] == "env IMGSEARCH_MODEL__NAME"
    assert s.sources["model.device"] == f"{tmp_path / 'config.yaml'}:3"
    assert s.sources["search.top_k"] == "--set"
    assert s.sources.get("index.batch_size", "default") == "default"


def test_env_values_are_typed(tmp_path: Path) -> None:
    env = {
        "IMGSEARCH_INDEX__JPEG_DRAFT": "false",
        "IMGSEARCH_INDEX__EXTENSIONS": "jpg, png",
        "IMGSEARCH_MODEL__DOWNLOAD_TIMEOUT": "2",
    }
    s = load_settings(tmp_path, environ=env)
    assert s.index.jpeg_draft is False
    assert s.index.extensions == ["jpg", "png"]
    assert s.model.download_timeout == 2.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("search:\n  top_k: many\n", ["search.top_k", "an integer", ":2"]),
        ("index:\n  jpeg_draft: 3\n", ["index.jpeg_draft", "a boolean", ":2"]),
        ("index:\n  extensions: jpg\n", ["index.extensions", "a list of strings", ":2"]),
        ("model:\n  name: ViT-B-32\n  colour: red\n", ["model.colour", "unknown setting", ":3"]),
        ("models:\n  name: x\n", ["unknown setting", ":1"]),
        ("search:\n  index_type: lsh\n", ["search.index_type", "flat", "hnsw", "ivf"]),
        ("search:\n  top_k: -1\n", ["search.top_k", "negative"]),
        ("model: [1, 2\n", ["not valid YAML"]),
    ],
)
def test_bad_config_file_names_key_type_and_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, environ={})
    for part in expected:
        assert part in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_env_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IMGSEARCH_INDEX__BATCH_SIZE.*index.batch_size must be an integer"):
        load_settings(tmp_path, environ={"IMGSEARCH_INDEX__BATCH_SIZE": "lots"})


def test_cli_config_shows_sources_and_bad_config_exits_2(home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--set", "search.top_k=3", "config", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in yaml.safe_load(result.output)["settings"]}
    assert rows["search.top_k"] == {"key": "search.top_k", "value": 3, "source": "--set"}
    assert rows["model.name"]["source"] == "default"
    bad = runner.invoke(cli, ["--set", "search.top_k=x", "config"])
    assert bad.exit_code == 2
    assert "search.top_k must be an integer" in bad.output
    assert "Traceback" not in bad.output


def test_missing_config_file_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path, config_path=tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("search:\n  top_k: many\n", ":2: search.top_k must be an integer, got 'many'"),
        ("index:\n  jpeg_draft: maybe\n", ":2: index.jpeg_draft must be a boolean, got 'maybe'"),
        ("model:\n  download_timeout: soon\n", ":2: model.download_timeout must be a number, got 'soon'"),
        ("index:\n  extensions: [jpg, 3]\n", ":2: index.extensions must be a list of strings, got ['jpg', 3]"),
        ("model:\n  name: [a, b]\n", ":2: model.name must be a string, got ['a', 'b']"),
        ("\nindex:\n  batch_size: 2.5\n", ":3: index.batch_size must be an integer, got 2.5"),
        ("watch:\n  settle_seconds: .nan\n", ":2: watch.settle_seconds must be a finite number, got nan"),
        ("model:\n  name: x\n  colour: red\n", ":3: unknown setting 'model.colour'"),
        ("model:\n  name: a\n  name: b\n", ":3: 'model.name' is set twice (first on line 2)"),
        ("model:\n  ? [a, b]\n  : 1\n", ":2: expected a setting name, got a YAML sequence"),
        ("model:\n  name: !!python/object:os.system x\n", ":2: model.name: cannot read the value (could not"),
        ("index:\n  batch_size: " + "9" * 5000 + "\n", ":2: index.batch_size: cannot read the value (Exceeds"),
        ("model:\n  name: " + "[" * 1000 + "]" * 1000 + "\n", ": not valid YAML (nested too deeply)"),
        ("model:\n\tname: x\n", ":2: not valid YAML (found character '\\t' that cannot start any token)"),
    ],
)
def test_cli_refuses_a_bad_config_file_with_key_type_and_line(home: Path, text: str, expected: str) -> None:
    home.mkdir()
    (home / "config.yaml").write_text(text)
    for args in (["config"], ["query", "a cat"], ["--config", str(home / "config.yaml"), "status"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith(f"imgsearch: {home / 'config.yaml'}{expected}"), result.output
        assert result.output.count("\n") == 1 and result.output.endswith("\n"), result.output


def test_cli_refuses_bad_environment_and_flag_values(home: Path) -> None:
    runner = CliRunner()
    env = runner.invoke(cli, ["config"], env={"IMGSEARCH_MODEL__DOWNLOAD_TIMEOUT": "inf"})
    assert (env.exit_code, env.output) == (
        2,
        "imgsearch: environment IMGSEARCH_MODEL__DOWNLOAD_TIMEOUT: model.download_timeout must be a finite number, "
        "got inf\n",
    )
    flag = runner.invoke(cli, ["--set", "index.colour=red", "config"])
    assert flag.exit_code == 2 and flag.output.startswith("imgsearch: --set: unknown setting 'index.colour'")


def test_a_bad_config_file_stops_the_real_command_with_one_line(home: Path) -> None:
    import subprocess
    import sys

    home.mkdir()
    (home / "config.yaml").write_text("search:\n  top_k: many\n")
    done = subprocess.run([sys.executable, "-m", "imgsearch", "status"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"imgsearch: {home / 'config.yaml'}:2: search.top_k must be an integer, got 'many'\n"

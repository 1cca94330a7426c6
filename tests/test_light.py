"""The light install: what `pip install imgsearch` gives a CPU user, with no torch, open_clip, onnx or ONNX Runtime.

Each command runs in a new process where importing any of those fails as it does when they are not installed,
so a stray import anywhere on the path is a failure, not a slowdown. The model comes as the hub publishes it
(tests/hubfolder.py writes the tiny trained model in Immich's layout: batch fixed at 1, int32 tokens), given as
a folder or found in the model cache where a fetch would have put it. `.ci/run` also builds a real light
virtual environment and runs the main path there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import hubfolder, tinyclip
from tests.conftest import draw_shapes

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "open_clip", "onnx", "onnxscript", "onnxruntime", "safetensors")
RUN_WITHOUT_HEAVY = f"""
import importlib.abc, sys

HEAVY = {HEAVY!r}


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Absent())
from imgsearch.cli import cli

cli(sys.argv[1:], prog_name="imgsearch")
"""


def light(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`imgsearch ARGS` in a process that cannot import torch & co."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    environ.update({"IMGSEARCH_HOME": str(home), "IMGSEARCH_SERVE__QUERY_VIA_SERVER": "false", **env})
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_HEAVY, *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def tiny_hub(tiny: tinyclip.TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny trained model as the hub publishes models."""
    return hubfolder.write(tiny.name, tiny.checkpoint_path, tmp_path_factory.mktemp("hub") / "tiny", tiny.config_path)


def test_a_hub_folder_indexes_and_searches_without_torch(tiny_hub: Path, tmp_path: Path) -> None:
    labels = draw_shapes(tmp_path / "pictures", per_class=2, seed=5)
    model = {"IMGSEARCH_MODEL__NAME": "tiny", "IMGSEARCH_MODEL__PRETRAINED": str(tiny_hub)}
    home = tmp_path / "home"
    done = light(home, "index", str(tmp_path / "pictures"), **model)
    assert done.returncode == 0, done.stderr
    done = light(home, "query", "a blue triangle", "-k", "2", "--json", **model)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert [labels[h["path"]] for h in hits] == ["a blue triangle"] * 2
    status = json.loads(light(home, "status", "--json", **model).stdout)
    assert status["runtime"] == "openvino" and status["precision"] in ("bf16", "fp32")
    assert status["model_id"].startswith("tiny:onnx-") and status["generation_available"] is False


def _cached_hub_copy(tiny_hub: Path, cache: Path) -> None:
    """Put the hub folder where a completed fetch of ViT-B-32 / laion2b_s34b_b79k leaves it."""
    from imgsearch.embed import hub

    target = cache / "hub" / "immich-app__ViT-B-32__laion2b-s34b-b79k"
    shutil.copytree(tiny_hub, target)
    (target / hub.DONE).write_text("immich-app/ViT-B-32__laion2b-s34b-b79k\n")


def test_a_fetched_export_in_the_cache_serves_the_default_model_offline(tiny_hub: Path, tmp_path: Path) -> None:
    """The default settings (a pretrained tag) find the hub export in the model cache: no network, no torch."""
    draw_shapes(tmp_path / "pictures", per_class=1)
    home = tmp_path / "home"
    _cached_hub_copy(tiny_hub, home / "models")
    for args in (("index", str(tmp_path / "pictures")), ("query", "a red circle", "--json")):
        done = light(home, *args)
        assert done.returncode == 0, done.stderr
    status = json.loads(light(home, "status", "--json").stdout)
    assert status["model_id"] == "ViT-B-32:laion2b_s34b_b79k" and status["images"] == 12


def test_offline_without_an_export_the_light_install_names_the_setting(tmp_path: Path) -> None:
    draw_shapes(tmp_path / "pictures", per_class=1)
    started = time.monotonic()
    done = light(tmp_path / "home", "index", str(tmp_path / "pictures"), HF_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode == 1 and time.monotonic() - started < 30
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("imgsearch: model.pretrained: cannot download immich-app/ViT-B-32__laion2b-s34b-b79k")
    assert "local folder of ONNX exports" in line


def test_a_tag_with_no_published_export_says_what_to_install(tmp_path: Path) -> None:
    draw_shapes(tmp_path / "pictures", per_class=1)
    done = light(
        tmp_path / "home", "index", str(tmp_path / "pictures"), IMGSEARCH_MODEL__PRETRAINED="commonpool_s_s13m_b4k"
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("imgsearch: model.pretrained: no ready ONNX export of ViT-B-32:commonpool")
    assert "imgsearch[torch]" in done.stderr and "\n" not in done.stderr.strip()


def test_a_checkpoint_file_without_torch_says_what_to_install(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"\0" * 1024)
    draw_shapes(tmp_path / "pictures", per_class=1)
    done = light(tmp_path / "home", "index", str(tmp_path / "pictures"), IMGSEARCH_MODEL__PRETRAINED=str(checkpoint))
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line and "is a PyTorch checkpoint" in line and "imgsearch[torch]" in line


def test_a_folder_that_is_not_an_export_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    draw_shapes(tmp_path / "pictures", per_class=1)
    done = light(
        tmp_path / "home", "index", str(tmp_path / "pictures"), IMGSEARCH_MODEL__PRETRAINED=str(tmp_path / "weights")
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"imgsearch: model.pretrained: {tmp_path / 'weights'} is a folder but not one of ONNX exports "
        "(no manifest.json or visual/model.onnx)"
    )


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("generate", "a lighthouse"), "imgsearch[torch]"),
        (("--set", "model.device=cuda", "query", "a cat"), "imgsearch[gpu]"),
        (("--set", "model.backend=open_clip", "query", "a cat"), "imgsearch[torch]"),
        (("--set", "model.precision=int8", "query", "a cat"), "imgsearch[onnxruntime]"),
    ],
)
def test_what_needs_an_extra_says_which_in_one_line(
    tiny_hub: Path, tmp_path: Path, args: tuple[str, ...], extra: str
) -> None:
    model = {"IMGSEARCH_MODEL__NAME": "tiny", "IMGSEARCH_MODEL__PRETRAINED": str(tiny_hub)}
    draw_shapes(tmp_path / "pictures", per_class=1)
    assert light(tmp_path / "home", "index", str(tmp_path / "pictures"), **model).returncode == 0
    done = light(tmp_path / "home", *args, **model)
    line = done.stderr.strip()
    assert done.returncode in (1, 2) and extra in line, line
    assert "\n" not in line and "Traceback" not in line

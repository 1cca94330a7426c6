"""Shared fixtures: a temp home per test, the tiny trained model, a random-init ViT-B-32 checkpoint.

No test reaches the network: HF_ENDPOINT points at a closed local port, so a pretrained tag fails
at once instead of downloading.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

# Before anything imports huggingface_hub, which reads these once.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest

from imgsearch import Library, load_settings
from tests import pgserver, tinyclip

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("IMGSEARCH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("IMGSEARCH_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def tiny(request: pytest.FixtureRequest) -> tinyclip.TinyCheckpoint:
    """The small model trained on coloured shapes, trained once per run (reused while tinyclip.py is unchanged)."""
    return tinyclip.load_or_train(Path(request.config.cache.mkdir("tinyclip")))


def tiny_overrides(tiny: tinyclip.TinyCheckpoint) -> dict[str, str]:
    return {
        "model.name": tiny.name,
        "model.config_file": str(tiny.config_path),
        "model.pretrained": str(tiny.checkpoint_path),
        "model.cache_dir": str(tiny.checkpoint_path.parent / "models"),  # the ONNX export, made once
        "index.batch_size": "8",
        "tagging.templates": ",".join(tinyclip.TEMPLATES),  # the templates the tiny model was trained with
    }


def tiny_env(tiny: tinyclip.TinyCheckpoint) -> dict[str, str]:
    return {"IMGSEARCH_" + k.upper().replace(".", "__"): v for k, v in tiny_overrides(tiny).items()}


@pytest.fixture(scope="session")
def tiny_embedder(tiny: tinyclip.TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The tiny model loaded through the product's own loading path, once."""
    from imgsearch.embed import load_embedder

    return load_embedder(load_settings(tmp_path_factory.mktemp("h"), overrides=tiny_overrides(tiny), environ={}))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_stores: run with SQLite and again with PostgreSQL (store.url)")
    config.addinivalue_line("markers", "faiss_file: about the FAISS file, which only SQLite homes have")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker
    if marked("both_stores") and not marked("faiss_file") and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[pgserver.PgServer]:
    """One throwaway PostgreSQL server with pgvector for the whole run, started on first use."""
    server = pgserver.PgServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the test's library stores metadata and vectors: SQLite in the home (the default), or a fresh
    PostgreSQL database for tests marked both_stores (set in the environment too, for CLI subprocesses)."""
    name = getattr(request, "param", "sqlite")
    if name == "postgresql":
        url = request.getfixturevalue("postgres").new_database()
        monkeypatch.setenv("IMGSEARCH_STORE__URL", url)
    return str(name)


@pytest.fixture
def lib(home: Path, tiny: tinyclip.TinyCheckpoint, tiny_embedder, backend: str) -> Iterator[Library]:  # type: ignore[no-untyped-def]
    library = Library(load_settings(home, overrides=tiny_overrides(tiny)), embedder=tiny_embedder)
    yield library
    library.close()


def draw_shapes(folder: Path, per_class: int = 2, seed: int = 1, fmt: str = "png") -> dict[str, str]:
    """A folder of labelled synthetic pictures: {path: caption}."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for color in tinyclip.COLORS:
        for shape in tinyclip.SHAPES:
            for i in range(per_class):
                path = folder / f"{color}-{shape}-{i}.{fmt}"
                tinyclip.draw(color, shape, rng).save(path)
                labels[str(path)] = tinyclip.caption(color, shape)
    return labels


@pytest.fixture
def shapes(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "pictures"
    return folder, draw_shapes(folder)


def vitb32_overrides(checkpoint: Path) -> dict[str, str]:
    """Settings that load the random-init ViT-B-32 checkpoint through PyTorch (open_clip)."""
    return {"model.pretrained": str(checkpoint), "model.backend": "open_clip"}


@pytest.fixture(scope="session")
def vitb32(vitb32_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The random-init ViT-B-32, loaded once for the run (mechanics and parity, not meaning)."""
    from imgsearch.embed import load_embedder

    home = tmp_path_factory.mktemp("vit-home")
    return load_embedder(load_settings(home, overrides=vitb32_overrides(vitb32_checkpoint), environ={}))


@pytest.fixture(scope="session")
def vitb32_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init checkpoint of the real default architecture, saved as a user's file would be."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    path = tmp_path_factory.mktemp("weights") / "ViT-B-32-randinit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path

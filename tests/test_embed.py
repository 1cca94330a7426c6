"""The open_clip embedder on a random-init checkpoint of the real default architecture (ViT-B-32),
loaded through the same settings a user writes; and every way weights can be missing or wrong."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch import load_settings
from imgsearch.embed import configured_model_id, load_embedder
from imgsearch.errors import ConfigError, WeightsError
from imgsearch.images import decode
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def vitb32(vitb32_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    settings = load_settings(
        tmp_path_factory.mktemp("h"),
        overrides={"model.pretrained": str(vitb32_checkpoint), "model.backend": "open_clip", "model.precision": "fp32"},
        environ={},
    )
    return load_embedder(settings)


def reference(embedder, path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    """open_clip's own recipe: model.encode_image(preprocess(Image.open(p)))."""
    import torch

    with torch.no_grad():
        x = embedder.model.encode_image(embedder.preprocess(Image.open(path)).unsqueeze(0))
    x = x / x.norm(dim=-1, keepdim=True)
    return x[0].numpy()


def stored_embedding(embedder, path: Path, draft: bool = True) -> np.ndarray:  # type: ignore[no-untyped-def]
    """What the indexer stores: its own decoding (with JPEG draft), then prepare + embed_prepared."""
    image = decode(path.read_bytes(), 178_956_970, embedder.input_size if draft else 0)
    return embedder.embed_prepared(np.stack([embedder.prepare(image)]))[0]


def test_dimension_and_model_id(vitb32, vitb32_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    assert vitb32.dim == 512 and vitb32.input_size == 224
    assert vitb32.model_id.startswith("ViT-B-32:file-")
    settings = load_settings(overrides={"model.pretrained": str(vitb32_checkpoint)}, environ={})
    assert configured_model_id(settings) == vitb32.model_id


@pytest.mark.parametrize("name", ["astronaut.jpg", "cat-chelsea.jpg", "coffee-cup.jpg", "horse-silhouette.png"])
def test_pipeline_embedding_matches_open_clip_recipe(vitb32, name: str) -> None:  # type: ignore[no-untyped-def]
    path = SAMPLES / name
    cos = float(stored_embedding(vitb32, path) @ reference(vitb32, path))
    if name.endswith(".png"):  # alpha: we composite on white, open_clip drops alpha; only a sanity bound
        assert cos > 0.9
    else:
        assert cos >= 0.999, cos


def test_draft_decoding_of_a_camera_sized_jpeg_keeps_parity(vitb32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    big = tmp_path / "big.jpg"
    Image.open(SAMPLES / "astronaut.jpg").resize((4000, 3000), Image.Resampling.BICUBIC).save(big, quality=92)
    cos = float(stored_embedding(vitb32, big, draft=True) @ reference(vitb32, big))
    assert cos >= 0.999, cos


def test_text_embeddings_are_unit_and_deterministic(vitb32) -> None:  # type: ignore[no-untyped-def]
    a = vitb32.embed_texts(["a cat", "a dog"])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, vitb32.embed_texts(["a cat", "a dog"]), atol=1e-6)


def _load(tmp_path: Path, **overrides: str):  # type: ignore[no-untyped-def]
    return load_embedder(load_settings(tmp_path, overrides={"model.backend": "open_clip", **overrides}, environ={}))


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"^model.pretrained: no checkpoint file at .*nope.safetensors$"):
        _load(tmp_path, **{"model.pretrained": str(tmp_path / "nope.safetensors")})


def test_checkpoint_of_another_architecture(tmp_path: Path, vitb32_checkpoint: Path) -> None:
    with pytest.raises(WeightsError, match="does not fit model.name=ViT-B-16"):
        _load(tmp_path, **{"model.name": "ViT-B-16", "model.pretrained": str(vitb32_checkpoint)})


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="cannot load checkpoint"):
        _load(tmp_path, **{"model.pretrained": str(bad)})


def test_unknown_model_and_unknown_tag_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.name: unknown model 'ViT-Q-99'"):
        _load(tmp_path, **{"model.name": "ViT-Q-99"})
    with pytest.raises(ConfigError, match="neither a checkpoint file nor a pretrained tag.*laion2b_s34b_b79k"):
        _load(tmp_path, **{"model.pretrained": "no_such_tag"})


def test_pretrained_tag_without_network_fails_fast_with_the_key_to_set(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsError) as err:
        _load(tmp_path)  # the default tag; HF_ENDPOINT is a closed port in tests
    message = str(err.value)
    assert "model.pretrained" in message and "IMGSEARCH_MODEL__PRETRAINED" in message and "\n" not in message
    assert time.monotonic() - started < 30  # not open_clip's minute of retries


def test_cached_tag_weights_are_used_offline(tmp_path: Path, vitb32_checkpoint: Path) -> None:
    """A tag whose file is in the cache loads with no network at all."""
    from huggingface_hub import constants

    repo = "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snapshot = tmp_path / "models" / repo / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").symlink_to(vitb32_checkpoint)
    (tmp_path / "models" / repo / "refs").mkdir()
    (tmp_path / "models" / repo / "refs" / "main").write_text("abc")
    assert constants.ENDPOINT == "http://127.0.0.1:9"
    embedder = _load(tmp_path)
    assert embedder.model_id == "ViT-B-32:laion2b_s34b_b79k" and embedder.dim == 512


def test_draft_decoding_keeps_the_model_input_on_fine_texture(vitb32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Worst case for scaled JPEG decoding: native-resolution texture tiled to 12 MP. Compared at the model's
    input, which is independent of the weights (random weights are too forgiving to judge this)."""
    texture = Image.open(SAMPLES / "gravel.jpg").convert("RGB")
    big = Image.new("RGB", (4096, 3072))
    for x in range(0, 4096, texture.width):
        for y in range(0, 3072, texture.height):
            big.paste(texture, (x, y))
    path = tmp_path / "texture.jpg"
    big.save(path, quality=92)
    full = vitb32.preprocess(Image.open(path)).numpy().ravel()
    drafted = vitb32.prepare(decode(path.read_bytes(), 178_956_970, vitb32.input_size)).ravel()
    assert Image.open(path).size != decode(path.read_bytes(), 178_956_970, vitb32.input_size).size
    cos = float(full @ drafted / np.linalg.norm(full) / np.linalg.norm(drafted))
    assert cos >= 0.999, cos

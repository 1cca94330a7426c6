"""Generation: taming-format VQGAN loading, CLIP-guided optimisation, the Fourier fallback, seeds,
provenance, the calibrated no-match decision, and generated images in the index."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from imgsearch import Library, generate, load_settings
from imgsearch.cli import cli
from imgsearch.errors import WeightsError
from imgsearch.generate import optimize, vqgan
from tests import tinyclip
from tests.conftest import draw_shapes, tiny_env, tiny_overrides
from tests.test_tags import CONCEPTS

# The structure of vqgan_imagenet_f16_16384, scaled down: same blocks, fewer channels and levels.
TINY_VQGAN = vqgan.VQGANConfig(
    embed_dim=16, n_embed=64, z_channels=16, resolution=64, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
    attn_resolutions=(16,),
)  # fmt: skip


class ModelCheckpoint:
    """Stands for a Lightning callback pickled into a .ckpt: the loader must never import or run it."""

    def __init__(self) -> None:
        self.best_model_path = "/somewhere/last.ckpt"


def write_taming(folder: Path, cfg: vqgan.VQGANConfig = TINY_VQGAN, seed: int = 0) -> tuple[Path, dict]:  # type: ignore[type-arg]
    """A checkpoint as taming-transformers' Lightning training writes it: model weights under
    `state_dict` next to the loss's own (perceptual loss, discriminator), hyper-parameters and callbacks."""
    torch.manual_seed(seed)
    state = vqgan.VQGAN(cfg).state_dict()
    extra = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4)}
    ckpt = {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": {**state, **extra},
        "callbacks": {ModelCheckpoint: ModelCheckpoint()},
        "hparams": argparse.Namespace(base_learning_rate=4.5e-6),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6}]}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "tiny-vqgan.ckpt")
    (folder / "tiny-vqgan.yaml").write_text(yaml.safe_dump(cfg.to_yaml()))
    return folder / "tiny-vqgan.ckpt", state


@pytest.fixture(scope="module")
def taming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_taming(tmp_path_factory.mktemp("vqgan"))[0]


def gen_lib(home: Path, tiny, embedder, **extra: str) -> Library:  # type: ignore[no-untyped-def]
    overrides = {**tiny_overrides(tiny), "model.download_timeout": "0.5", **extra}
    return Library(load_settings(home, overrides=overrides), embedder=embedder)


def classify(lib: Library, path: str) -> tuple[str, float]:
    """The tiny model's own verdict on a picture: its best class caption and the probability."""
    names = [f"{c} {s}" for c, s in tinyclip.CLASSES]
    best = lib.label([path], names)[0].labels[0]
    return best.label, best.probability


# loading


def test_a_taming_checkpoint_loads_into_the_same_weights(tmp_path: Path) -> None:
    path, state = write_taming(tmp_path)
    model = vqgan.load(path, path.with_suffix(".yaml"), torch.device("cpu"))
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert {"encoder.down.0.block.0.norm1.weight", "decoder.up.1.upsample.conv.weight", "quantize.embedding.weight",
            "decoder.mid.attn_1.proj_out.weight", "encoder.down.0.downsample.conv.weight",
            "decoder.up.2.attn.1.k.weight"} <= set(loaded)  # fmt: skip
    z = model.random_latent(64, 64, torch.Generator().manual_seed(0))
    assert z.shape == (1, 16, 16, 16)  # f4
    with torch.no_grad():
        image = model.decode(z)
        assert image.shape == (1, 3, 64, 64)
        assert model.encode(image).shape == (1, 16, 16, 16)
        snapped = model.quantize.snap(z)
    codes = model.quantize.embedding.weight
    assert all(any(torch.allclose(v, c) for c in codes) for v in snapped[0].permute(1, 2, 0).reshape(-1, 16))


def test_vqgan_config_of_the_real_model_builds_the_real_shapes() -> None:
    """vqgan_imagenet_f16_16384's config: 16384 codes of 256 dims, f16, attention at 16x16."""
    cfg = vqgan.VQGANConfig(256, 16384, 256, 256, 128, (1, 1, 2, 2, 4), 2, (16,))
    with torch.device("meta"):
        model = vqgan.VQGAN(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert cfg.downscale == 16
    assert shapes["quantize.embedding.weight"] == (16384, 256)
    assert shapes["decoder.conv_in.weight"] == (512, 256, 3, 3)
    assert shapes["decoder.up.4.block.0.conv1.weight"] == (512, 512, 3, 3)
    assert shapes["decoder.up.0.block.2.conv2.weight"] == (128, 128, 3, 3)
    assert "decoder.up.4.attn.0.q.weight" in shapes and "decoder.up.3.attn.0.q.weight" not in shapes
    assert sum(np.prod(s) for s in shapes.values()) > 70_000_000


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_yaml", "generate.vqgan_config: no config for tiny-vqgan.ckpt"),
        ("other_architecture", "does not fit tiny-vqgan.yaml"),
        ("gumbel", "Gumbel-quantised VQGAN, which is not supported"),
        ("not_a_checkpoint", "generate.vqgan_checkpoint: cannot read"),
        ("no_such_file", "no such file or known name"),
    ],
)
def test_unusable_vqgan_weights_are_one_line(tmp_path: Path, damage: str, message: str) -> None:
    from imgsearch.generate import weights

    path, state = write_taming(tmp_path)
    if damage == "missing_yaml":
        path.with_suffix(".yaml").unlink()
    elif damage == "other_architecture":
        bigger = vqgan.VQGANConfig(**{**TINY_VQGAN.__dict__, "ch": 64})
        path.with_suffix(".yaml").write_text(yaml.safe_dump(bigger.to_yaml()))
    elif damage == "gumbel":
        torch.save({"state_dict": {**state, "quantize.embed.weight": torch.zeros(2, 2)}}, path)
    elif damage == "not_a_checkpoint":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "no_such_file":
        path = tmp_path / "nope.ckpt"
    with pytest.raises(WeightsError, match=message) as info:
        files = weights.resolve(str(path), "", tmp_path / "cache", 0.5)
        vqgan.load(files.checkpoint, files.config, torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_a_known_vqgan_offline_fails_fast_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgsearch.generate import weights

    monkeypatch.setattr(weights, "_HEIBOX", "http://127.0.0.1:9/{}/{}")
    with pytest.raises(WeightsError, match="set generate.vqgan_checkpoint to a local .ckpt"):
        weights.resolve("vqgan_imagenet_f16_16384", "", tmp_path, 0.5)


# generation


def test_vqgan_optimisation_raises_the_prompt_score(home: Path, tiny, tiny_embedder, taming: Path) -> None:  # type: ignore[no-untyped-def]
    with gen_lib(home, tiny, tiny_embedder, **{"generate.vqgan_checkpoint": str(taming)}) as lib:
        result = lib.generate("a red circle", steps=40, size=(64, 64), seed=3, generator="vqgan")
    assert result.generator == "vqgan:tiny-vqgan.ckpt" and (result.width, result.height) == (64, 64)
    assert result.score > result.score_start + 0.1, (result.score_start, result.score)
    assert Image.open(result.path).size == (64, 64)


@pytest.mark.parametrize("prompt", ["a red circle", "a blue square", "a yellow triangle"])
def test_the_fourier_generator_draws_what_the_model_recognises(home: Path, tiny, tiny_embedder, prompt: str) -> None:  # type: ignore[no-untyped-def]
    with gen_lib(home, tiny, tiny_embedder) as lib:
        result = lib.generate(prompt, steps=60, size=(64, 64), seed=1, generator="fourier")
        label, probability = classify(lib, result.path)
    assert result.generator == "fourier" and result.score > result.score_start
    assert "a " + label == prompt and probability > 0.5, (label, probability)


def test_seeds_reproduce_and_provenance_is_in_the_png(home: Path, tiny, tiny_embedder) -> None:  # type: ignore[no-untyped-def]
    with gen_lib(home, tiny, tiny_embedder) as lib:
        runs = [lib.generate("a green square", steps=15, size=(48, 32), seed=s, generator="fourier") for s in (7, 7, 8)]
    pixels = [np.asarray(Image.open(r.path)) for r in runs]
    assert len({r.path for r in runs}) == 3  # never overwritten
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])
    assert pixels[0].shape == (32, 48, 3)
    meta = generate.read_provenance(runs[0].path)
    assert meta["prompt"] == "a green square" and meta["seed"] == "7" and meta["steps"] == "15"
    assert meta["generator"] == "fourier" and meta["size"] == "48x32"
    assert meta["model"] == tiny_embedder.model_id and float(meta["score"]) == pytest.approx(runs[0].score, abs=1e-4)


def test_without_vqgan_weights_auto_falls_back_with_a_notice(home: Path, tiny, tiny_embedder) -> None:  # type: ignore[no-untyped-def]
    notices: list[str] = []
    with gen_lib(home, tiny, tiny_embedder, **{"generate.vqgan_checkpoint": "/no/such.ckpt"}) as lib:
        result = lib.generate("a red square", steps=5, size=(32, 32), seed=0, on_notice=notices.append)
        assert result.generator == "fourier"
        assert len(notices) == 1 and "weight-free Fourier generator" in notices[0]
        with pytest.raises(WeightsError, match="generate.vqgan_checkpoint"):
            lib.generate("a red square", steps=5, size=(32, 32), generator="vqgan")


def test_starting_from_an_init_image(home: Path, tiny, tiny_embedder, taming: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    start = tmp_path / "start.png"
    tinyclip.draw("blue", "circle", random.Random(0)).save(start)
    picture = torch.from_numpy(np.asarray(Image.open(start), np.float32) / 255).permute(2, 0, 1)[None]
    fourier = optimize.FourierImage(64, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
    fourier.start_from(picture)
    with torch.no_grad():
        assert (fourier() - picture.clamp(0.01, 0.99)).abs().max() < 1e-3  # renders the picture it starts from

    def distance(path: str) -> float:
        return float(np.abs(np.asarray(Image.open(path), float) - np.asarray(Image.open(start), float)).mean())

    with gen_lib(home, tiny, tiny_embedder, **{"generate.vqgan_checkpoint": str(taming)}) as lib:
        kept = lib.generate("a blue circle", steps=3, size=(64, 64), seed=0, init_image=start, generator="fourier")
        fresh = lib.generate("a blue circle", steps=3, size=(64, 64), seed=0, generator="fourier")
        assert distance(kept.path) < distance(fresh.path) / 2
        moved = lib.generate("a blue circle", steps=3, size=(64, 64), seed=0, init_image=start, generator="vqgan")
        assert moved.generator.startswith("vqgan")


# the no-match decision


@pytest.fixture
def red_and_blue(lib: Library, tmp_path: Path, tiny, tiny_embedder, home: Path):  # type: ignore[no-untyped-def]
    folder = tmp_path / "pictures"
    draw_shapes(folder, per_class=2)
    for path in folder.iterdir():
        if not path.name.startswith(("red", "blue")):
            path.unlink()
    vocab = tmp_path / "concepts.txt"
    vocab.write_text(CONCEPTS)
    library = gen_lib(home, tiny, tiny_embedder, **{"generate.contrast_vocabulary": str(vocab)})
    library.index([folder])
    yield library
    library.close()


def test_no_match_separates_absent_concepts_from_present_ones(red_and_blue: Library) -> None:
    present = {f"a {c} {s}": red_and_blue.match(f"a {c} {s}") for c, s in tinyclip.CLASSES if c in ("red", "blue")}
    absent = {f"a {c} {s}": red_and_blue.match(f"a {c} {s}") for c, s in tinyclip.CLASSES if c not in ("red", "blue")}
    assert all(v.matched for v in present.values()), present
    assert not any(v.matched for v in absent.values()), absent
    lowest_present = min(v.evidence for v in present.values() if v.evidence is not None)
    highest_absent = max(v.evidence for v in absent.values() if v.evidence is not None)
    assert lowest_present - highest_absent > 3, (lowest_present, highest_absent)  # logit units: a wide gap


def test_no_match_for_recombinations_of_present_attributes(home: Path, tiny, tiny_embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Red squares, blue circles, green triangles indexed: "a red circle" is absent though red and circles are not."""
    folder = tmp_path / "pictures"
    draw_shapes(folder, per_class=2)
    kept = {"red-square", "blue-circle", "green-triangle"}
    for path in folder.iterdir():
        if path.stem.rsplit("-", 1)[0] not in kept:
            path.unlink()
    vocab = tmp_path / "concepts.txt"
    vocab.write_text(CONCEPTS)
    with gen_lib(home, tiny, tiny_embedder, **{"generate.contrast_vocabulary": str(vocab)}) as lib:
        lib.index([folder])
        for c, s in tinyclip.CLASSES:
            assert lib.match(f"a {c} {s}").matched == (f"{c}-{s}" in kept), (c, s)


def test_generate_if_missing_by_cli(red_and_blue: Library, tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    for name, value in tiny_env(tiny).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMGSEARCH_GENERATE__CONTRAST_VOCABULARY", red_and_blue.settings.generate.contrast_vocabulary)
    monkeypatch.setenv("IMGSEARCH_GENERATE__GENERATOR", "fourier")
    monkeypatch.setenv("IMGSEARCH_GENERATE__STEPS", "40")
    monkeypatch.setenv("IMGSEARCH_GENERATE__SIZE", "48")
    monkeypatch.setenv("IMGSEARCH_GENERATE__ADD_TO_INDEX", "true")
    runner = CliRunner()
    found = runner.invoke(cli, ["query", "a red circle", "--generate-if-missing", "--json", "-k", "3"])
    assert found.exit_code == 0, found.output
    data = json.loads(found.output)
    assert data["match"]["matched"] and data["generated"] is None and len(data["hits"]) == 3
    made = runner.invoke(cli, ["query", "a yellow square", "--generate-if-missing", "-k", "2"])
    assert made.exit_code == 0, made.output
    assert "no good match" in made.output and "generated " in made.output
    path = made.output.split("generated ", 1)[1].split()[0]
    assert Path(path).is_file() and generate.read_provenance(path)["prompt"] == "a yellow square"
    # it joined the index, marked generated: left out of queries unless asked for
    plain = json.loads(runner.invoke(cli, ["query", "a yellow square", "--json", "-k", "50"]).output)
    assert path not in [h["path"] for h in plain]
    both = json.loads(
        runner.invoke(cli, ["query", "a yellow square", "--json", "-k", "50", "--include-generated"]).output
    )
    assert both[0]["path"] == path


def test_generate_command_and_its_mistakes(home: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    for name, value in tiny_env(tiny).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    args = ["generate", "a", "blue", "triangle", "--steps", "5", "--size", "40x32", "--seed", "9", "--json"]
    result = runner.invoke(cli, [*args, "--generator", "fourier"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["width"], data["height"], data["seed"], data["steps"]) == (40, 32, 9, 5)
    assert Path(data["path"]).parent == home / "generated"
    for bad, message in [(["--size", "huge"], "expected SIDE or WIDTHxHEIGHT"), (["--size", "4"], "8..4096")]:
        out = runner.invoke(cli, ["generate", "x", *bad])
        assert out.exit_code == 2 and message in out.output
    missing = runner.invoke(cli, ["generate", "x", "--init-image", "/no/such.png", "--generator", "fourier"])
    assert missing.exit_code == 2 and "generate: cannot read image /no/such.png" in missing.output


def test_more_steps_make_the_prompt_more_probable(home: Path, tiny, tiny_embedder) -> None:  # type: ignore[no-untyped-def]
    """The tiny model's own probability for the prompt rises with optimisation (softmax over all 12 classes)."""
    with gen_lib(home, tiny, tiny_embedder) as lib:
        short = lib.generate("a green triangle", steps=2, size=(48, 48), seed=4, generator="fourier")
        long = lib.generate("a green triangle", steps=60, size=(48, 48), seed=4, generator="fourier")
        names = [f"{c} {s}" for c, s in tinyclip.CLASSES]
        probs = [
            {x.label: x.probability for x in lib.label([r.path], names)[0].labels}["green triangle"]
            for r in (short, long)
        ]
    assert probs[1] > probs[0] + 0.3, probs

"""The torch-free runtimes (OpenVINO, ONNX Runtime) against open_clip itself: the same embeddings (ViT-B-32,
random init), the same rankings (the tiny trained model), the same token ids; exported once, then loaded
without torch; a damaged export is exported again."""

from __future__ import annotations

import html
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch import Library, load_settings
from imgsearch.config import Settings
from imgsearch.embed import configured_model_id, export, folder, load_embedder, load_torch_embedder
from imgsearch.embed.bpe import MERGES_FILE, ClipTokenizer
from imgsearch.embed.onnx import OnnxEmbedder
from imgsearch.embed.openclip import OpenClipEmbedder
from imgsearch.embed.openvino import OpenVinoEmbedder
from imgsearch.errors import ConfigError, WeightsError
from tests import tinyclip
from tests.conftest import SAMPLES, draw_shapes, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def _settings(home: Path, cache: Path, **overrides: str) -> Settings:
    """Settings with the model cache (the ONNX exports) at `cache`, whatever the overrides say."""
    return load_settings(home, overrides={**overrides, "model.cache_dir": str(cache)}, environ={})


@pytest.fixture(scope="module")
def vitb32_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vitb32-models")


@pytest.fixture(scope="module", params=["openvino", "onnx"])
def vitb32_models(request, vitb32_checkpoint: Path, vitb32_cache: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(served, torch, settings) for the random-init ViT-B-32 on each torch-free runtime at fp32; the export is made
    once, for both."""
    home = tmp_path_factory.mktemp("h")
    overrides = {"model.pretrained": str(vitb32_checkpoint), "model.backend": request.param, "model.precision": "fp32"}
    settings = _settings(home, vitb32_cache, **overrides)
    return load_embedder(settings), load_torch_embedder(settings), settings


def _cache_folder(settings: Settings) -> Path:
    return folder.cache_folder(settings, configured_model_id(settings))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="module")
def tiny_onnx(tiny: tinyclip.TinyCheckpoint, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    settings = _settings(tmp_path_factory.mktemp("h"), tiny_cache, **tiny_overrides(tiny), **{"model.backend": "onnx"})
    return load_embedder(settings)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def _pictures() -> list[Image.Image]:
    """The samples, plus sizes and shapes that exercise the resize and crop arithmetic."""
    images = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    base = images[0]
    images += [base.resize(size, Image.Resampling.BILINEAR) for size in [(37, 53), (224, 224), (225, 223), (1001, 97)]]
    images.append(folder.probe_image())
    return images


# parity with PyTorch


def test_the_model_facts_are_the_same(vitb32_models) -> None:  # type: ignore[no-untyped-def]
    ox, pt, settings = vitb32_models
    assert isinstance(ox, OnnxEmbedder | OpenVinoEmbedder) and isinstance(pt, OpenClipEmbedder)
    assert ox.precision == "fp32" and ox.runtime == {"onnx": "onnxruntime"}.get(settings.model.backend, "openvino")
    for attr in ("model_id", "dim", "input_size", "logit_bias"):
        assert getattr(ox, attr) == getattr(pt, attr), attr
    assert ox.logit_scale == pytest.approx(pt.logit_scale)
    ids = {
        b: configured_model_id(_with(settings, **{"model.backend": b}))
        for b in ("auto", "openvino", "onnx", "open_clip")
    }
    assert set(ids.values()) == {pt.model_id}, "the index would think the model changed"


def _with(settings: Settings, **overrides: str) -> Settings:
    """The same model and cache, other settings."""
    return load_settings(settings.home, overrides={**_model_of(settings), **overrides}, environ={})


def _model_of(settings: Settings) -> dict[str, str]:
    return {f"model.{k}": getattr(settings.model, k) for k in ("name", "pretrained", "config_file", "cache_dir")}


def test_preprocessing_matches_open_clip(vitb32_models) -> None:  # type: ignore[no-untyped-def]
    ox, pt, _ = vitb32_models
    images = _pictures()
    images += [images[0].convert("L"), images[0].convert("RGBA")]  # open_clip resizes first, converts after
    for image in images:
        ours, theirs = ox.prepare(image), pt.preprocess(image).numpy()
        assert ours.dtype == np.float32 and ours.shape == theirs.shape == (3, 224, 224)
        assert float(np.abs(ours - theirs).max()) < 1e-5, image.size


def test_image_embeddings_match_pytorch(vitb32_models) -> None:  # type: ignore[no-untyped-def]
    ox, pt, _ = vitb32_models
    images = _pictures()
    cos = _cosines(ox.embed_images(images), pt.embed_images(images))
    assert cos.min() >= 0.999, cos
    np.testing.assert_allclose(np.linalg.norm(ox.embed_images(images[:2]), axis=1), 1.0, rtol=1e-5)


def test_text_embeddings_match_pytorch(vitb32_models) -> None:  # type: ignore[no-untyped-def]
    ox, pt, _ = vitb32_models
    texts = ["a photo of a cat", "", "A DOG!", "Ünïcödé 東京 🐱", "word " * 200, "it's the cat's toy"]
    cos = _cosines(ox.embed_texts(texts), pt.embed_texts(texts))
    assert cos.min() >= 0.999, cos
    assert ox.embed_texts([]).shape == (0, 512) and ox.embed_images([]).shape == (0, 512)


def test_the_tiny_model_ranks_the_same(tiny, tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Search over ONNX embeddings returns what search over PyTorch embeddings does, in the same order."""
    tiny_embedder = load_torch_embedder(_settings(tmp_path, tmp_path / "models", **tiny_overrides(tiny)))
    labels = draw_shapes(tmp_path / "pics", per_class=3, seed=7)
    images = [Image.open(p).convert("RGB") for p in labels]
    by_onnx, by_torch = tiny_onnx.embed_images(images), tiny_embedder.embed_images(images)
    assert _cosines(by_onnx, by_torch).min() >= 0.999
    queries = [tinyclip.caption(c, s) for c, s in tinyclip.CLASSES] + list(tinyclip.COLORS)
    q_onnx, q_torch = tiny_onnx.embed_texts(queries), tiny_embedder.embed_texts(queries)
    assert _cosines(q_onnx, q_torch).min() >= 0.999
    for i, query in enumerate(queries):
        rank_onnx = np.argsort(-(by_onnx @ q_onnx[i]), kind="stable")[:5]
        rank_torch = np.argsort(-(by_torch @ q_torch[i]), kind="stable")[:5]
        assert rank_onnx.tolist() == rank_torch.tolist(), query


def test_a_library_on_the_onnx_backend_finds_the_right_shapes(tiny, tiny_cache: Path, home: Path, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    overrides = {**tiny_overrides(tiny), "model.backend": "onnx", "model.cache_dir": str(tiny_cache)}
    with Library(load_settings(home, overrides=overrides)) as lib:
        lib.index([folder])
        assert isinstance(lib.embedder, OnnxEmbedder)
        hits = lib.query("a blue triangle", k=2)
        assert [labels[h.path] for h in hits] == ["a blue triangle"] * 2


# the cache


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.iterdir()}


def test_a_new_process_loads_the_export_without_torch(vitb32_models) -> None:  # type: ignore[no-untyped-def]
    """The cold query path: the cached export alone, no torch or open_clip import, and no export again."""
    ox, _, settings = vitb32_models
    export_folder = _cache_folder(settings)
    before = _files(export_folder)
    script = (
        "import json, sys\n"
        "from imgsearch import load_settings\n"
        "from imgsearch.embed import load_embedder\n"
        "s = load_settings(sys.argv[1], overrides=json.loads(sys.argv[2]), environ={})\n"
        "v = load_embedder(s).embed_texts(['a photo of a cat'])[0]\n"
        "print(json.dumps({'mods': sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules),"
        " 'v': v.tolist()}))\n"
    )
    for backend in ("onnx", "openvino", "auto"):
        overrides = {**_model_of(settings), "model.backend": backend, "model.device": "cpu", "model.precision": "fp32"}
        done = subprocess.run(
            [sys.executable, "-c", script, str(settings.home), json.dumps(overrides)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["mods"] == [], f"{backend}: imported {result['mods']}"
        assert float(np.dot(result["v"], ox.embed_texts(["a photo of a cat"])[0])) > 0.99999
    assert _files(export_folder) == before, "the model was exported again"


def test_a_prompt_runs_at_its_own_length(vitb32_models) -> None:  # type: ignore[no-untyped-def]
    """CLIP's text tower is causal and pools at the end token: the export takes tokens cut after it, with the
    embedding of the full context (the parity tests above compare with PyTorch on all 77)."""
    ox, pt, _ = vitb32_models
    assert ox.folder.text_any_length
    texts = ["a cat", "a photo of an old teacher at a blackboard!", "!", ""]
    assert [ox._tokens([t]).shape[1] for t in texts] == [4, 13, 3, 2]  # start, the words' tokens, end
    assert ox._tokens(texts).shape == (4, 13)
    cos = _cosines(ox.embed_texts(texts), pt.embed_texts(texts))
    assert cos.min() >= 0.9999, cos


def test_the_manifest_records_what_loading_needs(vitb32_models) -> None:  # type: ignore[no-untyped-def]
    ox, _, settings = vitb32_models
    manifest = json.loads((_cache_folder(settings) / folder.MANIFEST).read_text())
    assert manifest["status"] == "ok" and manifest["model_id"] == ox.model_id
    assert manifest["context_length"] == 77 and manifest["preprocess"]["size"] == [224, 224]
    assert manifest["preprocess"]["interpolation"] == "bicubic" and manifest["preprocess"]["resize_mode"] == "shortest"
    assert min(manifest["parity"].values()) >= 0.999
    assert {"torch", "open_clip_torch", "openvino", "onnxruntime"} <= set(manifest["versions"])
    assert MERGES_FILE in manifest["files"] and "text.onnx" in manifest["files"]


def _tiny_copy(tiny, tiny_cache: Path, tiny_onnx, tmp_path: Path) -> tuple[Settings, Path]:  # type: ignore[no-untyped-def]
    """A private copy of the tiny export, to damage."""
    import shutil

    shared = _settings(tmp_path, tiny_cache, **tiny_overrides(tiny), **{"model.backend": "onnx"})
    settings = _settings(tmp_path, tmp_path / "models", **tiny_overrides(tiny), **{"model.backend": "onnx"})
    shutil.copytree(_cache_folder(shared), _cache_folder(settings))
    return settings, _cache_folder(settings)


def test_a_truncated_export_is_exported_again(tiny, tiny_cache: Path, tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, copy = _tiny_copy(tiny, tiny_cache, tiny_onnx, tmp_path)
    data = copy / "image.onnx.data" if (copy / "image.onnx.data").exists() else copy / "image.onnx"
    data.write_bytes(data.read_bytes()[:100])
    again = load_embedder(settings)
    image = folder.probe_image()
    assert data.stat().st_size > 100
    np.testing.assert_allclose(again.embed_images([image]), tiny_onnx.embed_images([image]), atol=1e-5)


def test_a_damaged_export_is_exported_again(tiny, tiny_cache: Path, tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, copy = _tiny_copy(tiny, tiny_cache, tiny_onnx, tmp_path)
    graph = copy / "text.onnx"
    graph.write_bytes(b"\xff" * graph.stat().st_size)  # same size: only onnxruntime can tell
    again = load_embedder(settings)
    np.testing.assert_allclose(again.embed_texts(["a red circle"]), tiny_onnx.embed_texts(["a red circle"]), atol=1e-5)
    assert graph.read_bytes()[:8] != b"\xff" * 8


def test_a_damaged_export_that_cannot_be_redone_is_one_line(tiny, tiny_cache: Path, tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, copy = _tiny_copy(tiny, tiny_cache, tiny_onnx, tmp_path)
    (copy / "text.onnx").write_bytes(b"\xff" * 64)
    model = folder.from_manifest(copy, json.loads((copy / folder.MANIFEST).read_text()))
    for served in (OnnxEmbedder(model), OpenVinoEmbedder(model, "fp32")):
        with pytest.raises(WeightsError, match=r"^model.cache_dir: the ONNX export .*text.onnx cannot be read") as err:
            served.embed_texts(["x"])
    assert "\n" not in str(err.value)


def test_a_model_onnx_cannot_serve_stays_on_pytorch_with_auto(tiny, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(export, "tokenizer_problem", lambda embedder: "its tokenizer (HFTokenizer) is not CLIP's BPE")
    settings = _settings(tmp_path, tmp_path / "models", **tiny_overrides(tiny), **{"model.device": "cpu"})
    with pytest.raises(ConfigError, match=r"^model.backend: onnx cannot serve .*HFTokenizer.*model.backend=auto"):
        load_embedder(_with(settings, **{"model.backend": "onnx"}))
    monkeypatch.setattr(export, "export", lambda *a: pytest.fail("the refusal is remembered; no second export"))
    assert isinstance(load_embedder(_with(settings, **{"model.backend": "auto"})), OpenClipEmbedder)


def test_an_unwritable_cache_is_one_line_with_onnx_and_pytorch_with_auto(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("not a folder")
    settings = _settings(tmp_path, tmp_path / "file" / "models", **tiny_overrides(tiny), **{"model.device": "cpu"})
    with pytest.raises(WeightsError, match=r"^model.cache_dir: cannot write the ONNX export under .*file") as err:
        load_embedder(_with(settings, **{"model.backend": "onnx"}))
    assert "\n" not in str(err.value)
    assert isinstance(load_embedder(_with(settings, **{"model.backend": "auto"})), OpenClipEmbedder)


def test_the_onnx_backend_runs_on_the_cpu_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="onnx runs on the CPU only"):
        load_embedder(_settings(tmp_path, tmp_path, **{"model.backend": "onnx", "model.device": "cuda"}))
    with pytest.raises(ConfigError, match="fp16 needs model.backend=open_clip"):
        load_embedder(_settings(tmp_path, tmp_path, **{"model.backend": "onnx", "model.precision": "fp16"}))


def test_a_missing_checkpoint_is_the_usual_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"^model.pretrained: no checkpoint file at .*nope.safetensors$"):
        load_embedder(
            _settings(
                tmp_path, tmp_path, **{"model.backend": "onnx", "model.pretrained": str(tmp_path / "nope.safetensors")}
            )
        )


# the tokenizer


def _texts(n: int) -> list[str]:
    """Fixed hard cases, then random mixes of words, punctuation, digits, scripts, emoji, entities, whitespace."""
    fixed = [
        "", " ", "\n\t ", "a", "A", "a photo of a cat", "A PHOTO OF A CAT", "don't", "DON'T", "it's we're they'll I'd",
        "hello,world", "e-mail: me@example.com", "3.14159", "1,000,000", "2024-01-01T12:00", "C++ & C#",
        "$100 (approx.)",
        "naïve café résumé", "Ünïcödé", "Straße", "東京タワー", "한국어 문장", "Привет, мир!", "مرحبا", "עברית",
        "🐱🐶", "👍🏽", "👨‍👩‍👧", "&amp; &lt;b&gt; &quot;x&quot; &#39;y&#39; &amp;amp;", "Ã©tÃ©", "ﬁne ﬂow",
        "tab\tsep", "  leading and trailing  ", "multiple   spaces", "line\nbreak\r\nwindows", "\u00a0nbsp\u2003em",
        "<start_of_text>", "<end_of_text> after", "x<start_of_text>y", "'''", "---", "....", "?!?!", "😀" * 40,
        "word " * 100, "supercalifragilisticexpialidocious" * 5, "a" * 300, "1234567890" * 20, "ǅ ǈ ǋ", "\u0345",
        "ＦＵＬＬＷＩＤＴＨ", "Ⅻ", "½ ¾", "ℌ𝔢𝔩𝔩𝔬", "x\u0301y", "ﬀ", "İstanbul", "ΣΊΣΥΦΟΣ", "\x00\x01 control",
    ]  # fmt: skip
    rng = random.Random(0)
    pieces = [
        "cat", "Dog", "RED", "circle", "photo", "of", "a", "the", "'s", "'ll", ",", ".", "!", "?", "-", "(", ")", "\"",
        "42", "7", "3.5", "東京", "café", "🐱", "&amp;", "&lt;", "\t", "\n", "  ", "über", "x2", "#tag", "@user", "😀",
        "ñ", "Ω", "—", "…", "’", "“", "”",
    ]  # fmt: skip
    while len(fixed) < n:
        words = rng.choices(pieces, k=rng.randint(1, 90))
        fixed.append("".join(w + rng.choice(["", " ", " ", "  "]) for w in words))
    return fixed


@pytest.mark.parametrize("model", ["ViT-B-32", "tiny"])
def test_token_ids_are_open_clips(model: str, tiny) -> None:  # type: ignore[no-untyped-def]
    import open_clip

    if model == "tiny":
        open_clip.add_model_config(tiny.config_path)
        model = tiny.name
    reference = open_clip.get_tokenizer(model)
    ours = ClipTokenizer.from_file(Path(open_clip.__file__).parent / MERGES_FILE, reference.context_length)
    texts = _texts(300)
    expected, got = reference(texts).numpy(), ours(texts)
    assert got.dtype == np.int64 and got.shape == expected.shape
    mismatched = [texts[i] for i in range(len(texts)) if not np.array_equal(got[i], expected[i])]
    assert not mismatched, mismatched[:5]
    assert (got[:, -1] != 0).sum() >= 20, "many texts must be long enough to be cut"


def test_ftfy_is_skipped_only_for_text_it_leaves_as_it_is() -> None:
    """clean() does not import ftfy for printable ASCII without "&": ftfy would change none of it."""
    import ftfy

    from imgsearch.embed import bpe

    rng = random.Random(3)
    alphabet = [chr(c) for c in range(128)]  # controls, whitespace, punctuation, "&", letters
    texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(3000)] + _texts(300)
    texts += ["a &amp;amp;amp; b", "tab\there", "cr\rlf\r\n", "esc\x1b[31mred", "nul\x00", "del\x7f", "\x0bvt"]
    skipped = 0
    for text in texts:
        full = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
        assert bpe.clean(text) == full, repr(text)
        skipped += bpe._plain(text)
    assert skipped > 100, "the fast path is taken"

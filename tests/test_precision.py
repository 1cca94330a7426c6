"""Precision by hardware (`model.precision`): bf16 where the CPU has it and a probe agrees with fp32, fp32 elsewhere,
int8 only when asked; the choice recorded once per model and CPU, shown by `status`, and never a reason to
re-index.

Which CPU the code believes it runs on is set by replacing `cpu_info` (the flags /proc/cpuinfo would show), so both
kinds of machine are tested on whichever this is; the parity of real bf16 arithmetic is checked where the CPU has it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Library, load_settings
from imgsearch.config import Settings
from imgsearch.embed import configured_model_id, cpu, load_embedder, loading, precision
from imgsearch.errors import ConfigError
from tests import tinyclip
from tests.conftest import SAMPLES, draw_shapes, tiny_overrides

BF16_CPU = cpu.CpuInfo("Intel Xeon (test)", "x86_64", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
FP32_CPU = cpu.CpuInfo("AMD EPYC 7003 (test)", "x86_64", frozenset({"avx2", "fma"}))


@pytest.fixture
def on_cpu(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def use(info: cpu.CpuInfo) -> None:
        monkeypatch.setattr(precision, "cpu_info", lambda: info)

    return use


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the precision probes that run (each embeds the probe pictures)."""
    calls: list[int] = []
    real = loading.probe_images

    def counted(n: int = 8):  # type: ignore[no-untyped-def]
        calls.append(n)
        return real(n)

    monkeypatch.setattr(loading, "probe_images", counted)
    return calls


def _tiny(tiny: tinyclip.TinyCheckpoint, home: Path, **more: str) -> Settings:
    """The tiny model with a model cache of the test's own (the precision record lives there), sharing the export."""
    overrides = {**tiny_overrides(tiny), **more}
    settings = load_settings(home, overrides=overrides, environ={})
    own_cache = home / "models"
    if not (own_cache / "onnx").exists():
        import shutil

        if not (settings.model_cache_dir / "onnx").exists():  # the shared export, made once (at fp32: no probe)
            load_embedder(load_settings(home, overrides={**overrides, "model.precision": "fp32"}, environ={}))
        shutil.copytree(settings.model_cache_dir / "onnx", own_cache / "onnx")
    return load_settings(home, overrides={**overrides, "model.cache_dir": str(own_cache)}, environ={})


def test_auto_is_bf16_on_a_bf16_cpu_after_one_probe(tiny, tmp_path: Path, on_cpu, probes) -> None:  # type: ignore[no-untyped-def]
    on_cpu(BF16_CPU)
    settings = _tiny(tiny, tmp_path)
    with Library(settings) as lib:
        status = lib.status()
        assert status.runtime == "openvino" and status.precision == "" and "probe" in status.precision_reason
        assert lib.embedder.precision == "bf16" and lib.embedder.runtime == "openvino"
    assert len(probes) == 1
    record = json.loads((settings.model_cache_dir / precision.RECORD).read_text())
    (entry,) = record.values()
    assert entry["precision"] == "bf16" and entry["min_cosine"] >= precision.LOWER_PARITY
    assert "amx_bf16, avx512_bf16" in entry["reason"]
    with Library(settings) as lib:  # a new process: the record answers, no probe
        assert lib.embedder.precision == "bf16"
        status = lib.status()
    assert len(probes) == 1
    assert status.precision == "bf16" and status.precision_reason == entry["reason"]


def test_a_probe_that_disagrees_keeps_fp32_and_status_says_why(tiny, tmp_path: Path, on_cpu, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    on_cpu(BF16_CPU)
    monkeypatch.setattr(precision, "LOWER_PARITY", 1.5)  # no cosine reaches it
    settings = _tiny(tiny, tmp_path)
    with Library(settings) as lib:
        assert lib.embedder.precision == "fp32"
        status = lib.status()
    assert status.precision == "fp32"
    assert (
        status.precision_reason.startswith("bf16 probe: least cosine to fp32 0.9")
        and "< 1.5" in status.precision_reason
    )


def test_auto_is_fp32_on_a_cpu_without_bf16_and_bf16_cannot_be_forced(tiny, tmp_path: Path, on_cpu, probes) -> None:  # type: ignore[no-untyped-def]
    on_cpu(FP32_CPU)
    settings = _tiny(tiny, tmp_path)
    with Library(settings) as lib:
        assert lib.embedder.precision == "fp32"
        assert "neither AMX nor AVX512_BF16" in lib.status().precision_reason
    assert probes == [], "no probe where bf16 is not native"
    for backend in ("auto", "openvino", "open_clip"):
        with pytest.raises(ConfigError, match=r"^model.precision: bf16 needs a CPU with AMX or AVX512_BF16"):
            load_embedder(_tiny(tiny, tmp_path, **{"model.precision": "bf16", "model.backend": backend}))


@pytest.mark.parametrize(
    ("backend", "chosen", "message"),
    [
        ("openvino", "int8", "int8 runs on ONNX Runtime"),
        ("open_clip", "int8", "int8 runs on ONNX Runtime"),
        ("onnx", "bf16", "bf16 runs on OpenVINO or PyTorch"),
        ("openvino", "fp16", "fp16 needs model.backend=open_clip on a CUDA device"),
        ("open_clip", "fp16", "fp16 needs model.backend=open_clip on a CUDA device"),
    ],
)
def test_a_precision_the_runtime_lacks_is_one_line(
    tiny, tmp_path: Path, backend: str, chosen: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    settings = _tiny(tiny, tmp_path, **{"model.backend": backend, "model.precision": chosen, "model.device": "cpu"})
    with pytest.raises(ConfigError, match=rf"^model.precision: {message}"):
        load_embedder(settings)


def test_every_precision_shares_the_model_id_so_nothing_is_reindexed(tiny, tmp_path: Path, on_cpu) -> None:  # type: ignore[no-untyped-def]
    """A library indexed at fp32 (an fp32-only machine) answers at bf16 (a newer one) and int8, re-embedding nothing."""
    folder, labels = tmp_path / "pictures", draw_shapes(tmp_path / "pictures", per_class=2, seed=3)
    ids, embedded = set(), []
    for cpu_now, chosen, expected in (
        (FP32_CPU, "auto", "fp32"),
        (BF16_CPU, "auto", "bf16"),
        (BF16_CPU, "int8", "int8"),
    ):
        on_cpu(cpu_now)
        settings = _tiny(tiny, tmp_path / "home", **{"model.precision": chosen})
        ids.add(configured_model_id(settings))
        with Library(settings) as lib:
            embedded.append(lib.index([folder]).embedded)
            hits = lib.query("a green square", k=2)
            assert lib.embedder.precision == expected
        assert [labels[h.path] for h in hits] == ["a green square"] * 2
    assert len(ids) == 1 and embedded == [24, 0, 0]


def _top10_overlap(scores_a: np.ndarray, scores_b: np.ndarray) -> float:
    """Mean overlap of each query's ten best under two score matrices [queries, images]."""
    top_a = np.argsort(-scores_a, axis=1)[:, :10]
    top_b = np.argsort(-scores_b, axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b, strict=True)]))


def test_int8_retrieval_agrees_with_fp32_on_the_trained_model(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Text and image queries over 120 pictures: int8 (queries and index) finds what fp32 finds."""
    from PIL import Image

    labels = draw_shapes(tmp_path / "pictures", per_class=10, seed=11)
    pictures = [Image.open(p).convert("RGB") for p in labels]
    fp32 = load_embedder(_tiny(tiny, tmp_path, **{"model.backend": "onnx", "model.precision": "fp32"}))
    int8 = load_embedder(_tiny(tiny, tmp_path, **{"model.precision": "int8"}))
    assert int8.runtime == "onnxruntime" and int8.precision == "int8" and fp32.precision == "fp32"
    images_32, images_8 = fp32.embed_images(pictures), int8.embed_images(pictures)
    prompts = [template.format(concept) for template in tinyclip.TEMPLATES for concept in tinyclip.CONCEPTS]
    texts_32, texts_8 = fp32.embed_texts(prompts), int8.embed_texts(prompts)
    assert _top10_overlap(texts_32 @ images_32.T, texts_8 @ images_8.T) >= 0.95, "text queries"
    assert _top10_overlap(images_32 @ images_32.T, images_8 @ images_8.T) >= 0.95, "image queries"
    assert load_embedder(_tiny(tiny, tmp_path)).precision != "int8", "int8 is never chosen by itself"


@pytest.mark.skipif(not cpu.cpu_info().bf16, reason="this CPU has no native bf16 (checked on one that has)")
@pytest.mark.parametrize("backend", ["openvino", "open_clip"])
def test_real_bf16_embeddings_match_fp32(vitb32_checkpoint: Path, tmp_path: Path, backend: str) -> None:
    """On the real architecture (random init) and this CPU's bf16 units: cosine >= 0.999 to fp32, images and texts."""
    from PIL import Image

    overrides = {"model.pretrained": str(vitb32_checkpoint), "model.backend": backend}
    bf16 = load_embedder(load_settings(tmp_path, overrides={**overrides, "model.precision": "bf16"}, environ={}))
    fp32 = load_embedder(load_settings(tmp_path, overrides={**overrides, "model.precision": "fp32"}, environ={}))
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    pictures = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    texts = ["a photo of a cat", "an astronaut", "a rocket on the launch pad", "Ünïcödé 東京 🐱", "word " * 90]
    assert float((bf16.embed_images(pictures) * fp32.embed_images(pictures)).sum(axis=1).min()) >= 0.999
    assert float((bf16.embed_texts(texts) * fp32.embed_texts(texts)).sum(axis=1).min()) >= 0.999


def test_cpu_flags_are_read_from_proc_cpuinfo() -> None:
    sapphire = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n"
    )
    zen3 = "processor\t: 0\nmodel name\t: AMD EPYC 7R13 Processor\nflags\t\t: fpu sse4_2 avx2 fma\n"
    graviton3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert cpu.parse_cpuinfo(sapphire, "x86_64").bf16_flags == ["amx_bf16", "avx512_bf16"]
    assert cpu.parse_cpuinfo(sapphire, "x86_64").model == "Intel(R) Xeon(R) Platinum 8480+"
    assert not cpu.parse_cpuinfo(zen3, "x86_64").bf16
    assert cpu.parse_cpuinfo(graviton3, "aarch64").bf16
    assert not cpu.parse_cpuinfo("", "x86_64").bf16, "unknown flags: bf16 is never assumed"
    assert cpu.parse_cpuinfo(sapphire, "x86_64").signature != cpu.parse_cpuinfo(zen3, "x86_64").signature

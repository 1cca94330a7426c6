"""Settings: one frozen object built from a declared registry.

Precedence, highest first: flags (`--set section.key=value`), `IMGSEARCH_SECTION__KEY` environment
variables, a config file (`--config PATH`, else `config.yaml` in the home folder), then the defaults
declared here (and documented in the packaged `config.yaml`). Every value is validated once, with
a message naming the key, the expected type and, for files, the line.

The home folder holds all state (database, vector index, model cache): `IMGSEARCH_HOME`, else the
user's data directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgsearch.errors import ConfigError
from imgsearch.types import GENERATORS

ENV_PREFIX = "IMGSEARCH_"


def _opt(
    default: Any, help: str, choices: tuple[str, ...] | None = None, check: Callable[[Any], str | None] | None = None
) -> Any:
    """A declared setting. `check` returns what is wrong with a value (completing "KEY must ..."), or None."""
    metadata = {"help": help, "choices": choices, "check": check}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _fraction(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "be between 0 and 1"


def _templates(value: list[str]) -> str | None:
    if not value:
        return "list at least one template"
    bad = [t for t in value if t.count("{}") != 1]
    return f"contain {{}} exactly once in each template (not in {bad[0]!r})" if bad else None


def _at_least(least: float) -> Callable[[float], str | None]:
    return lambda value: None if value >= least else f"be at least {least}"


def _between(least: float, most: float) -> Callable[[float], str | None]:
    return lambda value: None if least <= value <= most else f"be between {least} and {most}"


def _side(value: int) -> str | None:
    return None if value == 0 or 8 <= value <= 4096 else "be 0 (the device's default) or between 8 and 4096"


def _port(value: int) -> str | None:
    return None if value <= 65535 else "be a TCP port (0: any free port)"


@dataclass(frozen=True)
class ModelSettings:
    name: str = _opt("ViT-B-32", "open_clip architecture (`imgsearch models` lists them)")
    pretrained: str = _opt(
        "laion2b_s34b_b79k",
        "a pretrained tag of model.name (fetched and cached on first use: its ONNX export from the hub, or its "
        "checkpoint where torch is installed), a local checkpoint file, or a local folder of ONNX exports",
    )
    config_file: str = _opt("", "JSON open_clip model config for an architecture open_clip does not ship")
    backend: str = _opt(
        "auto",
        "auto (OpenVINO on the CPU, ONNX Runtime for int8, PyTorch on CUDA), openvino, onnx (ONNX Runtime, CPU) "
        "or open_clip (PyTorch); the CPU runtimes read ONNX files: a hub export, or our own made once with torch",
        ("auto", "openvino", "onnx", "open_clip"),
    )
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    precision: str = _opt(
        "auto",
        "auto (fp16 on CUDA; on the CPU bf16 where it has AMX or AVX512_BF16 and a probe agrees with fp32, else fp32), "
        "fp32, bf16, int8 (ONNX Runtime, CPU; opt-in: embeddings move more) or fp16 (CUDA)",
        ("auto", "fp32", "bf16", "int8", "fp16"),
    )
    cache_dir: str = _opt("", "where downloaded weights and ONNX exports are kept; empty: HOME/models")
    download_timeout: float = _opt(
        5.0, "seconds to wait for the weights server before giving up", check=_between(0.1, 600)
    )


@dataclass(frozen=True)
class IndexSettings:
    extensions: list[str] = _opt(
        [
            *("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "hif", "avif", "jxl"),
            *("dng", "cr2", "cr3", "crw", "nef", "nrw", "arw", "srf", "sr2", "raf", "orf", "rw2", "rwl", "pef", "srw"),
            *("x3f", "3fr", "fff", "iiq", "erf", "kdc", "dcr", "mrw", "mos", "mef", "gpr"),
        ],
        "file extensions that are indexed (case-insensitive); camera RAW files (dng, cr2, nef, ...) are read by "
        "LibRaw, and a RAW with a JPEG or HEIF of the same name beside it is that photo's original, not indexed apart",
    )
    exclude: list[str] = _opt(
        [".*", "*.part", "*.crdownload", "*.tmp", "*~", "@eaDir", "#recycle"],
        "file and folder name patterns that are never indexed (fnmatch)",
    )
    follow_symlinks: bool = _opt(True, "descend into symlinked folders (loops are detected)")
    batch_size: int = _opt(32, "images per model call and per database transaction", check=_between(1, 4096))
    workers: int = _opt(0, "decode threads; 0: one per core", check=_between(0, 1024))
    prefetch: int = _opt(4, "batches decoded ahead of the model", check=_between(1, 64))
    jpeg_draft: bool = _opt(True, "decode large JPEGs at reduced scale (much faster, same embedding)")
    max_pixels: int = _opt(
        178_956_970, "images larger than this are skipped as decompression bombs", check=_at_least(1)
    )
    ray: str = _opt(
        "",
        "decode and embed on a Ray cluster: auto (the one `ray start` began here), HOST:PORT or ray://HOST:PORT; "
        "empty: off, Ray is not imported",
    )
    ray_cpus_per_actor: float = _opt(
        1.0,
        "CPUs each embedding actor reserves on a Ray cluster (one actor per GPU, else per this many CPUs)",
        check=lambda value: None if value > 0 else "be more than 0",
    )


@dataclass(frozen=True)
class SearchSettings:
    top_k: int = _opt(10, "results returned by default", check=_between(1, 10_000))
    index_type: str = _opt(
        "auto",
        "flat (exact), hnsw (approximate graph), ivf (approximate, 8-bit quantised: a quarter of the memory) "
        "or auto (flat, then hnsw from ann_threshold images, then ivf from ivf_threshold)",
        ("auto", "flat", "hnsw", "ivf"),
    )
    ann_threshold: int = _opt(100_000, "with index_type auto, use hnsw from this many images on", check=_at_least(1))
    ivf_threshold: int = _opt(1_000_000, "with index_type auto, use ivf from this many images on", check=_at_least(1))
    hnsw_m: int = _opt(32, "HNSW graph degree", check=_between(2, 256))
    hnsw_ef_construction: int = _opt(200, "HNSW build-time search depth", check=_between(1, 4096))
    hnsw_ef_search: int = _opt(
        256, "HNSW query-time search depth (higher: better recall, slower)", check=_between(1, 4096)
    )
    ivf_nprobe: int = _opt(64, "IVF lists searched per query (higher: better recall, slower)", check=_between(1, 65536))
    faiss_gpu: str = _opt("auto", "search on the GPU with faiss-gpu: auto, on or off", ("auto", "on", "off"))


@dataclass(frozen=True)
class TaggingSettings:
    templates: list[str] = _opt(
        [
            "a photo of a {}.",
            "a photo of the {}.",
            "a close-up photo of a {}.",
            "a bright photo of a {}.",
            "a dark photo of a {}.",
            "a cropped photo of the {}.",
            "a good photo of a {}.",
        ],
        "prompt templates a label is put into; their embeddings are averaged (prompt ensembling)",
        check=_templates,
    )
    vocabulary: str = _opt("", "labels for `imgsearch tag`: a file, one label per line; empty: the built-in vocabulary")
    top_k: int = _opt(5, "at most this many automatic tags per image", check=_between(1, 1000))
    min_probability: float = _opt(
        0.05,
        "an automatic tag needs at least this probability (a vocabulary line can set its own: `cat | 0.2`)",
        check=_fraction,
    )
    max_margin: float = _opt(
        2.5, "and a logit at most this far below the image's best label (2.5: at least 8% of the best's probability)"
    )
    auto: bool = _opt(False, "tag new and changed images as `index` and `watch` add them")


@dataclass(frozen=True)
class WatchSettings:
    settle_seconds: float = _opt(
        1.0,
        "quiet time before changed files are indexed (a copy still growing waits longer)",
        check=_between(0.05, 3600),
    )


@dataclass(frozen=True)
class GenerateSettings:
    generator: str = _opt("auto", "; ".join(f"{name}: {what}" for name, what in GENERATORS.items()), tuple(GENERATORS))
    vqgan_checkpoint: str = _opt(
        "vqgan_imagenet_f16_16384",
        "a taming-transformers VQGAN: a known name (fetched and cached on first use) or a local .ckpt file",
    )
    vqgan_config: str = _opt("", "the checkpoint's taming .yaml; empty: the .ckpt's name with .yaml")
    steps: int = _opt(0, "optimisation steps; 0: 300 on a GPU, 60 on a CPU", check=_between(0, 100_000))
    size: int = _opt(0, "image side in pixels; 0: 256 on a GPU, 128 on a CPU", check=_side)
    cutouts: int = _opt(0, "random crops CLIP judges each step; 0: 32 on a GPU, 8 on a CPU", check=_between(0, 1024))
    learning_rate: float = _opt(
        0.1, "Adam step size for the latent (VQGAN) or spectrum (Fourier)", check=_between(1e-6, 10)
    )
    output_dir: str = _opt("", "where generated PNGs are saved; empty: HOME/generated")
    add_to_index: bool = _opt(False, "index each generated image (marked generated; queries skip them by default)")
    match_margin: float = _opt(
        1.0,
        "no match when the query's logit on each top hit is more than this below a contrasting prompt's",
    )
    match_candidates: int = _opt(3, "top hits examined for the no-match decision", check=_between(1, 100))
    contrast_vocabulary: str = _opt("", "contrasting labels for the no-match decision; empty: tagging.vocabulary")


@dataclass(frozen=True)
class ServeSettings:
    host: str = _opt("127.0.0.1", "address `serve` listens on; anything but loopback also needs `serve --public`")
    port: int = _opt(8765, "TCP port of `serve` (0: any free port)", check=_port)
    allowed_hosts: list[str] = _opt(
        [], "Host names the server answers to besides localhost, 127.0.0.1 and [::1] (for `serve --public`)"
    )
    page_size: int = _opt(60, "results per page in the web UI and API", check=_at_least(1))
    thumbnail_size: int = _opt(
        320, "longest side of the cached thumbnails, in pixels (kept under HOME/thumbnails)", check=_at_least(16)
    )
    max_upload_mb: float = _opt(
        25.0, "largest image the API accepts for search by example or labelling", check=_at_least(0.001)
    )
    query_via_server: bool = _opt(True, "`imgsearch query` asks a running `serve` (warm model, no start-up cost)")


def is_postgres_url(value: str) -> bool:
    """postgresql://..., postgres://... or postgresql+driver://...: what store.url and `migrate --to` accept."""
    return value.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def _store_url(value: str) -> str | None:
    if not value or is_postgres_url(value):
        return None
    return "be empty (SQLite in the home folder) or a postgresql://user@host/database URL"


@dataclass(frozen=True)
class StoreSettings:
    url: str = _opt(
        "",
        "empty: SQLite in the home folder; postgresql://user[:password]@host[:port]/database: a shared PostgreSQL "
        "with pgvector (vectors searched there, no FAISS file; several machines may index into it)",
        check=_store_url,
    )
    ef_search: int = _opt(
        100,
        "PostgreSQL: HNSW candidates examined per query, 1 to 1000 (more: better recall, slower)",
        check=lambda v: None if 1 <= v <= 1000 else "be between 1 and 1000",
    )


SECTIONS: dict[str, type] = {
    "store": StoreSettings,
    "model": ModelSettings,
    "index": IndexSettings,
    "search": SearchSettings,
    "watch": WatchSettings,
    "tagging": TaggingSettings,
    "generate": GenerateSettings,
    "serve": ServeSettings,
}


@dataclass(frozen=True)
class Settings:
    """The effective settings, and where each value came from (`sources["model.name"]`)."""

    home: Path
    store: StoreSettings = field(default_factory=StoreSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    tagging: TaggingSettings = field(default_factory=TaggingSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def database_path(self) -> Path:
        return self.home / "imgsearch.db"

    @property
    def vector_index_path(self) -> Path:
        return self.home / "vectors.faiss"

    @property
    def generated_dir(self) -> Path:
        return Path(self.generate.output_dir).expanduser() if self.generate.output_dir else self.home / "generated"

    @property
    def thumbnail_dir(self) -> Path:
        return self.home / "thumbnails"

    @property
    def server_file(self) -> Path:
        """Where a running `serve` says how to reach it (for warm CLI queries)."""
        return self.home / "serve.json"

    @property
    def model_cache_dir(self) -> Path:
        return Path(self.model.cache_dir).expanduser() if self.model.cache_dir else self.home / "models"

    def items(self) -> Iterator[tuple[str, Any, str]]:
        """(key, value, source) for every setting, in declaration order."""
        for section in SECTIONS:
            for f in dataclasses.fields(SECTIONS[section]):
                key = f"{section}.{f.name}"
                yield key, getattr(getattr(self, section), f.name), self.sources.get(key, "default")


def registry() -> dict[str, dataclasses.Field[Any]]:
    """Every declared setting by dotted key."""
    return {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def default_home() -> Path:
    env = os.environ.get(ENV_PREFIX + "HOME")
    if env:
        return _expand(env, "IMGSEARCH_HOME")
    import platformdirs

    return Path(platformdirs.user_data_dir("imgsearch", appauthor=False))


def load_settings(
    home: Path | str | None = None,
    config_path: Path | str | None = None,
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from all layers. Raises ConfigError on any bad key or value."""
    environ = os.environ if environ is None else environ
    home_path = _expand(home, "home") if home else default_home()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    file = _expand(config_path, "--config") if config_path else home_path / "config.yaml"
    if config_path and not file.is_file():
        raise ConfigError(f"--config: no such file: {file}")
    if file.is_file():
        for key, (value, line) in _read_yaml(file).items():
            values[key] = _coerce(key, value, f"{file}:{line}")
            sources[key] = f"{file}:{line}"
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            key = name[len(ENV_PREFIX) :].lower().replace("__", ".", 1)
            where = f"environment {name if name.isprintable() else _show(name)}"
            values[key] = _coerce(key, _parse_text(key, raw, where), where)
            sources[key] = f"env {name}"
    for key, raw in (overrides or {}).items():
        values[key] = _coerce(key, _parse_text(key, raw, "--set"), "--set")
        sources[key] = "--set"
    return _build(home_path, values, sources)


def _expand(path: Path | str, what: str) -> Path:
    try:
        return Path(path).expanduser()
    except (RuntimeError, ValueError):  # "~someone" with no such user (or a NUL in the name)
        raise ConfigError(f"{what}: cannot expand {_show(str(path))}: no such user") from None


def _show(value: Any) -> str:
    """A value as a message shows it: its repr, cut short."""
    return _clip(repr(value), 80)


def _clip(text: str, limit: int = 120) -> str:
    """Text for a one-line message: whitespace runs (newlines too) become one space; long text is cut."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _build(home: Path, values: dict[str, Any], sources: dict[str, str]) -> Settings:
    sections = {}
    for section, cls in SECTIONS.items():
        own = {k.split(".", 1)[1]: v for k, v in values.items() if k.split(".", 1)[0] == section}
        sections[section] = cls(**own)
    return Settings(home=home, sources=sources, **sections)


def _field(key: str, where: str) -> dataclasses.Field[Any]:
    f = registry().get(key)
    if f is None:
        known = ", ".join(sorted({k.split(".")[0] for k in registry()}))
        raise ConfigError(f"{where}: unknown setting {_show(key)} (sections: {known}; `imgsearch config` lists all)")
    return f


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]


def _type_name(default: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list of strings"}[
        type(default)
    ]


def _coerce(key: str, value: Any, where: str) -> Any:
    f = _field(key, where)
    default = _default_of(f)
    expected = type(default)
    ok = (
        (expected is bool and isinstance(value, bool))
        or (expected is int and isinstance(value, int) and not isinstance(value, bool))
        or (expected is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (expected is str and isinstance(value, str))
        or (expected is list and isinstance(value, list) and all(isinstance(v, str) for v in value))
    )
    if not ok:
        raise ConfigError(f"{where}: {key} must be {_type_name(default)}, got {_show(value)}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(choices)}, got {_show(value)}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {_show(value)}")
    if expected in (int, float) and value < 0:
        raise ConfigError(f"{where}: {key} must not be negative, got {_show(value)}")
    value = float(value) if expected is float else value
    problem = f.metadata["check"] and f.metadata["check"](value)
    if problem:
        raise ConfigError(f"{where}: {key} must {problem}, got {_show(value)}")
    return value


def _parse_text(key: str, raw: str, where: str) -> Any:
    """Read an environment or flag string as the setting's type."""
    default = _default_of(_field(key, where))
    text = raw.strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    if isinstance(default, int | float):
        try:
            return type(default)(text)
        except ValueError:
            return text
    if isinstance(default, list):
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def _read_yaml(path: Path) -> dict[str, tuple[Any, int]]:
    """Flatten a two-level YAML mapping to {"section.key": (value, line)}."""
    import yaml

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid YAML (not UTF-8 text: byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}{_yaml_line(exc)}: not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of sections")
    out: dict[str, tuple[Any, int]] = {}
    for section_node, body in root.value:
        section = _name(section_node, f"{path}:{section_node.start_mark.line + 1}", "section")
        if section not in SECTIONS:
            _field(f"{section}.?", f"{path}:{section_node.start_mark.line + 1}")
        if not isinstance(body, yaml.MappingNode):
            if isinstance(body, yaml.ScalarNode) and body.value in ("", "~", "null"):
                continue
            raise ConfigError(f"{path}:{body.start_mark.line + 1}: section '{section}' must be a mapping")
        for key_node, value_node in body.value:
            line = key_node.start_mark.line + 1
            key = f"{section}.{_name(key_node, f'{path}:{line}', 'setting')}"
            if key in out:
                raise ConfigError(f"{path}:{line}: {_show(key)} is set twice (first on line {out[key][1]})")
            out[key] = (_yaml_value(value_node, key, f"{path}:{line}"), line)
    return out


def _name(node: Any, where: str, what: str) -> str:
    """A section or setting name: a plain YAML scalar, not a list or mapping used as a key."""
    import yaml

    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{where}: expected a {what} name, got a YAML {node.id}")
    return str(node.value)


def _yaml_value(node: Any, key: str, where: str) -> Any:
    """A setting's value as safe_load reads it; tags it cannot build (!!python/..., a bad !!int) are errors."""
    import yaml

    try:
        return yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {key}: cannot read the value ({_yaml_problem(exc)})") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{where}: {key}: cannot read the value ({_clip(str(exc))})") from None
    except RecursionError:
        raise ConfigError(f"{where}: {key}: cannot read the value (nested too deeply)") from None


def _yaml_line(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f":{mark.line + 1}" if mark is not None else ""


def _yaml_problem(exc: Exception) -> str:
    return _clip(str(getattr(exc, "problem", None) or getattr(exc, "context", None) or exc or type(exc).__name__))


def defaults_yaml() -> str:
    """The documented default config file, generated from the registry (the packaged config.yaml)."""
    import yaml

    lines = [
        "# imgsearch settings. Copy to $IMGSEARCH_HOME/config.yaml (or pass --config) and edit.",
        "# Any key can also be set as an environment variable: model.pretrained -> IMGSEARCH_MODEL__PRETRAINED.",
    ]
    for section, cls in SECTIONS.items():
        lines.append("")
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            lines.append(f"  # {f.metadata['help']}")
            rendered = yaml.safe_dump({f.name: _default_of(f)}, default_flow_style=True, width=1000).strip()
            lines.append("  " + rendered[1:-1])
    return "\n".join(lines) + "\n"

"""Property-based tests (hypothesis) of the two parsers that take text from people: config and queries.

The config loader turns any file, environment variable or --set value into Settings or a one-line
ConfigError (never another exception); every valid value comes back as written, from a file, the
environment or a flag; every value of the wrong type is refused naming the key, the type and the
line. The query parser turns any text into terms or a one-line UsageError; written terms parse
back to themselves; "t-shirt" stays one term; weights are read exactly and are always finite.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsearch.config import SECTIONS, Settings, load_settings, registry
from imgsearch.errors import ConfigError, UsageError
from imgsearch.search.query import parse
from imgsearch.types import QueryTerm

few = settings(max_examples=60, deadline=None, database=None)
some = settings(max_examples=150, deadline=None, database=None)

KEYS = sorted(registry())
NAMES = sorted({key.split(".", 1)[1] for key in KEYS})
TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list of strings"}


def default(key: str) -> Any:
    f = registry()[key]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def value_of(s: Settings, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(s, section), name)


def load_text(text: str | bytes, **kw: Any) -> Settings:
    """load_settings with `text` as the home folder's config.yaml."""
    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "config.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return load_settings(home, environ=kw.pop("environ", {}), **kw)


def loads_or_refuses(load: Callable[[], Settings]) -> Settings | ConfigError:
    """Settings, or the ConfigError, which must be one line. Any other exception fails the test."""
    try:
        return load()
    except ConfigError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)
        assert len(str(exc)) < 400, str(exc)
        return exc


# Config: anything at all


YAML_BITS = [
    "model:",
    "index:",
    "search:",
    "watch:",
    "tagging:",
    "\n",
    "\n  ",
    "  ",
    " ",
    "name:",
    "batch_size:",
    "extensions:",
    "templates:",
    "top_k:",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "? ",
    ": ",
    "&a ",
    "*a",
    "<<: ",
    "!!python/object:os.system ",
    "!!binary ",
    "!!int ",
    "!!float ",
    "!!timestamp ",
    "!!set ",
    "---\n",
    "...",
    "'",
    '"',
    "#",
    "\t",
    "~",
    "null",
    "yes",
    "no",
    ".nan",
    ".inf",
    "-.inf",
    "1e999",
    "0x1F",
    "1_000",
    "2024-13-45",
    "9" * 30,
    "\\u0000",
    "%YAML 1.1\n",
]


@some
@given(st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=4), max_size=40).map("".join))
def test_config_text_loads_or_is_refused_in_one_line(text: str) -> None:
    loads_or_refuses(lambda: load_text(text))


@few
@given(st.binary(max_size=200))
def test_config_bytes_load_or_are_refused_in_one_line(data: bytes) -> None:
    loads_or_refuses(lambda: load_text(data))


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.dates(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
documents = st.dictionaries(
    st.sampled_from(list(SECTIONS)) | st.text(max_size=8),
    st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), yaml_values, max_size=4) | yaml_values,
    max_size=4,
)


@some
@given(documents)
def test_any_yaml_document_loads_or_is_refused_in_one_line(doc: dict[str, Any]) -> None:
    loads_or_refuses(lambda: load_text(yaml.safe_dump(doc, allow_unicode=True)))


@some
@given(st.sampled_from(KEYS) | st.text(max_size=12), st.text(max_size=40))
def test_any_environment_or_flag_value_loads_or_is_refused_in_one_line(key: str, raw: str) -> None:
    variable = "IMGSEARCH_" + key.upper().replace(".", "__")
    loads_or_refuses(lambda: load_settings(tempfile.gettempdir(), environ={variable: raw.replace("\0", "")}))
    loads_or_refuses(lambda: load_settings(tempfile.gettempdir(), overrides={key: raw}, environ={}))


# Config: valid values come back as written


words = st.text(st.characters(categories=("L", "N"), include_characters="_-."), min_size=1, max_size=8)


BOUNDED = {
    "serve.port": (0, 65535),
    "serve.page_size": (1, 2**62),
    "serve.thumbnail_size": (16, 2**62),
    "serve.max_upload_mb": (0.001, 1e300),
    "index.ray_cpus_per_actor": (0.001, 1e300),
    "store.ef_search": (1, 1000),
    "model.download_timeout": (0.1, 600),
    "index.batch_size": (1, 4096),
    "index.workers": (0, 1024),
    "index.prefetch": (1, 64),
    "index.max_pixels": (1, 2**62),
    "search.top_k": (1, 10_000),
    "search.ann_threshold": (1, 2**62),
    "search.ivf_threshold": (1, 2**62),
    "search.hnsw_m": (2, 256),
    "search.hnsw_ef_construction": (1, 4096),
    "search.hnsw_ef_search": (1, 4096),
    "search.ivf_nprobe": (1, 65536),
    "tagging.top_k": (1, 1000),
    "watch.settle_seconds": (0.05, 3600),
    "generate.steps": (0, 100_000),
    "generate.cutouts": (0, 1024),
    "generate.learning_rate": (1e-6, 10),
    "generate.match_candidates": (1, 100),
}


def valid_values(key: str) -> st.SearchStrategy[Any]:
    """Values this setting accepts, including the awkward ones (unicode, huge numbers, zero)."""
    f = registry()[key]
    kind = type(default(key))
    if f.metadata.get("choices"):
        return st.sampled_from(f.metadata["choices"])
    if key == "tagging.templates":
        return st.lists(st.tuples(words, words).map(lambda p: f"{p[0]} {{}} {p[1]}"), min_size=1, max_size=3)
    if key == "tagging.min_probability":
        return st.floats(0, 1)
    if key == "store.url":
        return st.just("") | words.map(lambda name: f"postgresql://{name}@localhost/{name}")
    if key == "generate.size":  # 0: the device's default
        return st.just(0) | st.integers(8, 4096)
    if key in BOUNDED:
        low, high = BOUNDED[key]
        return st.integers(low, high) if kind is int else st.floats(low, high)
    return {
        bool: st.booleans(),
        int: st.integers(0, 2**62),
        float: st.floats(0, 1e300),
        str: st.text(st.characters(codec="utf-8", exclude_categories=("Cc",)), max_size=20),
        list: st.lists(words, max_size=4),
    }[kind]


def valid_settings() -> st.SearchStrategy[dict[str, Any]]:
    return st.lists(st.sampled_from(KEYS), unique=True, max_size=8).flatmap(
        lambda keys: st.fixed_dictionaries({k: valid_values(k) for k in keys})
    )


def nested(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    doc: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, name = key.split(".")
        doc.setdefault(section, {})[name] = value
    return doc


@some
@given(valid_settings())
def test_valid_values_round_trip_through_a_config_file(values: dict[str, Any]) -> None:
    text = yaml.safe_dump(nested(values), allow_unicode=True, sort_keys=False)
    loaded = load_text(text)
    lines = text.splitlines()
    for key, value in values.items():
        assert value_of(loaded, key) == value, key
        line = int(loaded.sources[key].rsplit(":", 1)[1])
        assert lines[line - 1].strip().startswith(key.split(".")[1] + ":"), (key, line, text)


def as_text(value: Any) -> str:
    """How a person writes the value in an environment variable or --set."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(value)
    return repr(value) if isinstance(value, float) else str(value)


@some
@given(valid_settings())
def test_valid_values_round_trip_through_environment_and_flags(values: dict[str, Any]) -> None:
    values = {k: v for k, v in values.items() if not (isinstance(v, str) and "\0" in v)}
    texts = {key: as_text(value) for key, value in values.items()}
    environ = {"IMGSEARCH_" + key.upper().replace(".", "__"): text for key, text in texts.items()}
    home = tempfile.gettempdir() + "/imgsearch-no-such-home"
    from_env = load_settings(home, environ=environ)
    from_flags = load_settings(home, overrides=texts, environ={})
    for key, value in values.items():
        assert value_of(from_env, key) == value, key
        assert value_of(from_flags, key) == value, key


# Config: the wrong type is refused with the key, the expected type and the line


def wrong_values(key: str) -> st.SearchStrategy[Any]:
    kind = type(default(key))
    text = st.text(max_size=10)
    if kind is bool:
        return st.none() | st.integers() | st.floats(allow_nan=False) | text | st.lists(text, max_size=2)
    if kind is int:
        return st.none() | st.booleans() | st.floats(allow_nan=False) | text | st.lists(st.integers(), max_size=2)
    if kind is float:
        return st.none() | st.booleans() | text | st.lists(st.floats(allow_nan=False), max_size=2)
    if kind is str:
        return st.none() | st.booleans() | st.integers() | st.lists(text, max_size=2) | st.dates()
    return st.none() | st.booleans() | st.integers() | text | st.lists(st.integers(), min_size=1, max_size=3)


@some
@given(st.sampled_from(KEYS).flatmap(lambda k: st.tuples(st.just(k), wrong_values(k))), st.integers(0, 3))
def test_a_value_of_the_wrong_type_names_key_type_and_line(case: tuple[str, Any], blank_lines: int) -> None:
    key, value = case
    section, name = key.split(".")
    text = "\n" * blank_lines + yaml.safe_dump({section: {name: value}}, allow_unicode=True)
    with pytest.raises(ConfigError) as err:
        load_text(text)
    message = str(err.value)
    assert f"config.yaml:{blank_lines + 2}: {key} must be {TYPE_NAMES[type(default(key))]}, got " in message
    assert "\n" not in message


@few
@given(st.sampled_from(list(SECTIONS)), words.filter(lambda w: w not in NAMES), st.integers(0, 3))
def test_an_unknown_key_is_refused_with_its_line(section: str, name: str, blank_lines: int) -> None:
    text = "\n" * blank_lines + yaml.safe_dump({section: {name: 1}}, allow_unicode=True)
    with pytest.raises(ConfigError, match=f"config.yaml:{blank_lines + 2}: unknown setting '{section}.") as err:
        load_text(text)
    assert name in str(err.value)


# Queries


QUERY_BITS = [
    " + ",
    " - ",
    "+ ",
    "- ",
    "+",
    "-",
    ":",
    "2:",
    "0.5:",
    ".5:",
    "10:00",
    "'",
    '"',
    "~",
    "~root",
    "~nobody-x/",
    "/",
    "./",
    "../",
    ".jpg",
    ".PNG",
    "t-shirt",
    " ",
    "\n",
    "\t",
    "\u2028",
    "\0",
    "9" * 400 + ":",
    "x" * 300,
    "samples/cat-chelsea.jpg",
    "samples",
    "/etc/passwd",
]


def parses_or_refuses(text: str) -> list[QueryTerm] | UsageError:
    try:
        terms = parse(text)
    except UsageError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400, str(exc)
        return exc
    for term in terms:
        assert term.kind in ("text", "image") and term.value and term.value == term.value.strip()
        assert abs(term.weight) < float("inf")
    return terms


@some
@given(st.lists(st.sampled_from(QUERY_BITS) | st.text(max_size=6), max_size=12).map("".join))
def test_any_query_parses_or_is_refused_in_one_line(text: str) -> None:
    parses_or_refuses(text)


@some
@given(st.text())
def test_any_text_parses_or_is_refused_in_one_line(text: str) -> None:
    parses_or_refuses(text)


# A word of a query: a letter, then letters, digits, inner hyphens or apostrophes. Never a lone sign; never a
# digit first, since "2:0" reads as text like "10:00 meeting", not as weight 2 on "0".
word = st.from_regex(r"[^\W\d_](?:[\w'-]*[^\W_])?", fullmatch=True).filter(lambda w: len(w) <= 12)
phrase = st.lists(word, min_size=1, max_size=4).map(" ".join)
weight = st.sampled_from([1.0, 2.0, 0.5, 0.25, 3.0, 10.0, 0.0, 1.5])


def written(terms: list[tuple[float, float, str]]) -> str:
    """A query as a person writes it: `2:golden retriever - 0.5:fruit + hat`."""
    out = []
    for i, (sign, w, text) in enumerate(terms):
        body = text if w == 1.0 else f"{w:g}:{text}"
        if i == 0:
            out.append(("- " if sign < 0 else "") + body)
        else:
            out.append((" - " if sign < 0 else " + ") + body)
    return "".join(out)


@some
@given(st.lists(st.tuples(st.sampled_from([1.0, -1.0]), weight, phrase), min_size=1, max_size=5))
def test_written_terms_parse_back_to_themselves(terms: list[tuple[float, float, str]]) -> None:
    assert parse(written(terms)) == [QueryTerm("text", text, sign * w) for sign, w, text in terms]


@some
@given(st.lists(word, min_size=2, max_size=4))
def test_hyphenated_words_stay_one_term(parts: list[str]) -> None:
    text = "-".join(parts)
    assert parse(text) == [QueryTerm("text", text, 1.0)]
    assert parse(f"- {text} + hat") == [QueryTerm("text", text, -1.0), QueryTerm("text", "hat", 1.0)]


@some
@given(st.integers(0, 10**6), st.integers(0, 999), phrase)
def test_weights_are_read_exactly(whole: int, fraction: int, text: str) -> None:
    written_weight = f"{whole}.{fraction:03d}"
    assert parse(f"{written_weight}:{text}") == [QueryTerm("text", text, float(written_weight))]
    assert parse(f"cat - {whole}:{text}")[1] == QueryTerm("text", text, -float(whole))


def test_a_weight_too_large_for_a_float_is_refused() -> None:
    with pytest.raises(UsageError, match="is too large"):
        parse("9" * 400 + ":cat")

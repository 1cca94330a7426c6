"""The command line: parse, call one Library method, render. No logic.

Exit codes: 0 success; 1 error; 2 bad invocation or configuration; 3 finished, but some files
could not be indexed (`imgsearch status --errors` lists them); 130 interrupted.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from imgsearch import render
from imgsearch.errors import ImgSearchError
from imgsearch.types import GENERATORS

if TYPE_CHECKING:
    from imgsearch.app import Library
    from imgsearch.types import Hit, IndexReport, Progress

EXIT_SKIPPED = 3


class _Group(click.Group):
    """Turns ImgSearchError into one line on stderr and its exit code (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ImgSearchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"imgsearch: {render.shown(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("imgsearch: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home", envvar="IMGSEARCH_HOME", type=click.Path(file_okay=False), help="State folder (IMGSEARCH_HOME)."
)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Config file (default: HOME/config.yaml)."
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a setting, e.g. --set model.device=cpu."
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="imgsearch")
@click.pass_context
def cli(ctx: click.Context, home: str | None, config_path: str | None, overrides: tuple[str, ...], debug: bool) -> None:
    """Search your photos by what is in them."""
    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        pairs[key.strip()] = value
    ctx.obj = {"home": home, "config": config_path, "overrides": pairs, "debug": debug}


@contextmanager
def _library(ctx: click.Context) -> Iterator[Library]:
    from imgsearch.app import Library

    with Library.open(ctx.obj["home"], ctx.obj["config"], ctx.obj["overrides"]) as lib:
        yield lib


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--rebuild", is_flag=True, help="Forget all vectors and embed everything again (after a model change).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--ray",
    metavar="ADDRESS",
    help="Decode and embed on a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (index.ray).",
)
@click.pass_context
def index(
    ctx: click.Context, paths: tuple[str, ...], rebuild: bool, quiet: bool, as_json: bool, ray: str | None
) -> None:
    """Index the images under PATHS (default: the folders indexed before)."""
    if ray is not None:
        ctx.obj["overrides"]["index.ray"] = ray
    with _stop_on_signals() as stop, _library(ctx) as lib, _progress(quiet or as_json) as on_progress:
        report = lib.index(paths, rebuild=rebuild, on_progress=on_progress, stop=stop)
    click.echo(render.to_json(report) if as_json else render.report(report))
    if report.skipped or report.known_bad:
        ctx.exit(EXIT_SKIPPED)


@cli.command()
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL|sqlite",
    help="postgresql://user@host/database, or sqlite (the home's own file) to come back from PostgreSQL.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def migrate(ctx: click.Context, target: str, quiet: bool, as_json: bool) -> None:
    """Copy the index (images, vectors, tags, settings of the index) into another database.

    The database in use is left as it was; the target must hold no images. Set store.url as printed to use it.
    """
    with _library(ctx) as lib, _progress(quiet or as_json) as on_progress:
        report = lib.migrate(target, on_progress=on_progress)
    click.echo(render.to_json(report) if as_json else render.migrated(report))


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Append what each pass did to this file.")
@click.pass_context
def watch(ctx: click.Context, paths: tuple[str, ...], quiet: bool, log_file: str | None) -> None:
    """Keep the index in step with PATHS (default: the folders indexed before) until Ctrl-C or SIGTERM."""
    import time

    log = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115 (open for the whole run)

    def say(text: str, err: bool = False) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {render.shown(text)}"
        if log:
            log.write(line + "\n")
            log.flush()
        if not quiet or err:
            click.echo(line, err=err)

    def on_pass(report: IndexReport) -> None:
        say(render.report(report))

    try:
        with _stop_on_signals() as stop, _library(ctx) as lib:
            if not quiet:
                folders = ", ".join(render.shown(p) for p in paths) or "the indexed folders"
                click.echo(f"watching {folders} (Ctrl-C to stop)", err=True)
            lib.watch(paths, on_pass=on_pass, stop=stop, on_notice=lambda text: say(text, err=True))
    finally:
        if log:
            log.close()
    if not quiet:
        click.echo("stopped", err=True)


@cli.command()
@click.argument("terms", nargs=-1)
@click.option("-k", "--top", type=click.IntRange(min=1), default=None, help="Number of results (search.top_k).")
@click.option("-i", "--image", "images", multiple=True, type=click.Path(), help="Find images similar to this one.")
@click.option("--path-prefix", type=click.Path(resolve_path=True), help="Only results under this folder.")
@click.option("-t", "--tag", "tags", multiple=True, help="Only images with this tag (repeat: all of them).")
@click.option("--after", metavar="DATE", help="Taken in or after DATE: 2023, 2023-06 or 2023-06-14.")
@click.option("--before", metavar="DATE", help="Taken in or before DATE (both bounds include the period they name).")
@click.option("--camera", help="Camera make or model contains this (case-insensitive).")
@click.option("--place", help="Place name (city, region, country) contains this (case-insensitive).")
@click.option(
    "--sort",
    metavar="relevance|date|-date",
    help="relevance (default), date (oldest taken first) or -date (newest first; write --sort=-date).",
)
@click.option("--include-generated", is_flag=True, help="Also return images made by `imgsearch generate`.")
@click.option("--all-copies", is_flag=True, help="Every file, not one per picture (see `imgsearch dupes`).")
@click.option(
    "--generate-if-missing", is_flag=True, help="When nothing matches the text, generate an image (VQGAN+CLIP)."
)
@click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
@click.option(
    "--html", "html_file", type=click.Path(dir_okay=False), help="Also write the results as a self-contained page."
)
@click.pass_context
def query(
    ctx: click.Context,
    terms: tuple[str, ...],
    top: int | None,
    images: tuple[str, ...],
    path_prefix: str | None,
    tags: tuple[str, ...],
    after: str | None,
    before: str | None,
    camera: str | None,
    place: str | None,
    sort: str | None,
    include_generated: bool,
    all_copies: bool,
    generate_if_missing: bool,
    as_json: bool,
    html_file: str | None,
) -> None:
    """Find images matching TERMS: text, image paths, or weighted sums.

    \b
    imgsearch query "old teacher at blackboard"
    imgsearch query --image holiday.jpg
    imgsearch query "2:golden retriever" + ./pool.jpg - fruit
    imgsearch query --tag cat "on a sofa"
    imgsearch query --tag cat            (images tagged cat, by probability)
    imgsearch query beach --after 2019-06 --before 2019-08 --camera canon
    imgsearch query --place Lisbon --sort date   (photos taken in Lisbon, oldest first)
    imgsearch query "red car" --html results.html
    """
    from imgsearch.errors import IndexEmptyError

    text = " ".join(terms)
    with _library(ctx) as lib:
        try:
            hits = lib.query(
                text,
                images=images,
                k=top,
                path_prefix=path_prefix,
                tags=tags,
                include_generated=include_generated,
                ask_server=True,
                after=after,
                before=before,
                camera=camera,
                place=place,
                sort=sort,
                all_copies=all_copies,
            )
        except IndexEmptyError:
            if not generate_if_missing:
                raise
            hits = []
        if generate_if_missing and (images or tags or path_prefix or after or before or camera or place):
            raise click.UsageError("--generate-if-missing works with a text query alone")
        if html_file:
            _write_html(lib, html_file, text, images, tags, hits)
        if generate_if_missing:
            _query_or_generate(ctx, lib, text, hits, as_json)
            return
    if as_json:
        click.echo(render.to_json(hits))
    elif hits:
        click.echo(render.hits(hits, dated=sort in ("date", "-date")))
    else:
        click.echo("no matches", err=True)


def _write_html(
    lib: Library, target: str, text: str, images: tuple[str, ...], tags: tuple[str, ...], hits: list[Hit]
) -> None:
    from imgsearch.web import report

    count = report.write(target, report.query_title(text, images, tags), hits, lib.thumbnail)
    click.echo(f"wrote {count} result{'' if count == 1 else 's'} to {render.shown(str(target))}", err=True)


def _query_or_generate(ctx: click.Context, lib: Library, text: str, hits: list[Any], as_json: bool) -> None:
    verdict = lib.match(text, hits)
    result = None
    if not verdict.matched:
        if not as_json:
            click.echo(render.hits(hits), nl=bool(hits))
            click.echo(render.verdict(verdict), err=True)
        with _stop_on_signals() as stop, _progress(as_json) as on_progress:
            result = lib.generate(text, on_progress=on_progress, on_notice=_notice, stop=stop)
    if as_json:
        click.echo(render.to_json({"hits": hits, "match": verdict, "generated": result}))
    elif result is None:
        click.echo(render.hits(hits))
    else:
        click.echo(render.generation(result))


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, resolve_path=True))
@click.option("--similar", is_flag=True, help="Also near-identical shots (bursts) by CLIP distance: a looser level.")
@click.option("--tag", metavar="NAME", help="Tag every copy but the best of each group NAME (by hand).")
@click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Also write the groups as a page.")
@click.pass_context
def dupes(
    ctx: click.Context, paths: tuple[str, ...], similar: bool, tag: str | None, as_json: bool, html_file: str | None
) -> None:
    """Groups of duplicates with a file under PATHS (default: the whole index), the best copy first.

    \b
    exact: the same bytes at different paths
    copy: the same picture resized, re-encoded, converted, turned or slightly cropped (a hash of its pixels)
    similar: near-identical shots, with --similar (CLIP's distance, in the model's own scale)
    The best copy has the most pixels, then is the most original file (RAW, then a camera's JPEG or HEIC), then
    the oldest. imgsearch never deletes or moves a file: --tag marks the others for your own tools
    (`imgsearch tag export --xmp` writes the tag to their sidecars).
    """
    with _library(ctx) as lib:
        groups = lib.dupes(paths, similar=similar)
        tagged = lib.tag_duplicates(groups, tag) if tag else None
        if html_file:
            from imgsearch.web import report

            count = report.write_groups(html_file, groups, lib.thumbnail)
            click.echo(f"wrote {count} group{'' if count == 1 else 's'} to {render.shown(html_file)}", err=True)
    if as_json:
        click.echo(render.to_json({"groups": groups, "tagged": tagged}))
        return
    click.echo(render.copy_groups(groups) if groups else "no duplicates", err=not groups)
    if tag:
        click.echo(f"tagged {tagged} copies {render.shown(tag)}", err=True)


@cli.command()
@click.argument("prompt", nargs=-1, required=True)
@click.option("--steps", type=click.IntRange(min=1), help="Optimisation steps (generate.steps).")
@click.option("--size", help="Side, or WIDTHxHEIGHT, in pixels (generate.size).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Same seed, same device: the same image.")
@click.option("--init-image", type=click.Path(dir_okay=False), help="Start from this picture instead of noise.")
@click.option("--generator", type=click.Choice(list(GENERATORS)), help="generate.generator")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def generate(
    ctx: click.Context,
    prompt: tuple[str, ...],
    steps: int | None,
    size: str | None,
    seed: int | None,
    init_image: str | None,
    generator: str | None,
    as_json: bool,
) -> None:
    """Synthesise an image for PROMPT: VQGAN+CLIP (or the weight-free fallback), saved as PNG with provenance."""
    with _stop_on_signals() as stop, _library(ctx) as lib, _progress(as_json) as on_progress:
        result = lib.generate(
            " ".join(prompt),
            steps=steps or 0,
            size=_size(size),
            seed=seed,
            init_image=init_image,
            generator=generator,
            on_progress=on_progress,
            on_notice=_notice,
            stop=stop,
        )
    click.echo(render.to_json(result) if as_json else render.generation(result))


def _size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"expected SIDE or WIDTHxHEIGHT, got {text!r}", param_hint="--size") from None
    if len(numbers) not in (1, 2) or min(numbers) < 8 or max(numbers) > 4096:
        raise click.BadParameter(f"expected 8..4096 pixels, got {text!r}", param_hint="--size")
    return (numbers[0], numbers[-1])


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-l", "--labels", help="Comma-separated labels, e.g. 'cat,dog,person' (default: the vocabulary).")
@click.option("--vocabulary", type=click.Path(dir_okay=False), help="A vocabulary file (default: tagging.vocabulary).")
@click.option("-k", "--top", type=click.IntRange(min=1), default=None, help="Labels shown per image.")
@click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
@click.pass_context
def label(
    ctx: click.Context,
    paths: tuple[str, ...],
    labels: str | None,
    vocabulary: str | None,
    top: int | None,
    as_json: bool,
) -> None:
    """Zero-shot labels of image files: each label's probability, best first.

    \b
    imgsearch label photo.jpg --labels "cat,dog,person"
    imgsearch label *.jpg -k 5          (against the tagging vocabulary)
    """
    with _library(ctx) as lib, _progress(as_json) as on_progress:
        results = lib.label(paths, labels, vocabulary=vocabulary, on_progress=on_progress)
    if top is None and not labels:
        top = 10
    results = [type(r)(r.path, r.labels[:top]) for r in results] if top else results
    click.echo(render.to_json(results) if as_json else render.labels(results))


@cli.group(invoke_without_command=True)
@click.option("--path-prefix", type=click.Path(resolve_path=True), help="Only images under this folder.")
@click.option("--vocabulary", type=click.Path(dir_okay=False), help="A vocabulary file (default: tagging.vocabulary).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def tag(ctx: click.Context, path_prefix: str | None, vocabulary: str | None, quiet: bool, as_json: bool) -> None:
    """Auto-tag the indexed images against a vocabulary (only what changed since the last run).

    \b
    imgsearch tag                       (the built-in vocabulary, or tagging.vocabulary)
    imgsearch tag --vocabulary my-labels.txt --path-prefix ~/Pictures/2024
    imgsearch tag add holiday ~/Pictures/Crete
    imgsearch tag export --xmp
    """
    if ctx.invoked_subcommand is not None:
        return
    with _stop_on_signals() as stop, _library(ctx) as lib, _progress(quiet or as_json) as on_progress:
        report = lib.tag(
            path_prefix=path_prefix,
            vocabulary=vocabulary,
            on_progress=on_progress,
            stop=stop,
            on_notice=_notice,
        )
    click.echo(render.to_json(report) if as_json else render.tag_report(report))


def _by_hand(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """`tag add` / `tag remove`: a LABEL and the PATHS it goes on (files, or folders of indexed images)."""

    def command(f: Callable[..., None]) -> click.Command:
        paths = click.argument("paths", nargs=-1, required=True, type=click.Path())
        return tag.command(name)(click.argument("label")(paths(click.pass_context(f))))

    return command


@_by_hand("add")
def tag_add(ctx: click.Context, label: str, paths: tuple[str, ...]) -> None:
    """Tag images by hand: files, or every indexed image under a folder. The auto-tagger keeps it."""
    with _library(ctx) as lib:
        changed = lib.set_tag(label, paths, present=True)
    click.echo(f"tagged {changed} images '{render.shown(label)}'")


@_by_hand("remove")
def tag_remove(ctx: click.Context, label: str, paths: tuple[str, ...]) -> None:
    """Remove a tag by hand; the auto-tagger will not add it back to these images."""
    with _library(ctx) as lib:
        changed = lib.set_tag(label, paths, present=False)
    click.echo(f"removed '{render.shown(label)}' from {changed} images")


@tag.command("export")
@click.option("--xmp", "fmt", flag_value="xmp", help="Write XMP sidecars (dc:subject) next to the images.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV rows: path, label, source, score, probability.")
@click.option("--json", "fmt", flag_value="json", help="JSON: each image with its tags.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-", help="CSV/JSON file.")
@click.option("--path-prefix", type=click.Path(resolve_path=True), help="Only images under this folder.")
@click.option(
    "--sidecar-name",
    type=click.Choice(["full", "stem"]),
    default="full",
    help="full: photo.jpg.xmp (darktable, digiKam); stem: photo.xmp (Lightroom).",
)
@click.pass_context
def tag_export(ctx: click.Context, fmt: str | None, output: str, path_prefix: str | None, sidecar_name: str) -> None:
    """Take the tags to other photo tools: XMP sidecars, CSV or JSON. Image files are never modified."""
    if fmt is None:
        raise click.UsageError("choose a format: --xmp, --csv or --json")
    with _library(ctx) as lib:
        if fmt == "xmp":
            report = lib.export_xmp(path_prefix=path_prefix, naming=sidecar_name)
            click.echo(render.export_report(report))
            if report.failed:
                ctx.exit(EXIT_SKIPPED)
            return
        records = lib.tag_records(path_prefix)
    text = render.tags_csv(records) if fmt == "csv" else render.to_json(render.tags_by_path(records))
    with click.open_file(output, "w", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") or not text else text + "\n")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tags(ctx: click.Context, as_json: bool) -> None:
    """List the tags in use, with how many images carry each (automatically / by hand)."""
    with _library(ctx) as lib:
        counts = lib.tags()
    if as_json:
        click.echo(render.to_json(counts))
    else:
        click.echo(render.tag_counts(counts) if counts else "no tags yet (imgsearch tag)")


@cli.command("export")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["clip-retrieval"]),
    default="clip-retrieval",
    show_default=True,
    help="img_emb/img_emb_N.npy + metadata/metadata_N.parquet, as clip-retrieval writes them.",
)
@click.option("--path-prefix", type=click.Path(resolve_path=True), help="Only images under this folder.")
@click.option("--shard-size", type=click.IntRange(min=1), help="Vectors per file (default 1,000,000).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def export_cmd(
    ctx: click.Context, out: str, fmt: str, path_prefix: str | None, shard_size: int | None, quiet: bool, as_json: bool
) -> None:
    """Write the vectors to OUT as clip-retrieval does (for autofaiss, or `imgsearch import`).

    OUT must be new, empty, or an earlier export (whose shards are replaced).

    \b
    imgsearch export ~/clip-export
    autofaiss build_index --embeddings ~/clip-export/img_emb --index_path knn.index
    """
    with _library(ctx) as lib, _progress(quiet or as_json) as on_progress:
        report = lib.export_embeddings(
            out, fmt, path_prefix=path_prefix, shard_size=shard_size, on_progress=on_progress
        )
    click.echo(render.to_json(report) if as_json else render.embedding_export(report))


@cli.command("import")
@click.argument("src", type=click.Path())
@click.option(
    "--map-prefix", metavar="OLD=NEW", help="image_path values starting with OLD are read as starting with NEW."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def import_cmd(ctx: click.Context, src: str, map_prefix: str | None, quiet: bool, as_json: bool) -> None:
    """Index the files a clip-retrieval output names, with its vectors.

    SRC is what `clip-retrieval inference` or `imgsearch export` wrote. Nothing goes through the model;
    files missing here are counted and listed.

    \b
    imgsearch import ~/clip-export
    imgsearch import embeddings/ --map-prefix /mnt/photos=~/Pictures
    """
    mapping = None
    if map_prefix is not None:
        old, sep, new = map_prefix.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"expected OLD=NEW, got {map_prefix!r}", param_hint="--map-prefix")
        mapping = (old, new)
    with _stop_on_signals() as stop, _library(ctx) as lib, _progress(quiet or as_json) as on_progress:
        report = lib.import_embeddings(src, map_prefix=mapping, on_progress=on_progress, stop=stop)
    click.echo(render.to_json(report) if as_json else render.embedding_import(report))
    if report.skipped:
        ctx.exit(EXIT_SKIPPED)


@cli.command()
@click.option("--errors", is_flag=True, help="List the files that could not be indexed, with reasons.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, errors: bool, as_json: bool) -> None:
    """Show what is indexed: images, model, index type, sizes, last update."""
    with _library(ctx) as lib:
        result: Any = lib.skipped() if errors else lib.status()
    if as_json:
        click.echo(render.to_json(result))
    else:
        click.echo(render.skipped(result) if errors else render.status(result))


@cli.command("config")
@click.option("--json", "as_json", is_flag=True)
@click.option("--defaults", is_flag=True, help="Print the documented default config.yaml.")
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool, defaults: bool) -> None:
    """Print the effective settings and where each came from."""
    from imgsearch.config import defaults_yaml, load_settings

    if defaults:
        click.echo(defaults_yaml(), nl=False)
        return
    settings = load_settings(ctx.obj["home"], ctx.obj["config"], ctx.obj["overrides"])
    rows = [(k, v, src) for k, v, src in settings.items()]
    if as_json:
        click.echo(
            render.to_json(
                {"home": str(settings.home), "settings": [{"key": k, "value": v, "source": src} for k, v, src in rows]}
            )
        )
        return
    click.echo(render.table([("home", str(settings.home))] + [(k, f"{v!r}  ({src})") for k, v, src in rows]))


@cli.command()
@click.option("--host", help="Address to listen on (serve.host; anything but loopback needs --public).")
@click.option("-p", "--port", type=click.IntRange(0, 65535), help="Port (serve.port; 0: any free port).")
@click.option("--public", is_flag=True, help="Allow a non-loopback --host; every request then needs the token.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, public: bool, open_browser: bool) -> None:
    """Browse and search the library in a web browser, and answer `query` warm (until Ctrl-C).

    The JSON API is described at /openapi.json.
    """
    from imgsearch.web import server

    def ready(url: str) -> None:
        click.echo(f"serving {url} (Ctrl-C to stop)", err=False)
        sys.stdout.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    with _library(ctx) as lib:
        server.run(lib, host=host, port=port, public=public, on_ready=ready, on_notice=_notice)
    click.echo("stopped", err=True)


@cli.command()
@click.argument("name", required=False)
def models(name: str | None) -> None:
    """List model names, or the pretrained tags of NAME ("(onnx)": a ready export runs without torch)."""
    from imgsearch.app import models as catalogue

    found = catalogue(name)
    click.echo("\n".join(found) or f"no pretrained tags for {name}")


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM asks the run to stop after the batch in flight; a second one stops at once.

    Signals never raise inside a database transaction this way; the previous handlers come back after.
    """
    import signal

    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum: int, frame: object) -> None:
        stop.set()  # every long loop checks it between batches or chunks
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM, like a second Ctrl-C, ends it at once

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _notice(line: str) -> None:
    """A notice from the core (it never prints): one escaped line on stderr."""
    click.echo(render.shown(line), err=True)


@contextmanager
def _progress(quiet: bool) -> Iterator[Any]:
    """A rich progress bar on stderr fed by the core's progress events."""
    if quiet or not sys.stderr.isatty():
        yield lambda event: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    columns = (
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Bar(*columns, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(event: Progress) -> None:
            task = tasks.get(event.phase)
            if task is None:
                task = tasks[event.phase] = bar.add_task(event.phase, total=event.total, rate="")
            speed = bar.tasks[task].speed
            rate = f"{speed:.1f} files/s" if speed and event.phase in ("embed", "photos") else ""
            if event.score is not None:
                rate = f"CLIP score {event.score:.3f}"
            bar.update(task, completed=event.done, total=event.total, rate=rate)

        yield on_progress


def main() -> None:
    cli(prog_name="imgsearch")

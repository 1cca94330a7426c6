"""Text and JSON output of result objects. No logic beyond formatting."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from imgsearch.types import (
    CopyGroup,
    EmbeddingExportReport,
    EmbeddingImportReport,
    ExportReport,
    GenerationResult,
    Hit,
    IndexReport,
    LabelResult,
    MatchVerdict,
    MigrateReport,
    PhotoCounts,
    Skipped,
    Status,
    TagCount,
    TagRecord,
    TagReport,
)


def to_json(obj: Any) -> str:
    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        raise TypeError(type(o).__name__)

    return json.dumps(obj, default=default, indent=2, ensure_ascii=False)


def hits(results: Sequence[Hit], dated: bool = False) -> str:
    """score TAB path a line (TAB "+N copies" for a picture with copies); dated: the capture time first."""
    if dated:
        return "\n".join(f"{h.taken or '-'}\t{h.score:.4f}\t{shown(h.path)}{_copies(h)}" for h in results)
    return "\n".join(f"{h.score:.4f}\t{shown(h.path)}{_copies(h)}" for h in results)


def _copies(hit: Hit) -> str:
    return f"\t+{hit.copies} cop{'y' if hit.copies == 1 else 'ies'}" if hit.copies else ""


def copy_groups(groups: Sequence[CopyGroup]) -> str:
    """A block a group: its level and size, then its files best first, each with its size and why it is not best."""
    blocks = []
    for group in groups:
        lines = [f"{group.level}: {len(group.copies)} files"]
        lines += [f"  {c.width}x{c.height}\t{shown(c.path)}\t{c.reason or 'best copy'}" for c in group.copies]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def report(r: IndexReport, max_skipped: int = 20) -> str:
    reused = f", {r.renamed} renamed, {r.copied} duplicates" if r.renamed or r.copied else ""
    lines = [
        f"indexed {r.embedded} new or changed{reused}, {r.unchanged + r.touched} unchanged, "
        f"{r.removed} removed, {len(r.skipped) + r.known_bad} skipped ({r.seconds:.1f} s)"
    ]
    lines += [f"  skipped {shown(s.path)}: {s.reason}" for s in r.skipped[:max_skipped]]
    if len(r.skipped) > max_skipped:
        lines.append(f"  ... and {len(r.skipped) - max_skipped} more (imgsearch status --errors)")
    if r.known_bad:
        lines.append(f"  {r.known_bad} files that failed before are unchanged (imgsearch status --errors)")
    if r.photos_read or r.places_named:
        lines.append(f"  read the capture date, camera and place of {r.photos_read} images indexed before")
    if r.places_named:
        lines.append(f"  named the place of {r.places_named} images with GPS")
    if r.hashed:
        lines.append(f"  hashed the pixels of {r.hashed} images indexed before (for `imgsearch dupes`)")
    if r.tagged is not None and r.tagged.images:
        lines.append(tag_report(r.tagged))
    return "\n".join(lines)


def tag_report(r: TagReport) -> str:
    embedded = f", {r.prompts_embedded} label prompts embedded" if r.prompts_embedded else ""
    return (
        f"tagged {r.images} images against {r.labels} labels ({shown(r.vocabulary)}): {r.changed} changed, "
        f"+{r.added} -{r.removed} tags{embedded} ({r.seconds:.1f} s)"
    )


def verdict(v: MatchVerdict) -> str:
    if v.path is None or v.evidence is None:
        return "no indexed image to compare with: generating one"
    return (
        f"no good match: the best hit fits '{shown(v.rival or '')}' better than the query "
        f"(evidence {v.evidence:.2f} < -{v.margin:g}); generating one"
    )


def generation(r: GenerationResult) -> str:
    return (
        f"generated {shown(r.path)}\n  {r.generator}, {r.width}x{r.height}, {r.steps} steps, seed {r.seed}, "
        f"CLIP score {r.score_start:.3f} -> {r.score:.3f} ({r.seconds:.0f} s)"
    )


def export_report(r: ExportReport, max_failed: int = 20) -> str:
    lines = [f"wrote {r.written} XMP sidecars, {r.unchanged} already up to date, {len(r.failed)} failed"]
    lines += [f"  {shown(s.path)}: {shown(s.reason)}" for s in r.failed[:max_failed]]
    if len(r.failed) > max_failed:
        lines.append(f"  ... and {len(r.failed) - max_failed} more")
    return "\n".join(lines)


def embedding_export(r: EmbeddingExportReport) -> str:
    shards = f"{r.shards} shard{'' if r.shards == 1 else 's'}"
    again = ", replacing the earlier export" if r.replaced else ""
    return (
        f"exported {r.images} vectors of {r.model_id} ({r.dim} dimensions) to {r.folder} "
        f"as {r.format}: {shards}{again} ({r.seconds:.1f} s)"
    )


def embedding_import(r: EmbeddingImportReport, max_listed: int = 20) -> str:
    lines = [
        f"imported {r.imported} of {r.rows} vectors from {r.source}: {r.unchanged} already indexed, "
        f"{r.changed} changed since, {r.missing} files missing, {len(r.skipped)} skipped ({r.seconds:.1f} s)"
    ]
    if not r.model_checked:
        lines.append(f"  the source does not name its model: its {r.dim}-dimension vectors were taken for {r.model_id}")
    lines += [f"  missing {shown(path)}" for path in r.missing_paths[:max_listed]]
    if r.missing > min(max_listed, len(r.missing_paths)):
        lines.append(f"  ... and {r.missing - min(max_listed, len(r.missing_paths))} more missing")
    lines += [f"  skipped {shown(s.path)}: {s.reason}" for s in r.skipped[:max_listed]]
    if len(r.skipped) > max_listed:
        lines.append(f"  ... and {len(r.skipped) - max_listed} more skipped")
    if r.changed:
        lines.append("  files changed since they were embedded: `imgsearch index` their folders to embed them")
    return "\n".join(lines)


def labels(results: Sequence[LabelResult]) -> str:
    blocks = []
    for r in results:
        rows = [f"{s.probability:.4f}\t{shown(s.label)}" for s in r.labels]
        blocks.append("\n".join(rows) if len(results) == 1 else "\n".join([shown(r.path), *("  " + x for x in rows)]))
    return "\n".join(blocks)


def tag_counts(counts: Sequence[TagCount]) -> str:
    width = max(len(shown(c.label)) for c in counts)
    lines = [f"{'tag'.ljust(width)}  {'images':>6}  {'auto':>6}  {'hand':>6}"]
    lines += [f"{shown(c.label).ljust(width)}  {c.auto + c.hand:>6}  {c.auto:>6}  {c.hand:>6}" for c in counts]
    return "\n".join(lines)


def tags_csv(records: Iterable[TagRecord]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "source", "score", "probability"])
    for r in records:
        writer.writerow([r.path, r.label, r.source, _num(r.score), _num(r.probability)])
    return out.getvalue()


def tags_by_path(records: Iterable[TagRecord]) -> list[dict[str, Any]]:
    """[{"path": ..., "tags": [{"label", "source", "score", "probability"}, ...]}, ...] in path order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        entry = {"label": r.label, "source": r.source, "score": r.score, "probability": r.probability}
        grouped.setdefault(r.path, []).append(entry)
    return [{"path": path, "tags": tags} for path, tags in grouped.items()]


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def migrated(r: MigrateReport) -> str:
    return f"copied {r.images} images from {r.source} to {r.target} in {r.seconds:.1f} s; to use it, set {r.use}"


def status(s: Status) -> str:
    rows = [
        ("home", s.home),
        ("database", s.database),
        ("images", str(s.images)),
        ("skipped files", str(s.skipped)),
        ("model", s.model_id or "-"),
        ("dimension", str(s.dim or "-")),
        ("index type", s.index_type),
        ("database size", _bytes(s.database_bytes)),
        ("vector index size", _bytes(s.index_bytes)),
        ("last update", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.updated_at)) if s.updated_at else "never"),
        ("folders", ", ".join(s.roots) or "-"),
    ]
    rows += photo_rows(s.photos, s.images)
    rows.append(("duplicates", f"{s.copy_groups} groups, {s.copied_files} files (imgsearch dupes)"))
    if s.runtime:
        rows.append(("runtime", f"{s.runtime} {s.precision or '(precision not decided yet)'}"))
        rows.append(("precision", s.precision_reason))
        rows.append(("cpu", s.cpu))
    if s.sqlite_version:
        rows.append(("sqlite", s.sqlite_version))
    return table(rows)


def photo_rows(p: PhotoCounts, images: int) -> list[tuple[str, str]]:
    """What `status` says of the photo fields: how many images have each, and what is left to do."""
    sources = {"exif": "EXIF", "xmp": "XMP", "filename": "file name", "mtime": "file time"}
    dated = ", ".join(f"{p.taken[k]} {label}" for k, label in sources.items() if p.taken.get(k))
    rows = [
        ("capture dates", f"{sum(p.taken.values())} of {images}" + (f" ({dated})" if dated else "")),
        ("cameras, lenses", f"{p.camera}, {p.lens}"),
        ("gps, places", f"{p.gps}, {p.place}"),
    ]
    if p.unread:
        rows.append(("photo fields", f"{p.unread} images not read yet (imgsearch index reads them)"))
    if p.unnamed:
        rows.append(("places", f"{p.unnamed} positions without a name (pip install 'imgsearch[places]')"))
    return rows


def skipped(items: Iterable[Skipped]) -> str:
    return "\n".join(f"{shown(s.path)}\t{s.reason}" for s in items) or "no skipped files"


def table(rows: Sequence[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def shown(text: str) -> str:
    """A name or path as it may reach a terminal: one printable line, control characters escaped (a file named
    with ESC [2J clears no screen, a tab or a newline forges no result line). --json output stays exact."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)

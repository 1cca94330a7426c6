"""Text and JSON output of result objects. No logic beyond formatting."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from imgsearch.types import Hit, IndexReport, Skipped, Status


def to_json(obj: Any) -> str:
    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        raise TypeError(type(o).__name__)

    return json.dumps(obj, default=default, indent=2, ensure_ascii=False)


def hits(results: Sequence[Hit]) -> str:
    return "\n".join(f"{h.score:.4f}\t{h.path}" for h in results)


def report(r: IndexReport, max_skipped: int = 20) -> str:
    reused = f", {r.renamed} renamed, {r.copied} duplicates" if r.renamed or r.copied else ""
    lines = [
        f"indexed {r.embedded} new or changed{reused}, {r.unchanged + r.touched} unchanged, "
        f"{r.removed} removed, {len(r.skipped) + r.known_bad} skipped ({r.seconds:.1f} s)"
    ]
    lines += [f"  skipped {s.path}: {s.reason}" for s in r.skipped[:max_skipped]]
    if len(r.skipped) > max_skipped:
        lines.append(f"  ... and {len(r.skipped) - max_skipped} more (imgsearch status --errors)")
    if r.known_bad:
        lines.append(f"  {r.known_bad} files that failed before are unchanged (imgsearch status --errors)")
    return "\n".join(lines)


def status(s: Status) -> str:
    rows = [
        ("home", s.home),
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
    return table(rows)


def skipped(items: Iterable[Skipped]) -> str:
    return "\n".join(f"{s.path}\t{s.reason}" for s in items) or "no skipped files"


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

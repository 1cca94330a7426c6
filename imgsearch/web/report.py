"""Self-contained HTML pages of search results: `imgsearch query ... --html results.html`.

One file and nothing outside it: the thumbnails are embedded as data: URIs and the CSS is inline,
so the page can be mailed, archived or opened offline. Every piece of text is escaped (file names
may hold markup), and a strict Content-Security-Policy keeps the page from running or fetching
anything even if one were missed.

>>> from imgsearch.web import report
>>> report.write("results.html", "a red circle", lib.query("a red circle"), lib.thumbnail)
"""

from __future__ import annotations

import base64
import datetime
import html
import os
import secrets
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

from imgsearch.errors import ImageDecodeError, NotFoundError, UsageError
from imgsearch.types import Copy, CopyGroup, Hit

# image id -> a cached JPEG thumbnail file (Library.thumbnail)
Thumbnail = Callable[[int], Path]

CSP = "default-src 'none'; img-src data: file:; style-src 'unsafe-inline'"

STYLE = """
:root { color-scheme: light dark; --fg: #1d1d1f; --muted: #6e6e73; --bg: #fafafa; --card: #fff; --line: #ddd;
  --empty: #d0d0d0; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #f2f2f2; --muted: #a1a1a6; --bg: #161617; --card: #222224; --line: #3a3a3c; --empty: #48484a; }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { margin-bottom: 1.25rem; }
header h1 { margin: 0 0 .25rem; font-size: 1.4rem; overflow-wrap: anywhere; }
header p { margin: 0; color: var(--muted); }
ol.grid { list-style: none; margin: 0; padding: 0; display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); }
li.hit { background: var(--card); border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
.thumb { display: flex; align-items: center; justify-content: center; aspect-ratio: 1; background: var(--line); }
.thumb img { max-width: 100%; max-height: 100%; object-fit: contain; display: block; }
.thumb.missing { background: var(--empty); color: var(--muted); padding: .75rem; text-align: center;
  font-size: .85rem; overflow-wrap: anywhere; }
.meta { padding: .5rem .6rem .6rem; }
.meta .top { display: flex; justify-content: space-between; color: var(--muted); font-variant-numeric: tabular-nums; }
.name { display: block; font-weight: 600; overflow-wrap: anywhere; }
.path { display: block; font-size: .8rem; color: var(--muted); overflow-wrap: anywhere; }
.none { color: var(--muted); }
section.group { margin-bottom: 1.5rem; }
section.group h2 { font-size: 1rem; margin: 0 0 .5rem; }
li.best { border-color: #2e7d32; }
.why { display: block; font-size: .8rem; }
"""


def write(path: Path | str, title: str, hits: Sequence[Hit], thumbnail: Thumbnail) -> int:
    """Write a page of `hits` (best first) for the query `title` to `path`, atomically. Returns how many.

    `thumbnail(image_id)` gives a JPEG file (Library.thumbnail); a hit whose thumbnail cannot be had
    (not indexed, file gone or unreadable) gets a grey cell with the reason. Raises UsageError when
    the page cannot be written there.
    """
    target = Path(path)
    _check_folder(target)
    _replace(target, page(title, hits, thumbnail))
    return len(hits)


def query_title(text: str, images: Sequence[str | Path] = (), tags: Sequence[str] = ()) -> str:
    """How a query reads in the page's header: the text, the example images and the tags."""
    parts = [text.strip()] if text.strip() else []
    parts += [f"like {Path(image).name}" for image in images]
    parts += [f"tagged {', '.join(tags)}"] if tags else []
    return " · ".join(parts) or "imgsearch results"


def page(title: str, hits: Sequence[Hit], thumbnail: Thumbnail, when: datetime.datetime | None = None) -> str:
    """The whole HTML document."""
    cells = "\n".join(_cell(rank, hit, thumbnail) for rank, hit in enumerate(hits, 1))
    body = f'<ol class="grid">\n{cells}\n</ol>' if hits else '<p class="none">No matches.</p>'
    return _document(title, f"{len(hits)} result{'' if len(hits) == 1 else 's'}", body, when)


def write_groups(path: Path | str, groups: Sequence[CopyGroup], thumbnail: Thumbnail) -> int:
    """Write a page of groups of copies (`imgsearch dupes --html`), each best copy first, to `path`, atomically.
    Returns how many groups."""
    target = Path(path)
    _check_folder(target)
    sections = "\n".join(_group(n, group, thumbnail) for n, group in enumerate(groups, 1))
    body = sections or '<p class="none">No copies.</p>'
    files = sum(len(g.copies) for g in groups)
    _replace(target, _document("Duplicates", f"{len(groups)} groups, {files} files", body, None))
    return len(groups)


def _group(n: int, group: CopyGroup, thumbnail: Thumbnail) -> str:
    cells = "\n".join(_copy_cell(copy, thumbnail) for copy in group.copies)
    return (
        f'<section class="group" id="g{n}"><h2>{_text(group.level)} · {len(group.copies)} files</h2>'
        f'<ol class="grid">\n{cells}\n</ol></section>'
    )


def _copy_cell(copy: Copy, thumbnail: Thumbnail) -> str:
    name = Path(copy.path).name
    verdict = "best copy" if not copy.reason else copy.reason
    return (
        f'<li class="hit{" best" if not copy.reason else ""}">'
        f"{_picture(Hit(copy.id, copy.path, 0.0), name, thumbnail)}"
        f'<div class="meta"><div class="top"><span>{copy.width}x{copy.height}</span>'
        f"<span>{copy.bytes >> 10} KB</span></div>"
        f'<span class="name">{_text(name)}</span><span class="why">{_text(verdict)}</span>'
        f'<a class="path" href="{_text(_file_uri(copy.path))}">{_text(copy.path)}</a></div></li>'
    )


def _document(title: str, summary: str, body: str, when: datetime.datetime | None) -> str:
    when = when or datetime.datetime.now().astimezone()
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="imgsearch">
<title>{_text(title)} · imgsearch</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>{_text(title)}</h1>
<p>{summary} · {when:%Y-%m-%d %H:%M} · imgsearch</p>
</header>
{body}
</body>
</html>
"""


def _cell(rank: int, hit: Hit, thumbnail: Thumbnail) -> str:
    name = Path(hit.path).name
    link = _file_uri(hit.path)
    return (
        f'<li class="hit" id="r{rank}">'
        f"{_picture(hit, name, thumbnail)}"
        f'<div class="meta"><div class="top"><span class="rank">#{rank}</span>'
        f'<span class="score">{hit.score:.4f}</span></div>'
        f'<span class="name">{_text(name)}</span>'
        f'<a class="path" href="{_text(link)}">{_text(hit.path)}</a></div></li>'
    )


def _picture(hit: Hit, name: str, thumbnail: Thumbnail) -> str:
    try:
        data = thumbnail(hit.id).read_bytes()
    except (NotFoundError, ImageDecodeError) as exc:
        return _placeholder(str(exc))
    except OSError as exc:
        return _placeholder(f"thumbnail unreadable: {exc.strerror or exc}")
    encoded = base64.b64encode(data).decode("ascii")
    return f'<div class="thumb"><img src="data:image/jpeg;base64,{encoded}" alt="{_text(name)}"></div>'


def _placeholder(reason: str) -> str:
    return f'<div class="thumb missing" title="{_text(reason)}">{_text(reason)}</div>'


def _file_uri(path: str) -> str:
    """A file:// link, percent-encoded; a path that is not absolute (never stored so) links nowhere."""
    try:
        return Path(path).as_uri()
    except ValueError:
        return "#"


def _text(value: str) -> str:
    return html.escape(value, quote=True)


def _check_folder(target: Path) -> None:
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {target}: no such folder {folder}")
    if target.is_dir():
        raise UsageError(f"cannot write {target}: it is a folder")


def _replace(target: Path, text: str) -> None:
    """Write to a temp file beside the target and rename it into place: never a half-written page.

    open(..., "x") rather than mkstemp, so the page gets the usual permissions (umask), not 0600.
    """
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "x", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, target)
    except BaseException as exc:
        with suppress(OSError):
            temp.unlink()
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise

"""Plain data that crosses layers: results, reports, progress. No behaviour beyond formatting helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def printable(path: str) -> str:
    """A path as text that can be stored and printed: bytes that are not UTF-8 become \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# PNG text chunks of a generated image start with this; the indexer marks such files as generated.
PROVENANCE_PREFIX = "imgsearch:"
# The generators of `generate`, by the name generate.generator and `--generator` take (config and the CLI read
# this registry; imgsearch.generate implements them).
GENERATORS: dict[str, str] = {
    "auto": "VQGAN if its weights can be had, else Fourier",
    "vqgan": "a taming-transformers VQGAN decoder's latent, kept on its codebook",
    "fourier": "an image parameterised by its Fourier spectrum: no weights needed",
}


# Where a capture time came from, most trusted first (photometa reads them in this order).
DATE_SOURCES = ("exif", "xmp", "filename", "mtime")


@dataclass(frozen=True)
class PhotoMeta:
    """When, with what and where a photo was taken, as its header (or its name, or its mtime) says.

    `taken` is the local wall-clock time where the photo was taken ('YYYY-MM-DDTHH:MM:SS'): what a person means
    by "June 2019", and what filters and date sorting compare. `offset` (minutes east of UTC) is known for EXIF
    with OffsetTimeOriginal, XMP dates with a zone, and mtimes. `notes` keeps why a field was left empty (broken
    or absurd values), "; "-separated; "" when nothing was wrong.
    """

    taken: str | None = None
    offset: int | None = None
    source: str | None = None  # one of DATE_SOURCES
    camera: str | None = None  # make and model, e.g. "Canon EOS 5D Mark II"
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None
    place: str | None = None  # "city, region, country", named offline from lat/lon (the `places` extra)
    notes: str = ""
    version: int = 0  # the imgsearch.photometa.VERSION that read it; 0: not read yet

    @property
    def taken_iso(self) -> str | None:
        """ISO 8601, with the offset when it is known: 2023-05-12T14:03:22+09:00."""
        if self.taken is None or self.offset is None:
            return self.taken
        sign, minutes = ("-" if self.offset < 0 else "+"), abs(self.offset)
        return f"{self.taken}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class PhotoFilter:
    """Metadata filters of a query or listing; empty fields filter nothing.

    after/before: bounds on PhotoMeta.taken ('YYYY-MM-DDTHH:MM:SS'), after inclusive, before exclusive (see
    imgsearch.search.dates, which turns "2023-06" into such bounds). camera/place: case-insensitive substrings.
    """

    after: str | None = None
    before: str | None = None
    camera: str | None = None
    place: str | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.after, self.before, self.camera, self.place))


NO_FILTER = PhotoFilter()


@dataclass(frozen=True)
class Hit:
    """One search result: an indexed image and its similarity to the query (cosine, -1..1), with what the index
    knows of its capture (`taken`: ISO 8601 with the offset when known; `taken_source`: exif, xmp, filename, mtime).
    """

    id: int
    path: str
    score: float
    raw: str | None = None  # a RAW+JPEG pair is one photo: the RAW original beside this JPEG or HEIF
    copies: int = 0  # other indexed files that are copies of this one (collapsed into it; imgsearch.dupes)
    taken: str | None = None
    taken_source: str | None = None
    camera: str | None = None
    lens: str | None = None
    place: str | None = None
    lat: float | None = None
    lon: float | None = None

    @classmethod
    def of(cls, image_id: int, path: str, score: float, photo: PhotoMeta) -> Hit:
        """A hit with its photo's capture fields."""
        return cls(
            image_id,
            path,
            score,
            taken=photo.taken_iso,
            taken_source=photo.source,
            camera=photo.camera,
            lens=photo.lens,
            place=photo.place,
            lat=photo.lat,
            lon=photo.lon,
        )


@dataclass(frozen=True)
class ImageTag:
    """A tag as one image carries it: "hand" (set by a person) or "auto" (with the tagger's probability)."""

    label: str
    source: str
    probability: float | None


@dataclass(frozen=True)
class ImageInfo:
    """What the index knows of one image."""

    id: int
    path: str
    bytes: int
    width: int
    height: int
    indexed_at: float
    generated: bool
    content_hash: str
    tags: tuple[ImageTag, ...] = ()
    raw: str | None = None  # the RAW original beside this JPEG or HEIF (a RAW+JPEG pair), if there is one
    photo: PhotoMeta = field(default_factory=PhotoMeta)
    copies: tuple[Copy, ...] = ()  # the other files of its group of copies, best copy first


@dataclass(frozen=True)
class Skipped:
    """A file that could not be indexed, and why."""

    path: str
    reason: str


@dataclass
class TagReport:
    """What a tagging pass did. `images` were examined; `changed` of them got different tags."""

    vocabulary: str = ""
    labels: int = 0
    images: int = 0
    changed: int = 0
    added: int = 0
    removed: int = 0
    prompts_embedded: int = 0
    seconds: float = 0.0


@dataclass
class IndexReport:
    """What an index run did. `embedded` counts images that went through the model."""

    embedded: int = 0
    renamed: int = 0
    copied: int = 0
    touched: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    known_bad: int = 0
    seconds: float = 0.0
    tagged: TagReport | None = None  # with tagging.auto on
    photos_read: int = 0  # images indexed without photo fields (before the upgrade, import, Ray) read since
    hashed: int = 0  # images indexed without a pixel hash (before the upgrade, import, Ray) hashed since
    places_named: int = 0  # GPS positions named since (the `places` extra was installed after they were read)


@dataclass(frozen=True)
class Copy:
    """A file in a group of copies: why it is not the best copy ("" for the best)."""

    id: int
    path: str
    width: int
    height: int
    bytes: int
    reason: str


@dataclass(frozen=True)
class CopyGroup:
    """Files of one picture, the best copy first. level: "exact" (the same bytes), "copy" (the same picture
    resized, re-encoded, converted, turned or slightly cropped: its pixel hash) or "similar" (CLIP's distance, only
    when asked for: bursts and near-identical shots)."""

    level: str
    copies: tuple[Copy, ...]


@dataclass(frozen=True)
class Progress:
    """A progress event from a long operation. `total` is None while it is still unknown."""

    phase: str  # "scan" | "embed" | "save" | "labels" (label prompts embedded) | "tag" | "download" | "generate"
    done: int
    total: int | None = None
    score: float | None = None  # "generate": CLIP's current score for the prompt


@dataclass(frozen=True)
class QueryTerm:
    """One term of a combined query: text or an image path, with a signed weight."""

    kind: str  # "text" | "image"
    value: str
    weight: float = 1.0


@dataclass(frozen=True)
class PhotoCounts:
    """`status`: how many indexed images have each capture field. unread: not read yet (`index` fills them in);
    unnamed: with GPS but no place name (the `places` extra is not installed)."""

    taken: dict[str, int] = field(default_factory=dict)  # by source: exif, xmp, filename, mtime
    camera: int = 0
    lens: int = 0
    gps: int = 0
    place: int = 0
    unread: int = 0
    unnamed: int = 0


@dataclass(frozen=True)
class Status:
    """What `imgsearch status` shows."""

    home: str
    images: int
    skipped: int
    model_id: str | None
    dim: int | None
    index_type: str
    database_bytes: int
    index_bytes: int
    updated_at: float | None
    roots: tuple[str, ...]
    sqlite_version: str = ""  # the SQLite library in use (below 3.51.3: WAL-reset bug, harmless with one writer)
    database: str = ""  # where metadata and vectors live: the SQLite file, or the PostgreSQL URL (no password)
    runtime: str = ""  # what runs the configured model here: openvino, onnxruntime, pytorch-cpu or pytorch-cuda
    precision: str = ""  # fp32, bf16, int8, fp16; empty while a probe on first use is still to decide
    precision_reason: str = ""  # why that precision
    cpu: str = ""  # the CPU, with the flags precision depends on
    generation_available: bool = True  # generation runs CLIP in PyTorch: the `torch` extra is installed
    photos: PhotoCounts = field(default_factory=PhotoCounts)
    copy_groups: int = 0  # groups of copies (imgsearch dupes)
    copied_files: int = 0  # files in them


@dataclass(frozen=True)
class MigrateReport:
    """`imgsearch migrate`: what was copied where, and the setting that makes the copy the one in use."""

    source: str
    target: str
    images: int
    seconds: float
    use: str  # e.g. "store.url=postgresql://..." or "store.url= (empty: SQLite in the home folder)"


@dataclass(frozen=True)
class LabelScore:
    """One label's fit to one image: probability among the labels asked about, and cosine similarity."""

    label: str
    probability: float
    score: float


@dataclass(frozen=True)
class LabelResult:
    """`imgsearch label`: an image and its labels, most probable first."""

    path: str
    labels: list[LabelScore]


@dataclass(frozen=True)
class TagCount:
    """`imgsearch tags`: a tag and how many indexed images carry it."""

    label: str
    auto: int
    hand: int


@dataclass(frozen=True)
class TagRecord:
    """A tag on an image, for export: source is "auto" or "hand"."""

    path: str
    label: str
    source: str
    score: float | None
    probability: float | None


@dataclass
class ExportReport:
    """`imgsearch tag export --xmp`: sidecars written, already up to date, and those that could not be."""

    written: int = 0
    unchanged: int = 0
    failed: list[Skipped] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationResult:
    """A generated image: where it was saved, what made it, and CLIP's score for the prompt before and after."""

    path: str
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    generator: str  # "vqgan:<checkpoint>" or "fourier"
    model_id: str
    score_start: float
    score: float
    seconds: float


@dataclass(frozen=True)
class MatchVerdict:
    """Whether the library holds a match for a text query, and the evidence.

    evidence: for the best of the top hits, logit_scale x (cosine with the query - the highest cosine
    with any contrasting prompt); the query matches when evidence >= -margin.
    """

    matched: bool
    evidence: float | None  # None: nothing indexed to compare with
    margin: float
    path: str | None  # the hit the evidence is about
    rival: str | None  # the contrasting prompt that scored highest on it
    ready: bool = True  # False: the contrasting prompts are still being embedded (serve): no verdict yet


@dataclass(frozen=True)
class EmbeddingExportReport:
    """`imgsearch export`: the folder written, in which format, and what it holds."""

    folder: str
    format: str
    model_id: str
    dim: int
    images: int
    shards: int
    replaced: bool  # the folder held an earlier export, whose shards this one replaced
    seconds: float


@dataclass
class EmbeddingImportReport:
    """`imgsearch import`: what became of the source's rows.

    imported: added (or replacing an older row of the same path); unchanged: that path was indexed
    already with the same content; changed: the file is not what the export embedded (left for `index`);
    missing: no such file here (the first MAX_LISTED of them in missing_paths); skipped: unreadable.
    model_checked: the source named its model (our sidecar); without one, only the dimension was checked.
    """

    source: str
    model_id: str
    model_checked: bool
    dim: int
    shards: int = 0
    rows: int = 0
    imported: int = 0
    unchanged: int = 0
    changed: int = 0
    missing: int = 0
    missing_paths: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

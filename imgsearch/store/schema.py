"""The database schema. Changed only together with a new Alembic revision in imgsearch/migrations.

The same tables serve SQLite and PostgreSQL; the column types that must differ are in coltypes.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)

from imgsearch.store.coltypes import BigInt, Embedding, Label, PathText, Stamp

metadata = MetaData()

images = Table(
    "images",
    metadata,
    # AUTOINCREMENT: ids are never reused, so a stale FAISS file can never point at the wrong image.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", PathText, nullable=False, unique=True),
    Column("size", BigInt, nullable=False),
    Column("mtime_ns", BigInt, nullable=False),
    Column("content_hash", String(32), nullable=False, index=True),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("vector", Embedding, nullable=False),
    Column("indexed_at", Float, nullable=False),
    # What the image was last auto-tagged against (see search.labels.rule_key); NULL: not yet, or content changed.
    Column("tags_key", String(32), nullable=True),
    # Made by `imgsearch generate` (its PNG carries imgsearch provenance): left out of queries by default.
    Column("generated", Boolean, nullable=False, server_default=false()),
    # Queries look up the few generated images on every search; without it SQLite reads every row (and vector).
    Index("ix_images_generated", "generated"),
    # What the photo's header says (imgsearch.types.PhotoMeta; revision 0005). taken: local wall-clock time.
    Column("taken", Stamp, nullable=True),
    Column("taken_offset", Integer, nullable=True),  # minutes east of UTC, when known
    Column("taken_source", String(8), nullable=True),  # exif, xmp, filename or mtime
    Column("camera", Text, nullable=True),
    Column("lens", Text, nullable=True),
    Column("lat", Float, nullable=True),
    Column("lon", Float, nullable=True),
    Column("place", Text, nullable=True),  # named from lat/lon; NULL with GPS: the geocoder was not installed
    Column("photo_notes", Text, nullable=True),  # why fields were left empty
    # The photometa.VERSION that read the header; NULL: not read yet (rows from before 0005, `import`, Ray).
    Column("photo_version", Integer, nullable=True),
    Index("ix_images_taken", "taken"),
    Index("ix_images_camera", "camera"),
    Index("ix_images_place", "place"),
    Index("ix_images_photo_version", "photo_version"),
    # Copies (revision 0006; imgsearch.dupes). pixel_hash: the perceptual hash of the decoded picture (NULL: not
    # computed yet, the backfill does it; empty: the file could not be decoded for it). copy_group: the id of the
    # best copy of the group this image is in (NULL: no copy of it is indexed); copy_rank: 0 for the best copy,
    # then the others in the best-copy order.
    Column("pixel_hash", LargeBinary, nullable=True),
    Column("copy_group", Integer, nullable=True),
    Column("copy_rank", Integer, nullable=True),
    Index("ix_images_copy_group", "copy_group"),
    sqlite_autoincrement=True,
)

skipped = Table(
    "skipped",
    metadata,
    Column("path", PathText, primary_key=True),
    Column("size", BigInt, nullable=False),
    Column("mtime_ns", BigInt, nullable=False),
    Column("reason", Text, nullable=False),
    Column("seen_at", Float, nullable=False),
)

roots = Table(
    "roots",
    metadata,
    Column("path", PathText, primary_key=True),
    Column("added_at", Float, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# One row per (image path, tag). source: "auto" (the tagger owns it), "hand" (added by a person) or
# "rejected" (removed by a person: the tagger must not add it back). Labels compare case-insensitively.
# Keyed by path, not image id, so that hand tags outlive `index --rebuild`, which renumbers every image.
image_tags = Table(
    "image_tags",
    metadata,
    Column("path", PathText, nullable=False),
    Column("label", Label, nullable=False),
    Column("source", String(8), nullable=False),
    Column("score", Float, nullable=True),  # cosine similarity of image and label (auto tags)
    Column("probability", Float, nullable=True),  # the label's probability among the vocabulary (auto tags)
    Column("tagged_at", Float, nullable=False),
    PrimaryKeyConstraint("path", "label"),
    Index("ix_image_tags_label", "label"),
)

# Cached text embeddings (label prompts), per model.
text_vectors = Table(
    "text_vectors",
    metadata,
    Column("model_id", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    PrimaryKeyConstraint("model_id", "text"),
)

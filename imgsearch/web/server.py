"""`imgsearch serve`: the JSON API (FastAPI, described at /openapi.json) and the page that uses it.

Every route calls one Library method; the Guard middleware (imgsearch.web.guard) has already
refused foreign Host headers, missing tokens and oversized bodies. Images are only ever served by
id, from the path the index holds, so nothing in a request can name a file.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as ApiPath
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from imgsearch.app import Library
from imgsearch.errors import (
    BusyError,
    ConfigError,
    ImageDecodeError,
    ImgSearchError,
    IndexEmptyError,
    NotFoundError,
    UsageError,
    WeightsError,
)
from imgsearch.types import Copy, Hit
from imgsearch.version import __version__
from imgsearch.web.guard import Guard, owner
from imgsearch.web.jobs import Job, Jobs

# Formats every browser shows; anything else (TIFF, HEIC, JPEG XL, camera RAW) is sent as a JPEG rendition.
BROWSER_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".avif": "image/avif",
}
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
MAX_PAGE = 500
MAX_SEED = 2**63 - 1  # torch's manual_seed takes a signed 64-bit seed
PREVIEW_SIDE = 2048  # the JPEG rendition of a TIFF, HEIC, JPEG XL or RAW the lightbox shows

Offset = Annotated[int, Query(ge=0, le=100_000, description="skip this many results")]
Limit = Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="results per page (serve.page_size)")]
ImageId = Annotated[int, ApiPath(ge=1, le=2**63 - 1, description="an indexed image's id")]
Tags = Annotated[list[str], Query(alias="tag", max_length=20, description="only images with all these tags")]
DATE_HELP = "a date: 2023, 2023-06 or 2023-06-14 (the bound includes the period it names)"
After = Annotated[str | None, Query(max_length=40, description=f"taken in or after {DATE_HELP}")]
Before = Annotated[str | None, Query(max_length=40, description=f"taken in or before {DATE_HELP}")]
Camera = Annotated[str | None, Query(max_length=200, description="camera make or model contains this (any case)")]
Copies = Annotated[
    Literal["collapse", "all"],
    Query(description='"collapse": one hit per picture, its best copy found, counting the others; "all": every file'),
]
Place = Annotated[str | None, Query(max_length=200, description="place name (city, region, country) contains this")]
Sort = Annotated[
    Literal["relevance", "date", "-date"] | None,
    Query(description="relevance (default), date (oldest first) or -date (newest first); without q: a listing"),
]


# What the API returns (these models are what /openapi.json describes).


class PhotoOut(BaseModel):
    """What the index knows of a photo's capture (null: unknown)."""

    taken: str | None = Field(None, description="capture time, ISO 8601 with its UTC offset when known")
    taken_source: str | None = Field(None, description="where taken came from: exif, xmp, filename or mtime")
    camera: str | None = None
    lens: str | None = None
    place: str | None = Field(None, description="city, region, country (named offline from lat/lon)")
    lat: float | None = None
    lon: float | None = None


class HitOut(PhotoOut):
    id: int
    path: str
    name: str
    score: float | None = Field(
        description="cosine similarity to the query; for tags alone the first tag's probability (hand: 1); "
        "null when browsing"
    )
    thumbnail: str
    original: str
    raw: str | None = Field(default=None, description="the RAW original beside this JPEG or HEIF (a RAW+JPEG pair)")
    copies: int = Field(0, description="other indexed files that are copies of this picture (collapsed into it)")


class CopyOut(BaseModel):
    id: int
    path: str
    name: str
    width: int
    height: int
    bytes: int
    reason: str = Field(description='why it is not the best copy of its group ("" for the best)')
    thumbnail: str


class CopyGroupOut(BaseModel):
    level: str = Field(
        description='"exact": the same bytes; "copy": the same picture (pixel hash); "similar": near-identical shots '
        "(CLIP distance)"
    )
    copies: list[CopyOut] = Field(description="the files, best copy first")


class PageOut(BaseModel):
    hits: list[HitOut]
    offset: int
    limit: int
    more: bool = Field(description="a following page exists (ask again with offset + limit)")


class TagOut(BaseModel):
    label: str
    source: str = Field(description='"hand" (set by a person) or "auto"')
    probability: float | None


class ImageOut(PhotoOut):
    id: int
    path: str
    name: str
    width: int
    height: int
    bytes: int
    indexed_at: float
    generated: bool
    tags: list[TagOut]
    thumbnail: str
    original: str
    raw: str | None = Field(default=None, description="the RAW original beside this JPEG or HEIF (a RAW+JPEG pair)")
    photo_notes: str = Field("", description="why photo fields were left empty (broken or absurd metadata)")
    copies: list[CopyOut] = Field([], description="the other files of this picture, best copy first")


class ValueOut(BaseModel):
    value: str
    images: int


class FacetsOut(BaseModel):
    cameras: list[ValueOut]
    places: list[ValueOut]


class TagCountOut(BaseModel):
    label: str
    images: int
    auto: int
    hand: int


class TagChange(BaseModel):
    label: str = Field(min_length=1, max_length=200)
    present: bool = True


class LabelOut(BaseModel):
    label: str
    probability: float
    score: float


class MatchOut(BaseModel):
    matched: bool
    evidence: float | None
    margin: float
    best_path: str | None
    rival: str | None
    ready: bool = True  # False: the server is still embedding its contrasting prompts (no verdict yet)


class GenerateIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=500)
    steps: int = Field(0, ge=0, le=5000, description="0: generate.steps")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same device: the same image")


class JobStarted(BaseModel):
    job: str


class GeneratedOut(BaseModel):
    path: str
    image_id: ImageId | None
    image: str
    final_score: float
    generator: str
    seconds: float


class JobOut(BaseModel):
    job: str
    prompt: str
    state: str = Field(description='"running", "done" or "failed"')
    phase: str
    done: int
    total: int | None
    score: float | None
    error: str | None
    notices: list[str]
    result: GeneratedOut | None


class StatusOut(BaseModel):
    version: str
    home: str
    images: int
    skipped: int
    model_id: str | None
    index_type: str
    public: bool
    page_size: int
    generation_available: bool = True
    runtime: str = ""  # what runs the model here (openvino, onnxruntime, pytorch-cpu, pytorch-cuda)
    precision: str = ""  # fp32, bf16, int8 or fp16; empty until a probe on first use decides
    copy_groups: int = 0  # groups of duplicates (the page's Duplicates view)


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "bad request"},
    404: {"model": Problem, "description": "no such image or job"},
    409: {"model": Problem, "description": "busy: a generation runs, or another process writes"},
    503: {"model": Problem, "description": "the model's weights cannot be had"},
}

_STATUS = {NotFoundError: 404, UsageError: 400, ConfigError: 400, BusyError: 409, WeightsError: 503}


def create_app(
    lib: Library, *, token: str, port: int, public: bool = False, hosts: Sequence[str] | None = None
) -> Guard:
    """The whole server: the API and page behind the Guard. `port` is the one the server listens on."""
    s = lib.settings.serve
    return Guard(
        _api(lib, token, public),
        token=token,
        port=port,
        public=public,
        hosts=s.allowed_hosts if hosts is None else hosts,
        max_body=int(s.max_upload_mb * 2**20),
    )


def _api(lib: Library, token: str, public: bool) -> FastAPI:
    api = FastAPI(
        title="imgsearch",
        version=__version__,
        description="Search a photo library by what is in the pictures. Changes (POST) need the "
        "X-Imgsearch-Token header; the page at / carries the token.",
        docs_url=None,  # the Swagger page loads its scripts from a CDN; the raw spec is at /openapi.json
        redoc_url=None,
    )
    model_lock = threading.RLock()  # one model and one vector index: queries take turns (each is milliseconds)
    if lib.prompt_memory is None:  # a request never writes to the database: the prompts it asks are kept in memory
        from imgsearch.search.tagger import PromptMemory

        lib.prompt_memory = PromptMemory()
    jobs = Jobs(
        lambda job, on_progress, on_notice, stop: lib.generate(
            job.prompt, steps=job.steps, seed=job.seed, on_progress=on_progress, on_notice=on_notice, stop=stop
        ),
        lib.image_id_of,
    )
    static = _static_files()
    page_size = lib.settings.serve.page_size
    api.state.jobs = jobs
    api.state.model_lock = model_lock

    def page(fetch: Callable[[int], list[Hit]], offset: int, limit: int, scored: bool = True) -> PageOut:
        try:
            found = fetch(offset + limit + 1)
        except IndexEmptyError:
            found = []
        hits = [_hit(h, scored) for h in found[offset : offset + limit]]
        return PageOut(hits=hits, offset=offset, limit=limit, more=len(found) > offset + limit)

    @api.exception_handler(ImgSearchError)
    def _error(request: Request, exc: ImgSearchError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @api.exception_handler(ImageDecodeError)
    def _undecodable(request: Request, exc: ImageDecodeError) -> JSONResponse:
        return JSONResponse({"detail": f"the image file cannot be shown: {exc}"}, status_code=404)

    @api.get("/", include_in_schema=False)
    def index_page(request: Request) -> Response:
        # The token only for the owner's browser (the printed URL set its cookie): another local user browses.
        mine = owner(request.scope["headers"], token)
        body = static["index.html"][0].replace(b"{{TOKEN}}", token.encode() if mine else b"")
        return Response(body, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})

    @api.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static:
            raise NotFoundError("no such file")
        body, media_type = static[name]
        return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})

    @api.get("/api/status", response_model=StatusOut, summary="What is indexed")
    def status() -> StatusOut:
        st = lib.status()
        shown = {name: getattr(st, name) for name in StatusOut.model_fields if hasattr(st, name)}
        return StatusOut(version=__version__, public=public, page_size=page_size, **shown)

    @api.get("/api/search", response_model=PageOut, responses=ERRORS, summary="Search by text, tags, or browse")
    def search(
        q: Annotated[str, Query(max_length=2000, description="query text: 'a cat + 2:sofa - dog'")] = "",
        tags: Tags = [],  # noqa: B006 (FastAPI copies defaults)
        path_prefix: str | None = None,
        include_generated: bool = False,
        offset: Offset = 0,
        limit: Limit = None,
        after: After = None,
        before: Before = None,
        camera: Camera = None,
        place: Place = None,
        sort: Sort = None,
        copies: Copies = "collapse",
    ) -> PageOut:
        """Text search (tags, dates, camera and place narrow it); without text, the images that pass the filters
        (tags alone: by the first tag's probability; else by capture time); nothing at all: the library, newest
        indexed first. Copies of a picture are one hit unless copies=all."""
        n = limit or page_size
        every = copies == "all"
        if not q.strip() and not tags and not any((after, before, camera, place, sort)):
            return page(lambda k: lib.newest(k=k, path_prefix=path_prefix, all_copies=every), offset, n, scored=False)

        def fetch(k: int) -> list[Hit]:
            with model_lock:
                return lib.query(
                    q,
                    k=k,
                    path_prefix=path_prefix,
                    tags=tags,
                    include_generated=include_generated,
                    files_in_text=False,
                    after=after,
                    before=before,
                    camera=camera,
                    place=place,
                    sort=sort,
                    all_copies=every,
                )

        return page(fetch, offset, n, scored=bool(q.strip() or (tags and sort in (None, "relevance"))))

    @api.post("/api/search/image", response_model=PageOut, responses=ERRORS, summary="Search by example image")
    def search_image(
        file: Annotated[UploadFile, File(description="the example image")],
        offset: Annotated[int, Form(ge=0, le=100_000)] = 0,
        limit: Annotated[int | None, Form(ge=1, le=MAX_PAGE)] = None,
        tag: Annotated[list[str], Form()] = [],  # noqa: B006
        after: Annotated[str | None, Form(max_length=40, description=f"taken in or after {DATE_HELP}")] = None,
        before: Annotated[str | None, Form(max_length=40, description=f"taken in or before {DATE_HELP}")] = None,
        camera: Annotated[str | None, Form(max_length=200)] = None,
        place: Annotated[str | None, Form(max_length=200)] = None,
        sort: Annotated[Literal["relevance", "date", "-date"] | None, Form()] = None,
        copies: Annotated[Literal["collapse", "all"], Form()] = "collapse",
    ) -> PageOut:
        with _upload(file) as path:

            def fetch(k: int) -> list[Hit]:
                with model_lock:
                    return lib.query(
                        images=[path],
                        k=k,
                        tags=tag,
                        after=after,
                        before=before,
                        camera=camera,
                        place=place,
                        sort=sort,
                        all_copies=copies == "all",
                    )

            return page(fetch, offset, limit or page_size)

    @api.get("/api/images/{image_id}", response_model=ImageOut, responses=ERRORS, summary="One image and its tags")
    def image(image_id: ImageId) -> ImageOut:
        return _image(lib, image_id)

    @api.get("/api/images/{image_id}/similar", response_model=PageOut, responses=ERRORS, summary="More like this")
    def similar(image_id: ImageId, offset: Offset = 0, limit: Limit = None, copies: Copies = "collapse") -> PageOut:
        def fetch(k: int) -> list[Hit]:
            with model_lock:
                return lib.similar(image_id, k=k, all_copies=copies == "all")

        return page(fetch, offset, limit or page_size)

    @api.get("/api/dupes", response_model=list[CopyGroupOut], responses=ERRORS, summary="Groups of duplicates")
    def dupes(
        path_prefix: str | None = None,
        similar: Annotated[bool, Query(description="also near-identical shots by CLIP distance")] = False,
    ) -> list[CopyGroupOut]:
        """Groups of copies with a file under path_prefix, the best copy first, largest groups first."""
        paths = [path_prefix] if path_prefix else []
        with model_lock:  # --similar reads every vector
            groups = lib.dupes(paths, similar=similar)
        return [CopyGroupOut(level=g.level, copies=[_copy(c) for c in g.copies]) for g in groups]

    @api.get(
        "/api/images/{image_id}/thumbnail",
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
        summary="Cached JPEG thumbnail",
    )
    def thumbnail(image_id: ImageId) -> FileResponse:
        return FileResponse(
            lib.thumbnail(image_id), media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"}
        )

    @api.get(
        "/api/images/{image_id}/file",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}}, **ERRORS},
        summary="The full image",
    )
    def original(image_id: ImageId) -> Response:
        path = Path(lib.image_info(image_id).path)
        media_type = BROWSER_TYPES.get(path.suffix.lower())
        if media_type is None:
            return FileResponse(lib.thumbnail(image_id, PREVIEW_SIDE), media_type="image/jpeg")
        return Response(lib.original(image_id), media_type=media_type, headers={"cache-control": "no-cache"})

    @api.post("/api/images/{image_id}/tags", response_model=ImageOut, responses=ERRORS, summary="Add or remove a tag")
    def set_tag(image_id: ImageId, change: TagChange) -> ImageOut:
        lib.set_tag(change.label, [lib.image_info(image_id).path], change.present)
        return _image(lib, image_id)

    @api.get("/api/facets", response_model=FacetsOut, summary="Cameras and places, most photographed first")
    def facets() -> FacetsOut:
        def values(field: str) -> list[ValueOut]:
            return [ValueOut(value=v, images=n) for v, n in lib.values(field)]

        return FacetsOut(cameras=values("camera"), places=values("place"))

    @api.get("/api/tags", response_model=list[TagCountOut], summary="Tags in use, most used first")
    def tags() -> list[TagCountOut]:
        return [TagCountOut(label=t.label, images=t.auto + t.hand, auto=t.auto, hand=t.hand) for t in lib.tags()]

    @api.post("/api/label", response_model=list[LabelOut], responses=ERRORS, summary="Zero-shot labels of an upload")
    def label(
        file: Annotated[UploadFile, File()],
        labels: Annotated[str, Form(max_length=20_000, description="'cat, dog'; empty: the vocabulary")] = "",
    ) -> list[LabelOut]:
        with _upload(file) as path, model_lock:
            result = lib.label([path], labels or None)[0]
        return [LabelOut(label=s.label, probability=s.probability, score=s.score) for s in result.labels]

    @api.get("/api/match", response_model=MatchOut, responses=ERRORS, summary="Does the library hold this?")
    def match(q: Annotated[str, Query(min_length=1, max_length=2000)]) -> MatchOut:
        with model_lock:
            v = lib.match(q, files_in_text=False, wait=False)
        return MatchOut(
            matched=v.matched, evidence=v.evidence, margin=v.margin, best_path=v.path, rival=v.rival, ready=v.ready
        )

    @api.post("/api/generate", status_code=202, response_model=JobStarted, responses=ERRORS, summary="Generate")
    def generate(body: GenerateIn) -> JobStarted:
        """Start generating an image for the prompt (VQGAN+CLIP); poll /api/jobs/{job} for progress."""
        if not body.prompt.strip():
            raise UsageError("generate: give a prompt")
        return JobStarted(job=jobs.start(body.prompt.strip(), body.steps, body.seed).id)

    @api.get("/api/jobs/{job_id}", response_model=JobOut, responses=ERRORS, summary="A generation's progress")
    def job(job_id: str) -> JobOut:
        return _job(_find_job(jobs, job_id))

    @api.get(
        "/api/jobs/{job_id}/image",
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
        summary="The generated image",
    )
    def job_image(job_id: str) -> FileResponse:
        found = _find_job(jobs, job_id)
        if found.result is None:
            raise NotFoundError("the job has no image (yet)")
        return FileResponse(found.result.path, media_type="image/png")

    return api


def _hit(hit: Hit, scored: bool) -> HitOut:
    return HitOut(
        taken=hit.taken,
        taken_source=hit.taken_source,
        camera=hit.camera,
        lens=hit.lens,
        place=hit.place,
        lat=hit.lat,
        lon=hit.lon,
        id=hit.id,
        path=hit.path,
        name=Path(hit.path).name,
        score=hit.score if scored else None,
        thumbnail=f"/api/images/{hit.id}/thumbnail",
        original=f"/api/images/{hit.id}/file",
        raw=hit.raw,
        copies=hit.copies,
    )


def _copy(c: Copy) -> CopyOut:
    return CopyOut(
        id=c.id,
        path=c.path,
        name=Path(c.path).name,
        width=c.width,
        height=c.height,
        bytes=c.bytes,
        reason=c.reason,
        thumbnail=f"/api/images/{c.id}/thumbnail",
    )


def _image(lib: Library, image_id: ImageId) -> ImageOut:
    info = lib.image(image_id)
    p = info.photo
    return ImageOut(
        taken=p.taken_iso,
        taken_source=p.source,
        camera=p.camera,
        lens=p.lens,
        place=p.place,
        lat=p.lat,
        lon=p.lon,
        photo_notes=p.notes,
        id=info.id,
        path=info.path,
        name=Path(info.path).name,
        width=info.width,
        height=info.height,
        bytes=info.bytes,
        indexed_at=info.indexed_at,
        generated=info.generated,
        tags=[TagOut(label=t.label, source=t.source, probability=t.probability) for t in info.tags],
        thumbnail=f"/api/images/{info.id}/thumbnail",
        original=f"/api/images/{info.id}/file",
        raw=info.raw,
        copies=[_copy(c) for c in info.copies],
    )


def _find_job(jobs: Jobs, job_id: str) -> Job:
    found = jobs.get(job_id)
    if found is None:
        raise NotFoundError(f"no generation job {job_id[:40]!r}")
    return found


def _job(job: Job) -> JobOut:
    result = None
    if job.result is not None:
        r = job.result
        image = f"/api/jobs/{job.id}/image"
        result = GeneratedOut(
            path=r.path,
            image_id=job.image_id,
            image=image,
            final_score=r.score,
            generator=r.generator,
            seconds=r.seconds,
        )
    return JobOut(
        job=job.id,
        prompt=job.prompt,
        state=job.state,
        phase=job.phase,
        done=job.done,
        total=job.total,
        score=job.score,
        error=job.error,
        notices=list(job.notices),
        result=result,
    )


@contextmanager
def _upload(file: UploadFile) -> Iterator[str]:
    """An uploaded image as a private temporary file (the Guard has already capped its size)."""
    with tempfile.TemporaryDirectory(prefix="imgsearch-upload-") as folder:
        path = Path(folder) / "upload"
        with path.open("wb") as out:
            while chunk := file.file.read(1 << 20):
                out.write(chunk)
        if path.stat().st_size == 0:
            raise UsageError("the uploaded file is empty")
        yield str(path)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: served from this fixed table, never from a path in a request."""
    folder = resources.files("imgsearch.web") / "static"
    out = {}
    for entry in folder.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix] + "; charset=utf-8")
    return out


def run(
    lib: Library,
    *,
    host: str | None = None,
    port: int | None = None,
    public: bool = False,
    on_ready: Callable[[str], None] = lambda url: None,
    on_notice: Callable[[str], None] = lambda text: None,
) -> None:
    """Serve until SIGINT or SIGTERM. on_ready gets the URL to open, with the token: the browser that opens it
    may change things (tags, generation, uploads); others reaching the server can only browse and search."""
    import secrets

    import uvicorn

    from imgsearch import remote

    s = lib.settings.serve
    host = host or s.host
    if not public and not _is_loopback(host):
        raise UsageError(f"serve: {host} is not a loopback address; pass --public to listen there (token required)")
    sock = _listen(host, s.port if port is None else port)
    bound = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    hosts = [*s.allowed_hosts, *(_own_names(host) if public else [])]
    app = create_app(lib, token=token, port=bound, public=public, hosts=hosts)
    lib.cache.rebuild_in_background = True  # a vector index that fell behind is rebuilt while queries go on
    local = f"http://{_url_host(host)}:{bound}/"
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
    server = uvicorn.Server(config)

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True  # a server not started yet never starts; a running one stops gracefully

    # While it runs, uvicorn handles SIGINT/SIGTERM itself and then raises the signal again: ours, harmless then.
    # Ours only sets a flag: raising from a handler could break whatever the main thread is doing at that moment.
    # Installed before the discovery file announces the server, so a signal from then on is always a clean stop.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        unannounced = remote.announce(
            lib.settings, remote.Server(local, token, os.getpid(), remote.fingerprint(lib.settings))
        )
        if unannounced:
            on_notice(f"imgsearch: {unannounced}")
        turn = cast(FastAPI, app.app).state.model_lock
        threading.Thread(target=_prepare, args=(lib, turn, on_notice), name="imgsearch-warm", daemon=True).start()
        on_ready(f"{local}?token={token}")  # the owner's way in: changes need the cookie this visit sets
        if not server.should_exit:
            server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        cast(FastAPI, app.app).state.jobs.close()
        remote.withdraw(lib.settings)
        sock.close()


def _prepare(lib: Library, turn: threading.RLock, on_notice: Callable[[str], None]) -> None:
    """Load the model and vector index before the first query asks, drop thumbnails of images gone, then embed
    the no-match test's contrasting prompts a chunk at a time, letting queries in between (until they are all
    embedded, /api/match answers "not ready" rather than make a search wait minutes)."""
    try:
        lib.prune_thumbnails()
        with turn:
            lib.warm()
        lib.prepare_match(turn=turn)
    except ImgSearchError as exc:  # the page still browses; queries will say the same
        on_notice(f"imgsearch: {exc}")


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # before the URL is printed: a client that reads it can connect at once
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"serve: cannot listen on {host}:{port} ({reason}); choose --port or serve.port") from None
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """How a local browser reaches a server listening on `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _own_names(host: str) -> list[str]:
    """Host names a --public server answers to by itself: the address it listens on, and the machine's name."""
    names = [socket.gethostname().lower()]
    if host not in ("", "0.0.0.0", "::", "[::]"):
        names.append(_url_host(host).lower())
    return names

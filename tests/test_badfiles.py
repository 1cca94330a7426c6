"""A corpus of bad and unusual files, generated here, indexed in one run with the tiny model.

Nothing crashes; every good file is indexed; every bad one is reported with its reason (and recorded,
when it got as far as being read); no file holds a reader for more than a few seconds; and decoding a
file that is large but under the limit costs about its native pixels in memory, not several times that.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import struct
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch import Library, load_settings
from imgsearch.types import IndexReport, Skipped, printable
from tests import tinyclip
from tests.conftest import tiny_overrides
from tests.imagefiles import (
    avif,
    dng,
    encode,
    gray16,
    heic,
    jxl,
    png_chunk,
    raw_png,
    rgb16_png,
    rgb16_tiff,
    widen,
    with_orientation,
)

INDEXED = "indexed"
GONE = "gone"  # deleted between the scan and the read: neither indexed nor reported
LIMIT = 178_956_970  # index.max_pixels by default (and Pillow's own bomb error threshold)
SLOWEST_FILE_SECONDS = 4.0  # measured 0.7-2.2 s on 2 cores; before the fix, 5-6 s (and 1.5 GB)
PEAK_GROWTH_MB = 350  # the largest file decodes to 170 MB of native pixels


def picture(w: int = 96, h: int = 64) -> Image.Image:
    """A red circle on white: something the tiny model knows."""
    return tinyclip.draw("red", "circle", random.Random(7)).resize((w, h))


def animated_gif() -> bytes:
    frames = [picture(), Image.new("RGB", (96, 64), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_with_transparency() -> bytes:
    image = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(image, "PNG", transparency=0)


def float_tiff() -> bytes:
    return encode(Image.fromarray(np.asarray(picture().convert("L"), np.float32) / 255), "TIFF")


def bilevel_just_under_the_limit() -> bytes:
    """A 30 KB PNG of 178.9 million pixels: legal, and a test of how much memory a decode may take."""
    w = 13_000
    image = Image.new("1", (w, LIMIT // w - 1), 1)
    image.paste(0, (w // 3, image.height // 3, 2 * w // 3, 2 * image.height // 3))
    return encode(image, "PNG")


def png_bomb() -> bytes:
    """The signature and IHDR of a 40-gigapixel PNG, with a token of data."""
    head = raw_png(200_000, 200_000, 1, 0, [b""])[:33]
    return head + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    screen = struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    return b"GIF89a" + screen + b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x00;"


def bad_crc_png() -> bytes:
    data = bytearray(encode(picture(), "PNG"))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    return bytes(data)


def zero_frame_gif() -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", 8, 8, 0, 0, 0) + b";"


def jpeg_cut(fraction: float) -> Callable[[], bytes]:
    def cut() -> bytes:
        data = encode(picture(320, 240), "JPEG", quality=90)
        return data[: int(len(data) * fraction)]

    return cut


def jpeg_header_only() -> bytes:
    data = encode(picture(), "JPEG")
    return data[: data.index(b"\xff\xda")]  # everything before the start of scan


def unknown_camera_raw() -> bytes:
    """A RAW from a camera LibRaw does not know: its maker's name and a compression scheme LibRaw has never seen
    (as a body newer than the LibRaw release writes them)."""
    data = bytearray(dng(picture(), make="Nobody"))
    at = data.index(struct.pack("<HHIH", 259, 3, 1, 1))  # Compression: 1 (none) becomes 65000
    data[at + 8 : at + 10] = struct.pack("<H", 65000)
    return bytes(data)


def raw_claiming_100mp(preview: bool) -> Callable[[], bytes]:
    """A DNG whose header claims 12288x8192 pixels (a 100-MP sensor) over 0.006 MP of data; with a preview, the
    camera's JPEG, which is all a model needs (the mosaic is never read)."""
    small = picture()
    return lambda: dng(small, preview=small.resize((768, 512)) if preview else None, size=(12_288, 8_192))


Maker = Callable[[Path], None]


def write(make: Callable[[], bytes]) -> Maker:
    return lambda path: path.write_bytes(make())


def save(make: Callable[[], Image.Image], fmt: str, **kw: object) -> Maker:
    return lambda path: path.write_bytes(encode(make(), fmt, **kw))


@dataclass(frozen=True)
class Case:
    name: str
    make: Maker
    expect: str  # INDEXED, GONE, or the start of the reason it is skipped with


CASES: list[Case] = [
    # good, if unusual
    Case("plain.jpg", save(picture, "JPEG"), INDEXED),
    Case("UPPER CASE.JPG", save(picture, "JPEG"), INDEXED),
    Case("progressive.jpg", save(picture, "JPEG", progressive=True), INDEXED),
    Case("animated.gif", write(animated_gif), INDEXED),
    Case("cmyk.jpg", save(lambda: picture().convert("CMYK"), "JPEG"), INDEXED),
    Case("gray16.png", write(lambda: gray16(picture(), "PNG")), INDEXED),
    Case("rgb16.png", write(lambda: rgb16_png(widen(picture()))), INDEXED),
    Case("gray16.tif", write(lambda: gray16(picture(), "TIFF")), INDEXED),
    Case("rgb16.tiff", write(lambda: rgb16_tiff(widen(picture()))), INDEXED),
    Case("float32.tif", write(float_tiff), INDEXED),
    Case("palette-transparent.png", write(palette_with_transparency), INDEXED),
    Case("rgba-half-transparent.png", save(lambda: picture().convert("RGBA"), "PNG"), INDEXED),
    Case("exif-rotated.jpg", write(lambda: with_orientation(picture(), 6)), INDEXED),
    Case("picture.webp", save(picture, "WEBP"), INDEXED),
    Case("picture.bmp", save(picture, "BMP"), INDEXED),
    Case("grayscale.png", save(lambda: picture().convert("L"), "PNG"), INDEXED),
    Case("bilevel.png", save(lambda: picture().convert("1"), "PNG"), INDEXED),
    Case("tall-1x10000.png", save(lambda: picture().resize((1, 10_000)), "PNG"), INDEXED),
    Case("wide-100000x1.png", save(lambda: picture().resize((100_000, 1)), "PNG"), INDEXED),
    Case("one-pixel.png", save(lambda: Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), INDEXED),
    Case("really-a-png.jpg", save(picture, "PNG"), INDEXED),
    Case("ünïcödé 名前 with spaces.jpg", save(picture, "JPEG"), INDEXED),
    Case("new\nline.png", save(picture, "PNG"), INDEXED),
    Case("broken-exif-orientation.jpg", save(picture, "JPEG", exif=b"Exif\0\0not a tiff header"), INDEXED),
    Case("huge-but-legal.png", write(bilevel_just_under_the_limit), INDEXED),
    Case("phone.heic", write(lambda: heic(picture())), INDEXED),
    Case("web.avif", write(lambda: avif(picture())), INDEXED),
    Case("picture.jxl", write(lambda: jxl(picture())), INDEXED),
    Case("mosaic.dng", write(lambda: dng(picture())), INDEXED),
    Case("with-preview.DNG", write(lambda: dng(picture(), preview=picture(320, 240))), INDEXED),
    Case("really-a-jpeg.nef", save(picture, "JPEG"), INDEXED),
    Case("claims-100mp-with-preview.dng", write(raw_claiming_100mp(preview=True)), INDEXED),
    # bad
    Case("empty.jpg", write(lambda: b""), "empty file"),
    Case("empty.png", write(lambda: b""), "empty file"),
    Case("text.jpg", write(lambda: b"just some text, not a JPEG\n"), "not an image"),
    Case("drawing-svg.png", write(lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>'), "not an image"),
    Case("noise.webp", write(lambda: np.random.default_rng(0).bytes(4096)), "not an image"),
    Case("cut-header.jpg", write(jpeg_header_only), "corrupt or truncated"),
    Case("cut-10pct.jpg", write(jpeg_cut(0.10)), "corrupt or truncated"),
    Case("cut-50pct.jpg", write(jpeg_cut(0.50)), "corrupt or truncated"),
    Case("cut-90pct.jpg", write(jpeg_cut(0.90)), "corrupt or truncated"),
    Case("cut-99pct.jpg", write(jpeg_cut(0.99)), "corrupt or truncated"),
    Case("cut.png", write(lambda: encode(picture(), "PNG")[:200]), "corrupt or truncated"),
    Case("cut.gif", write(lambda: animated_gif()[:300]), "corrupt or truncated"),
    Case("bad-crc.png", write(bad_crc_png), "corrupt or truncated"),
    Case("zero-frames.gif", write(zero_frame_gif), "corrupt or truncated"),
    Case("bomb.png", write(png_bomb), "decompression bomb"),
    Case("bomb.gif", write(gif_bomb), "decompression bomb"),
    Case("cut.heic", write(lambda: heic(picture(320, 240))[:2000]), "corrupt or truncated"),
    Case("cut.avif", write(lambda: avif(picture(320, 240))[:300]), "corrupt or truncated"),
    Case("cut.jxl", write(lambda: jxl(picture(320, 240))[:200]), "corrupt or truncated"),
    Case("text-file.dng", write(lambda: b"a text file, not a camera RAW\n"), "not an image"),
    Case("unknown-camera.nef", write(unknown_camera_raw), "camera RAW that LibRaw"),
    Case("cut-short.dng", write(lambda: dng(picture())[:3000]), "corrupt or truncated RAW"),
    Case("claims-100mp.dng", write(raw_claiming_100mp(preview=False)), "corrupt or truncated RAW"),
]


def build(folder: Path) -> dict[str, str]:
    """Write the corpus; {path: expected outcome}. Includes what cannot be written as plain bytes."""
    folder.mkdir(parents=True)
    expected = {}
    for case in CASES:
        path = folder / case.name
        case.make(path)
        expected[str(path)] = case.expect
    os.mkfifo(folder / "fifo.jpg")
    expected[str(folder / "fifo.jpg")] = "not a regular file"
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    expected[str(folder / "dangling.jpg")] = "broken symbolic link"
    (folder / "loop-a.jpg").symlink_to(folder / "loop-b.jpg")
    (folder / "loop-b.jpg").symlink_to(folder / "loop-a.jpg")
    expected[str(folder / "loop-a.jpg")] = expected[str(folder / "loop-b.jpg")] = "symbolic link loop"
    (folder / "folder.jpg").mkdir()  # a folder with an image name is walked like any folder
    save(picture, "PNG")(folder / "folder.jpg" / "inside.png")
    expected[str(folder / "folder.jpg" / "inside.png")] = INDEXED
    raw = os.fsencode(folder) + b"/latin1-caf\xe9.jpg"  # not UTF-8: cannot be stored as text
    with open(raw, "wb") as f:
        f.write(encode(picture(), "JPEG"))
    expected[os.fsdecode(raw)] = "file name is not valid UTF-8"
    save(picture, "JPEG")(folder / "deleted-mid-run.jpg")
    expected[str(folder / "deleted-mid-run.jpg")] = GONE
    return expected


@dataclass
class ReaderLog:
    """Seconds each file spent in the reader stage, and actions to take just before a file is read."""

    seconds: dict[str, float]
    before: dict[str, Callable[[], None]]


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> ReaderLog:
    from imgsearch.indexer import pipeline

    log = ReaderLog({}, {})
    original = pipeline.Reader.read

    def read(self: pipeline.Reader, item: tuple[pipeline.FileEntry, object]) -> pipeline.Read:
        path = item[0].path
        if path in log.before:
            log.before.pop(path)()
        started = time.perf_counter()
        try:
            return original(self, item)  # type: ignore[arg-type]
        finally:
            log.seconds[path] = time.perf_counter() - started

    monkeypatch.setattr(pipeline.Reader, "read", read)
    return log


class PeakMemory:
    """Peak resident memory growth of this process (Linux: VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self) -> None:
        self.growth_mb: float | None = None

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    @classmethod
    def available(cls) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    def __enter__(self) -> PeakMemory:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        self.base = self._status("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth_mb = (self._status("VmHWM") - self.base) / 1024


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "corpus"
    return folder, build(folder)


def outcomes(report: IndexReport, lib: Library, expected: dict[str, str]) -> dict[str, str]:
    """What became of each file: indexed, gone, or the reason it was skipped."""
    indexed = set(lib.store.paths_of(lib.store.all_vectors()[0].tolist()).values())
    reasons = {s.path: s.reason for s in report.skipped}
    result = {}
    for path in expected:
        if path in indexed:
            result[path] = INDEXED
        elif printable(path) in reasons:  # a name that is not UTF-8 is reported with \x escapes
            result[path] = reasons[printable(path)]
        else:
            result[path] = GONE
    return result


def test_corpus_indexes_without_a_crash(lib: Library, corpus: tuple[Path, dict[str, str]], log: ReaderLog) -> None:
    folder, expected = corpus
    assert len(expected) >= 45
    mid_run = folder / "deleted-mid-run.jpg"
    log.before[str(mid_run)] = mid_run.unlink
    memory = PeakMemory()
    if PeakMemory.available():
        with memory:
            report = lib.index([folder])
    else:
        report = lib.index([folder])

    assert not log.before and not mid_run.exists(), "the file was deleted between the walk and its read"
    got = outcomes(report, lib, expected)
    wrong = {
        os.path.basename(p): (want, got[p])
        for p, want in expected.items()
        if not (got[p] == want or (want not in (INDEXED, GONE) and got[p].startswith(want)))
    }
    assert wrong == {}, wrong
    assert report.embedded + report.copied == sum(v == INDEXED for v in expected.values())
    assert all("\n" not in s.reason for s in report.skipped)
    refused = {printable(p): r for p, r in got.items() if r not in (INDEXED, GONE)}  # by the walk or after reading
    refused_after_reading = {p: r for p, r in got.items() if p in log.seconds and r not in (INDEXED, GONE)}
    assert {s.path: s.reason for s in lib.skipped()} == refused

    slowest = max(log.seconds, key=log.seconds.__getitem__)
    print(
        f"\nslowest file: {os.path.basename(slowest)}, {log.seconds[slowest]:.2f} s; peak growth {memory.growth_mb} MB"
    )
    assert log.seconds[slowest] < SLOWEST_FILE_SECONDS, slowest
    if memory.growth_mb is not None:
        assert memory.growth_mb < PEAK_GROWTH_MB

    again = lib.index([folder])
    assert (again.embedded, again.known_bad) == (0, len(refused_after_reading))


def test_files_refused_by_the_walk_are_recorded(lib: Library, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    lib.index([tmp_path])
    assert {Path(s.path).name for s in lib.skipped()} == {"fifo.jpg", "dangling.jpg"}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can reach (pytest's temp folders are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="imgsearch-badfiles-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def in_child_as(uid: int, gid: int, work: Callable[[], None]) -> int:
    """Run `work` in a forked child under another user; its exit status (0: it returned)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            work()
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_unreadable_file_is_recorded(shared_dir: Path, tiny: tinyclip.TinyCheckpoint) -> None:
    """Run as a user that may not read the file (root may read anything: a child drops to 'nobody')."""
    pictures = shared_dir / "pictures"
    pictures.mkdir(mode=0o777)
    locked = pictures / "locked.jpg"
    locked.write_bytes(encode(picture(), "JPEG"))
    locked.chmod(0)
    settings = load_settings(shared_dir / "home", overrides=tiny_overrides(tiny), environ={})

    def index() -> None:
        with Library(settings) as library:  # the model is never loaded: nothing gets as far as decoding
            report = library.index([pictures])
        assert [s.reason for s in report.skipped] == ["cannot read file (Permission denied)"], report

    if os.geteuid() != 0:
        index()
    else:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no user 'nobody' to drop to")
        assert in_child_as(nobody.pw_uid, nobody.pw_gid, index) == 0
    with Library(settings) as library:
        assert library.skipped() == [Skipped(str(locked), "cannot read file (Permission denied)")]
        assert library.store.count() == 0


def test_every_reader_refuses_what_is_not_a_regular_file_without_waiting(tmp_path: Path) -> None:
    """A path the walk listed as a file can be a FIFO by the time it is read (replaced meanwhile): the pipeline's
    reader, `import`'s and the Ray readers read through one function, which refuses it at once (opening a FIFO
    for reading otherwise waits for a writer, forever)."""
    import contextlib
    import threading

    from imgsearch import images
    from imgsearch.config import IndexSettings
    from imgsearch.indexer import imported
    from imgsearch.indexer.pipeline import LazyEmbedder, Reader
    from imgsearch.indexer.scan import FileEntry, NameFilter

    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    reader = Reader(LazyEmbedder(lambda: pytest.fail("nothing is decoded")), IndexSettings(), lambda digest: [])
    results: dict[str, object] = {}
    calls = {
        "pipeline": lambda: reader.read((FileEntry(str(fifo), 0, 0), None)).error,
        "import": lambda: imported.inspect(str(fifo), False, NameFilter(["jpg"], [])).error,
    }
    threads = [
        threading.Thread(target=lambda n=n, f=f: results.update({n: f()}), daemon=True) for n, f in calls.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        assert results == {"pipeline": "not a regular file", "import": "not a regular file"}
        with pytest.raises(images.ImageDecodeError, match="^not a regular file$"):
            images.read_file(str(fifo))
    finally:  # let a reader still waiting on the FIFO go (none: no reader, ENXIO)
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

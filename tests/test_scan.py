"""Walking folders: symlink loops, FIFOs, broken links, excluded names, unreadable folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgsearch.indexer.scan import Scanner


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def scan(root: Path, **kw: object) -> tuple[list[str], list[tuple[str, str]]]:
    skipped: list[tuple[str, str]] = []
    scanner = Scanner(["jpg", "png"], [".*", "*.part"], on_skip=lambda p, r: skipped.append((p, r)), **kw)  # type: ignore[arg-type]
    return sorted(e.path for e in scanner.scan(str(root))), skipped


def test_walk_finds_images_and_survives_odd_entries(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.JPG")
    b = touch(tmp_path / "sub" / "deep" / "b.png")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden" / "c.jpg")
    touch(tmp_path / "download.jpg.part")
    (tmp_path / "folder.jpg").mkdir()
    inside = touch(tmp_path / "folder.jpg" / "d.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "sub" / "deep" / "loop").symlink_to(tmp_path / "sub")
    (tmp_path / "self").symlink_to(tmp_path)
    found, skipped = scan(tmp_path)
    assert found == sorted(map(str, [a, b, inside]))
    reasons = dict(skipped)
    assert reasons[str(tmp_path / "pipe.jpg")] == "not a regular file"
    assert reasons[str(tmp_path / "dangling.jpg")] == "broken symbolic link"


def test_symlinked_folder_is_followed_once(tmp_path: Path) -> None:
    real = touch(tmp_path / "elsewhere" / "x.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(real.parent)
    found, _ = scan(root)
    assert found == [str(root / "link" / "x.jpg")]
    assert scan(root, follow_symlinks=False)[0] == []


def test_single_file_root(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.jpg")
    assert scan(a)[0] == [str(a)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_folder_is_reported_and_walk_continues(tmp_path: Path) -> None:
    touch(tmp_path / "locked" / "x.jpg")
    ok = touch(tmp_path / "open" / "y.jpg")
    (tmp_path / "locked").chmod(0)
    try:
        found, skipped = scan(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert found == [str(ok)]
    assert skipped and "not readable" in skipped[0][1]


def test_link_loops_and_names_that_are_not_utf8_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    latin1 = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # SQLite stores text, and this name is not UTF-8
    with open(latin1, "wb") as f:
        f.write(b"x")
    ok = touch(tmp_path / "café.jpg")
    found, skipped = scan(tmp_path)
    assert found == [str(ok)]
    assert dict(skipped) == {
        str(tmp_path / "a.jpg"): "symbolic link loop",
        str(tmp_path / "b.jpg"): "symbolic link loop",
        os.fsdecode(latin1): "file name is not valid UTF-8 (rename it to index it)",
    }
    assert scan(Path(os.fsdecode(latin1)))[1] == [
        (os.fsdecode(latin1), "file name is not valid UTF-8 (rename it to index it)")
    ]

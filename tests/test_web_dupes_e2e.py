"""The page's duplicates, end to end in Chromium: a picture with copies shows once with "+N", its lightbox lists
the copies (each opens in place), and the Duplicates view lists the groups, best copy first. A server of its own
(test_web_e2e's library has no copies, and its tests count every file)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests import tinyclip
from tests.conftest import SAMPLES
from tests.imagefiles import encode
from tests.test_web_e2e import Server, Tab, _cli, _env, _new_tab, browser, expect, serving

__all__ = ["browser"]  # the module's browser fixture, shared

PICTURES = ["astronaut", "rocket", "clock", "coffee-cup", "grass"]


@pytest.fixture(scope="module")
def server(tiny: tinyclip.TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("web-dupes")
    folder = root / "pictures"
    (folder / "backup").mkdir(parents=True)
    for name in PICTURES:
        shutil.copy(SAMPLES / f"{name}.jpg", folder / f"{name}.jpg")
    astronaut = Image.open(SAMPLES / "astronaut.jpg")
    (folder / "astronaut-half.jpg").write_bytes(encode(astronaut.resize((256, 256)), "JPEG", quality=90))
    (folder / "astronaut-small.png").write_bytes(encode(astronaut.resize((128, 128)), "PNG"))
    shutil.copy(SAMPLES / "rocket.jpg", folder / "backup" / "rocket.jpg")
    env = _env(root / "home", tiny)
    _cli(["index", str(folder), "-q"], env, root)
    with serving(env, root, folder, folder) as server:
        yield server


@pytest.fixture
def tab(browser: Any, server: Server) -> Iterator[Tab]:
    server.check_alive()
    with _new_tab(browser, server) as opened:
        yield opened


def test_copies_show_once_open_from_the_lightbox_and_group_in_their_view(tab: Tab, server: Server) -> None:
    page = tab.open("/")
    assert server.images == len(PICTURES) + 3
    cells = page.get_by_test_id("result")
    expect(cells).to_have_count(len(PICTURES))
    paths = cells.evaluate_all("cells => cells.map(c => c.dataset.path)")
    assert sorted(Path(p).name for p in paths) == sorted(f"{n}.jpg" for n in PICTURES)
    astronaut = page.locator(f'[data-testid=result][data-path="{server.folder / "astronaut.jpg"}"]')
    expect(astronaut.get_by_test_id("result-copies")).to_have_text("+2")
    expect(page.locator("[data-testid=result-copies]")).to_have_count(2)  # the astronaut and the rocket

    astronaut.click()
    copies = page.get_by_test_id("lightbox-copy")
    expect(copies).to_have_count(2)
    expect(copies.first).to_contain_text("astronaut-half.jpg")
    expect(copies.first).to_contain_text("smaller: 256x256 vs 512x512")
    copies.first.click()
    expect(page.get_by_test_id("lightbox-path")).to_have_text(str(server.folder / "astronaut-half.jpg"))
    expect(page.get_by_test_id("lightbox-meta")).to_contain_text("256 × 256")
    expect(copies).to_have_count(2)  # from the half-size copy: the original and the small one
    expect(copies.first).to_contain_text("astronaut.jpg")
    page.get_by_test_id("lightbox-close").click()

    page.get_by_test_id("dupes-button").click()
    expect(page.get_by_test_id("dupe-group")).to_have_count(2)
    expect(page.get_by_test_id("context")).to_contain_text("Duplicates")
    verdicts = page.get_by_test_id("dupe-verdict").all_text_contents()
    assert verdicts.count("best copy") == 2 and len(verdicts) == 5
    assert [Path(p).name for p in page.get_by_test_id("result").evaluate_all("c => c.map(x => x.dataset.path)")][
        :3
    ] == ["astronaut.jpg", "astronaut-half.jpg", "astronaut-small.png"]
    assert not tab.errors and not tab.foreign and not tab.failed, (tab.errors, tab.foreign, tab.failed)

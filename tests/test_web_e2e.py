"""The page of `imgsearch serve`, end to end: a real server process on the tiny model, driven by Chromium.

One server and one browser for the module. The server indexes a folder of coloured shapes, so what
the page shows can be checked for meaning (a search for "a red circle" shows red circles first),
not only for presence. Nothing here reaches the network; the browser is Debian's Chromium, never
one Playwright downloads.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from imgsearch import places
from tests import photofiles, tinyclip
from tests.conftest import draw_shapes, tiny_env
from tests.photofiles import LISBON, SYDNEY, TOKYO, Shot

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    if os.environ.get("CI"):  # .ci/run installs it: in CI these tests must run, never quietly skip
        raise RuntimeError(f"no Chromium at {CHROMIUM}: .ci/run should have installed it (apt-get install chromium)")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PER_CLASS = 3
FAVOURITES = ("blue-square-1.png", "green-triangle-0.png")
SCORE = re.compile(r"^-?\d+\.\d{3}$")
SERVE = [sys.executable, "-m", "imgsearch", "serve", "--port", "0"]
# Photos with EXIF beside the drawings, named as the drawings are (their kind is what they show).
PHOTOS = {
    "blue-circle-7.jpg": Shot("2019:07:14 10:00:00", "+01:00", "Canon", "Canon EOS 5D Mark II", gps=LISBON),
    "green-square-7.jpg": Shot("2023:06:01 00:30:00", "+09:00", "Apple", "iPhone 12", gps=TOKYO),
    "red-square-7.jpg": Shot("2021:12:25 09:00:00", make="NIKON CORPORATION", model="NIKON D750", gps=SYDNEY),
}


@dataclass
class Server:
    url: str  # the origin, no trailing slash
    folder: Path
    examples: Path  # pictures of every class that are not in the library
    images: int
    output: list[str]
    proc: subprocess.Popen[str]
    login: str = ""  # the URL the server printed: opening it makes this browser the owner (it may change things)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"imgsearch serve exited ({self.proc.returncode}):\n" + "".join(self.output))


@dataclass
class Tab:
    """A page with a journal of what went wrong: console errors, uncaught exceptions, foreign or failed requests."""

    page: Any
    origin: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def open(self, path: str = "/") -> Any:
        self.page.goto(self.origin + path)
        settle(self.page)
        return self.page


# ---- the server ----------------------------------------------------------------------------


def _env(home: Path, tiny: tinyclip.TinyCheckpoint) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    return clean | {"IMGSEARCH_HOME": str(home), **tiny_env(tiny)}


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imgsearch", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"imgsearch {' '.join(args)}: {done.stdout}{done.stderr}"


def _read_url(proc: subprocess.Popen[str], output: list[str], timeout: float) -> str:
    """The first http:// URL the server prints; its output is drained for as long as it runs."""
    found = threading.Event()
    url: list[str] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            match = re.search(r"http://\S+", line)
            if match and not url:
                url.append(match.group(0))
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    found.wait(timeout)
    if not url:
        proc.kill()
        pytest.fail("imgsearch serve printed no URL:\n" + "".join(output))
    return url[0]


def _wait_ready(url: str, proc: subprocess.Popen[str], output: list[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("imgsearch serve exited:\n" + "".join(output))
        try:
            with urllib.request.urlopen(url + "/api/status", timeout=5) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.1)
    pytest.fail("imgsearch serve never answered /api/status:\n" + "".join(output))


def _wait_match_ready(url: str, output: list[str], timeout: float = 60) -> None:
    """The server embeds the no-match test's contrast prompts in the background after it starts; until then
    /api/match answers "not ready" (and the page shows no banner)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/api/match?q=warm", timeout=5) as response:
            if json.load(response)["ready"]:
                return
        time.sleep(0.1)
    pytest.fail("imgsearch serve never got its contrast prompts ready:\n" + "".join(output))


@pytest.fixture(scope="module")
def server(tiny: tinyclip.TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("web")
    folder = root / "pictures"
    draw_shapes(folder, per_class=PER_CLASS)
    examples = root / "examples"
    draw_shapes(examples, per_class=1, seed=99)
    for i, (name, shot) in enumerate(PHOTOS.items()):
        color, shape = name.split("-")[:2]
        photofiles.write(root / "photos" / name, shot, photofiles.picture(50 + i, color, shape))
    env = _env(root / "home", tiny)
    _cli(["index", str(folder), str(root / "photos"), "-q"], env, root)
    vocabulary = root / "vocabulary.txt"
    vocabulary.write_text("\n".join([*tinyclip.COLORS, *tinyclip.SHAPES]) + "\n")
    _cli(["tag", "--vocabulary", str(vocabulary), "-q"], env, root)
    _cli(["tag", "add", "favourite", *(str(folder / name) for name in FAVOURITES)], env, root)
    # The no-match test weighs a query against contrasting labels: those this model knows.
    contrast = root / "contrast.txt"
    contrast.write_text("\n".join(tinyclip.CONCEPTS) + "\n")
    env |= {"IMGSEARCH_GENERATE__CONTRAST_VOCABULARY": str(contrast)}
    with serving(env, root, folder, examples) as server:
        _wait_match_ready(server.url, server.output)
        yield server


@contextmanager
def serving(env: dict[str, str], root: Path, folder: Path, examples: Path) -> Iterator[Server]:
    """`imgsearch serve --port 0` in root, answering, until the block ends."""
    proc = subprocess.Popen(
        SERVE,
        env=env | {"PYTHONUNBUFFERED": "1"},
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        login = _read_url(proc, output, timeout=60)  # the owner's URL, with the token
        url = "{0.scheme}://{0.netloc}".format(urlsplit(login))
        status = _wait_ready(url, proc, output)
        yield Server(
            url=url, folder=folder, examples=examples, images=status["images"], output=output, proc=proc, login=login
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def _new_tab(browser: Any, server: Server, owner: bool = True, **options: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport=options.pop("viewport", {"width": 1280, "height": 860}), **options)
    context.set_default_timeout(15_000)
    page = context.new_page()
    tab = Tab(page=page, origin=server.url)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(f"uncaught: {e}"))

    def on_request(request: Any) -> None:
        url = urlsplit(request.url)
        if url.scheme not in ("data", "blob") and f"{url.scheme}://{url.netloc}" != server.url:
            tab.foreign.append(request.url)

    page.on("request", on_request)
    if owner and server.login:
        page.goto(server.login)  # the printed URL sets the session cookie: this browser may change things
    # ERR_ABORTED is the page's own doing (an image replaced while loading, a superseded search), not a fault.
    page.on("requestfailed", lambda r: None if "ERR_ABORTED" in (r.failure or "") else tab.failed.append(r.url))
    page.on("response", lambda r: tab.failed.append(f"{r.url}: {r.status}") if r.status >= 400 else None)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def tab(browser: Any, server: Server) -> Iterator[Tab]:
    server.check_alive()
    with _new_tab(browser, server) as opened:
        yield opened


def settle(page: Any) -> None:
    """Wait until the grid has what the last action asked for (the page marks it busy while fetching)."""
    expect(page.get_by_test_id("grid")).to_have_attribute("aria-busy", "false", timeout=15_000)


def results(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        "[data-testid=result]",
        """cells => cells.map(c => ({
            id: Number(c.dataset.id), path: c.dataset.path,
            score: c.querySelector('[data-testid=result-score]')?.textContent ?? null}))""",
    )


def kind(path: str) -> str:
    """'red-circle' for .../red-circle-2.png."""
    return Path(path).stem.rsplit("-", 1)[0]


def search(page: Any, text: str) -> None:
    box = page.get_by_test_id("search-input")
    box.fill(text)
    box.press("Enter")
    settle(page)


# ---- the tests -----------------------------------------------------------------------------


def test_text_search_shows_scored_thumbnails_best_first(tab: Tab, server: Server) -> None:
    page = tab.open("/")
    expect(page.get_by_test_id("status")).to_contain_text(f"{server.images} images")
    expect(page.get_by_test_id("status")).to_contain_text("imgsearch-tiny-test")
    with page.expect_response(lambda r: "/api/match?" in r.url) as verdict:
        search(page, "a red circle")
    hits = results(page)
    assert [kind(h["path"]) for h in hits[:PER_CLASS]] == ["red-circle"] * PER_CLASS, hits[:6]
    assert verdict.value.json()["matched"]  # the library has red circles: no offer to generate one
    expect(page.get_by_test_id("generate-banner")).to_be_hidden()
    scores = [h["score"] for h in hits]
    assert all(s and SCORE.match(s) for s in scores), scores
    assert [float(s) for s in scores] == sorted((float(s) for s in scores), reverse=True)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=result] img')].slice(0, 6)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    expect(page.get_by_test_id("context")).to_have_text("Results for “a red circle”")
    assert parse_qs(urlsplit(page.url).query) == {"q": ["a red circle"]}  # a reload repeats the search
    page.get_by_test_id("result").first.hover()
    page.screenshot(path="/tmp/imgsearch-ui.png", full_page=True)


def test_lightbox_shows_the_file_and_more_like_this_finds_its_kind(tab: Tab, server: Server) -> None:
    page = tab.open("/")
    cells = page.get_by_test_id("result")
    assert cells.count() == server.images  # one page holds the library
    cells.nth(1).focus()
    page.keyboard.press("Enter")
    lightbox = page.get_by_test_id("lightbox")
    expect(lightbox).to_be_visible()
    page.keyboard.press("Escape")
    expect(lightbox).to_be_hidden()

    target = page.locator("[data-testid=result][data-path$='/red-triangle-1.png']")
    path, image_id = target.get_attribute("data-path"), int(target.get_attribute("data-id"))
    target.click()
    expect(lightbox).to_be_visible()
    expect(page.get_by_test_id("lightbox-path")).to_have_text(path)
    expect(page.get_by_test_id("lightbox-meta")).to_contain_text("×")  # width × height, from /api/images/{id}
    colour = kind(path).split("-")[0]
    expect(lightbox.locator(f"[data-testid=lightbox-tag][data-source=auto][data-label={colour}]")).to_be_visible()
    page.wait_for_function("() => document.querySelector('[data-testid=lightbox-image]').naturalWidth > 0")
    page.screenshot(path="/tmp/imgsearch-lightbox.png")

    page.get_by_test_id("more-like-this").click()
    expect(lightbox).to_be_hidden()
    settle(page)
    expect(page.get_by_test_id("context")).to_have_text(re.compile(rf"Like {re.escape(Path(path).name)}"))
    hits = results(page)
    assert [kind(h["path"]) for h in hits[: PER_CLASS - 1]] == ["red-triangle"] * (PER_CLASS - 1), hits[:4]
    assert image_id not in [h["id"] for h in hits]


def test_tag_chip_filters_and_combines_with_the_query(tab: Tab, server: Server) -> None:
    page = tab.open("/")
    library = [h["id"] for h in results(page)]
    chip = page.locator("[data-testid=tag-chip][data-label=favourite]")
    expect(chip).to_contain_text(str(len(FAVOURITES)))
    chip.click()
    settle(page)
    assert sorted(Path(h["path"]).name for h in results(page)) == sorted(FAVOURITES)
    expect(chip).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("active-filter")).to_have_text("favourite×")
    assert parse_qs(urlsplit(page.url).query) == {"tag": ["favourite"]}

    search(page, "a blue square")  # the filter stays and narrows the text search
    names = [Path(h["path"]).name for h in results(page)]
    assert names[0] == "blue-square-1.png" and set(names) <= set(FAVOURITES), names

    search(page, "")
    page.get_by_test_id("active-filter").click()
    settle(page)
    expect(page.get_by_test_id("active-filter")).to_have_count(0)
    assert [h["id"] for h in results(page)] == library


def test_tags_are_added_and_removed_in_the_lightbox_as_plain_text(tab: Tab, server: Server) -> None:
    page = tab.open("/")
    page.get_by_test_id("result").first.click()
    lightbox = page.get_by_test_id("lightbox")
    box = page.get_by_test_id("tag-input")
    box.fill("a, b")  # refused by the server: its message shows inline
    box.press("Enter")
    expect(page.get_by_test_id("lightbox-error")).to_contain_text("not a usable tag name")

    label = "<img src=x onerror=window.pwned=1>"
    box.fill(label)
    box.press("Enter")
    added = lightbox.locator(f"[data-testid=lightbox-tag][data-label='{label}']")
    expect(added).to_have_attribute("data-source", "hand")
    expect(added).to_contain_text(label)  # shown as text, never parsed as markup
    chip = page.locator(f"[data-testid=tag-chip][data-label='{label}']")
    expect(chip).to_contain_text("1")
    expect(page.get_by_test_id("lightbox-error")).to_be_hidden()
    assert page.locator("[data-testid=lightbox-tags] img, [data-testid=tag-list] img").count() == 0
    assert page.evaluate("window.pwned") is None

    added.get_by_test_id("remove-tag").click()
    expect(added).to_have_count(0)
    expect(chip).to_have_count(0)


def test_search_by_example_image_picked_or_dropped(tab: Tab, server: Server) -> None:
    page = tab.open("/")
    example = server.examples / "yellow-triangle-0.png"  # drawn apart from the library, not in it
    page.get_by_test_id("image-input").set_input_files(example)
    settle(page)
    expect(page.get_by_test_id("context")).to_contain_text("Like yellow-triangle-0.png")
    hits = results(page)
    assert [kind(h["path"]) for h in hits[:PER_CLASS]] == ["yellow-triangle"] * PER_CLASS, hits[:6]
    assert all(h["score"] and SCORE.match(h["score"]) for h in hits)

    dropped = server.examples / "green-triangle-0.png"
    transfer = page.evaluate_handle(
        """([data, name]) => {
            const transfer = new DataTransfer();
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
            return transfer;
        }""",
        [base64.b64encode(dropped.read_bytes()).decode(), dropped.name],
    )
    page.dispatch_event("body", "dragenter", {"dataTransfer": transfer})
    expect(page.get_by_test_id("drop-overlay")).to_be_visible()
    page.dispatch_event("body", "drop", {"dataTransfer": transfer})
    expect(page.get_by_test_id("drop-overlay")).to_be_hidden()
    settle(page)
    expect(page.get_by_test_id("context")).to_contain_text("Like green-triangle-0.png")
    hits = results(page)
    assert [kind(h["path"]) for h in hits[:PER_CLASS]] == ["green-triangle"] * PER_CLASS, hits[:6]


def _paged(page: Any) -> list[tuple[int, list[int]]]:
    """(offset, ids) of every /api/search answer the page receives."""
    pages: list[tuple[int, list[int]]] = []

    def on_response(response: Any) -> None:
        if urlsplit(response.url).path == "/api/search":
            body = response.json()
            pages.append((body["offset"], [h["id"] for h in body["hits"]]))

    page.on("response", on_response)
    return pages


def test_infinite_scroll_loads_every_page_once(tab: Tab, server: Server) -> None:
    page = tab.page
    page.set_viewport_size({"width": 1000, "height": 500})
    pages = _paged(page)
    tab.open("/?limit=5")
    first = len(results(page))
    assert 5 <= first < server.images  # the visible part, and a little more, not the whole library
    for _ in range(20):
        if len(results(page)) == server.images:
            break
        page.mouse.wheel(0, 3000)
        page.wait_for_timeout(150)
        settle(page)
    ids = [h["id"] for h in results(page)]
    assert len(ids) == server.images == len(set(ids))
    assert sorted(offset for offset, _ in pages) == list(range(0, server.images, 5))  # each page asked for once
    served = [i for _, hits in sorted(pages) for i in hits]
    assert served == ids and len(set(served)) == len(served)  # the server's pages do not overlap either
    expect(page.get_by_test_id("load-more")).to_be_hidden()


def test_load_more_button_pages_without_intersection_observer(browser: Any, server: Server) -> None:
    with _new_tab(browser, server) as tab:
        page = tab.page
        page.add_init_script("delete window.IntersectionObserver")
        tab.open("/?limit=7")
        assert len(results(page)) == 7
        clicks = 0
        while page.get_by_test_id("load-more").is_visible():
            page.get_by_test_id("load-more").click()
            settle(page)
            clicks += 1
        ids = [h["id"] for h in results(page)]
        assert len(ids) == len(set(ids)) == server.images
        assert clicks == -(-server.images // 7) - 1
        with urllib.request.urlopen(f"{server.url}/api/search?limit={server.images}") as response:
            assert ids == [h["id"] for h in json.load(response)["hits"]]  # the same order as one big page


def test_generate_banner_runs_a_job_and_shows_the_result(tab: Tab, server: Server) -> None:
    page = tab.page
    posts: list[Any] = []
    polls: list[str] = []
    refuse = [True]
    thumbnail: list[str] = []  # a real image's thumbnail stands in for the generated picture

    def status(route: Any) -> None:
        answer = route.fetch()
        route.fulfill(response=answer, json=answer.json() | {"generation_available": True})

    def generate(route: Any) -> None:
        posts.append(route.request)
        if refuse[0]:
            route.fulfill(status=409, json={"detail": "a generation is already running"})
        else:
            route.fulfill(status=202, json={"job": "j1"})

    def job(route: Any) -> None:
        polls.append(route.request.url)
        running = {"state": "running", "phase": "optimising", "done": 3, "total": 10, "score": 0.2141, "result": None}
        done = {
            "state": "done",
            "phase": "done",
            "done": 10,
            "total": 10,
            "score": 0.3012,
            "result": {
                "path": "/home/u/generated/a purple elephant.png",
                "image_id": None,
                "image": thumbnail[0],
                "final_score": 0.3012,
                "generator": "fourier",
                "seconds": 4.2,
            },
        }
        body: dict[str, Any] = {"job": "j1", "prompt": "a purple elephant", "error": None, "notices": []}
        route.fulfill(json=body | (running if len(polls) <= 3 else done))

    page.route("**/api/status", status)
    page.route("**/api/match?*", lambda route: route.fulfill(json={"matched": False, "evidence": 0.1, "margin": 0.0}))
    page.route("**/api/generate", generate)
    page.route("**/api/jobs/*", job)
    tab.open("/")
    thumbnail.append(page.get_by_test_id("result").first.locator("img").get_attribute("src"))
    search(page, "a purple elephant")
    banner = page.get_by_test_id("generate-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Nothing in your library looks like “a purple elephant”")

    page.get_by_test_id("generate-button").click()  # refused first: the detail shows inline
    expect(page.get_by_test_id("generate-error")).to_have_text("a generation is already running")
    refuse[0] = False
    page.get_by_test_id("generate-button").click()
    progress = page.get_by_test_id("generate-progress")
    expect(progress).to_have_attribute("value", "3")
    expect(progress).to_have_attribute("max", "10")
    expect(page.get_by_test_id("generate-phase")).to_have_text("optimising · 3/10 · CLIP 0.214")
    expect(page.get_by_test_id("generate-error")).to_be_hidden()

    result = page.get_by_test_id("generate-result")
    expect(result).to_be_visible()
    expect(page.get_by_test_id("generate-caption")).to_contain_text("CLIP score 0.301")
    page.wait_for_function("() => document.querySelector('[data-testid=generate-image]').naturalWidth > 0")
    expect(page.get_by_test_id("generate-job")).to_be_hidden()
    token = page.get_attribute("meta[name=imgsearch-token]", "content")
    assert token and token != "{{TOKEN}}"
    assert [p.headers.get("x-imgsearch-token") for p in posts] == [token, token]
    assert posts[-1].post_data_json == {"prompt": "a purple elephant"}
    assert len(polls) == 4  # polled until done, then stopped


def test_a_session_stays_local_and_error_free(tab: Tab, server: Server) -> None:
    page = tab.open("/")
    search(page, "a green square")
    page.get_by_test_id("result").first.click()
    page.get_by_test_id("more-like-this").click()
    settle(page)
    page.locator("[data-testid=tag-chip][data-label=favourite]").click()
    settle(page)
    page.get_by_test_id("active-filter").click()
    settle(page)
    page.get_by_test_id("image-input").set_input_files(server.examples / "red-square-0.png")
    settle(page)
    page.get_by_test_id("result").nth(2).click()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_test_id("lightbox-path")).to_have_text(results(page)[3]["path"])
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)  # let late image loads finish
    assert tab.errors == []
    assert tab.foreign == []
    assert tab.failed == []


def test_dates_cameras_places_and_sorting_by_date(tab: Tab, server: Server) -> None:
    page = tab.open("/")
    name = lambda h: Path(h["path"]).name  # noqa: E731
    expect(page.get_by_test_id("camera-chip")).to_have_count(len(PHOTOS))
    page.locator("[data-testid=camera-chip][data-value='Canon EOS 5D Mark II']").click()
    settle(page)
    assert [name(h) for h in results(page)] == ["blue-circle-7.jpg"]
    assert parse_qs(urlsplit(page.url).query) == {"camera": ["Canon EOS 5D Mark II"]}
    page.get_by_test_id("camera-filter").click()  # the chip above the grid takes the filter away
    settle(page)
    assert len(results(page)) == server.images

    page.get_by_test_id("date-after").fill("2019")
    page.get_by_test_id("date-before").fill("2021-12")
    page.get_by_test_id("date-apply").click()
    settle(page)
    assert [name(h) for h in results(page)] == ["red-square-7.jpg", "blue-circle-7.jpg"], "newest taken first"
    expect(page.get_by_test_id("context")).to_have_text("Photos · newest taken first")
    expect(page.get_by_test_id("date-filter")).to_contain_text("2019 – 2021-12")
    toggle = page.get_by_test_id("sort-toggle")
    toggle.click()
    settle(page)
    expect(toggle).to_have_attribute("aria-pressed", "true")
    toggle.click()
    settle(page)
    expect(toggle).to_have_text("Oldest first")
    assert [name(h) for h in results(page)] == ["blue-circle-7.jpg", "red-square-7.jpg"]
    search(page, "a blue circle")  # a text query inside the date range, its hits in date order
    assert [name(h) for h in results(page)] == ["blue-circle-7.jpg", "red-square-7.jpg"]
    assert all(h["score"] for h in results(page))
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"q": ["a blue circle"], "after": ["2019"], "before": ["2021-12"], "sort": ["date"]}

    page.locator("[data-testid=result][data-path$='/blue-circle-7.jpg']").click()
    expect(page.get_by_test_id("lightbox-taken")).to_have_text("2019-07-14 10:00 (UTC+01:00) · from the camera")
    expect(page.get_by_test_id("lightbox-camera")).to_have_text("Canon EOS 5D Mark II")
    expect(page.get_by_test_id("lightbox-place")).to_have_text(
        "Lisbon, Portugal" if places.available() else "38.7223, -9.1393"
    )
    page.screenshot(path="/tmp/imgsearch-photo-lightbox.png")
    page.keyboard.press("Escape")
    if places.available():
        page.get_by_test_id("date-filter").click()
        settle(page)
        page.locator("[data-testid=place-chip][data-value='Tokyo, Japan']").click()
        settle(page)
        assert [name(h) for h in results(page)][:1] == ["green-square-7.jpg"]
    page.screenshot(path="/tmp/imgsearch-dates.png", full_page=True)
    assert not tab.errors and not tab.failed and not tab.foreign, (tab.errors, tab.failed, tab.foreign)

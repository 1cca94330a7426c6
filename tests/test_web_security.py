"""`imgsearch serve` under attack: path traversal, foreign Host headers, cross-site changes, huge bodies.

One real server process for the module (`imgsearch serve --port 0`), asked over a bare TCP socket
(tests.rawhttp): client libraries normalise dot segments and percent-escapes and write the Host
header themselves, which would hide exactly what is tested here. Next to the indexed folder, and
outside it, lie a text file and a PNG holding a random marker; no answer may ever contain it (nor
/etc/passwd, nor the session token, nor a CORS grant). The --public mode is checked in process
through FastAPI's TestClient.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imgsearch import Library, load_settings
from imgsearch.web.guard import COOKIE
from imgsearch.web.server import create_app
from tests import rawhttp, tinyclip
from tests.conftest import draw_shapes, tiny_env, tiny_overrides

MARKER = f"imgsearch-secret-{uuid.uuid4().hex}"
MAX_UPLOAD_MB = 0.05  # the server's body limit here: 52428 bytes
LIMIT = int(MAX_UPLOAD_MB * 2**20)
TAG_BODY = b'{"label": "pwned", "present": true}'
PASSWD = b"root:x:0:0"


@dataclass
class Site:
    port: int
    token: str
    home: Path
    folder: Path  # the indexed folder
    secret_txt: Path  # outside the folder
    secret_png: Path  # outside the folder
    victim: Path  # an indexed image, for the symlink swap
    image_id: int  # an indexed PNG
    victim_id: int
    images: int  # how many are indexed
    output: list[str]

    def fill(self, text: str) -> str:
        """Put this server's port, token, an image id and the secret files' paths into a request."""
        for key, value in {
            "<port>": str(self.port),
            "<token>": self.token,
            "<id>": str(self.image_id),
            "<secret>": quote(str(self.secret_txt)),
            "<secret-png>": quote(str(self.secret_png)),
            "<root>": quote(str(self.secret_txt.parent)),
        }.items():
            text = text.replace(key, value)
        return text

    def send(self, head: str, body: bytes = b"", chunks: tuple[bytes, ...] | None = None) -> rawhttp.Response:
        full = self.fill(head).rstrip("\r\n") + "\r\nConnection: close"
        return rawhttp.request(self.port, full, body, chunks=None if chunks is None else list(chunks), timeout=20)

    def get(self, target: str, *headers: str) -> rawhttp.Response:
        return self.send("\r\n".join([f"GET {target} HTTP/1.1", "Host: 127.0.0.1:<port>", *headers]))


# ---- the server ----------------------------------------------------------------------------


def _secret_png(path: Path) -> None:
    info = PngInfo()
    info.add_text("secret", MARKER)
    Image.new("RGB", (32, 32), (250, 200, 10)).save(path, pnginfo=info)


def _env(home: Path, tiny: tinyclip.TinyCheckpoint) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    return clean | {"IMGSEARCH_HOME": str(home), "PYTHONUNBUFFERED": "1", **tiny_env(tiny)}


@dataclass
class Process:
    proc: subprocess.Popen[str]
    output: list[str]
    url: str


def _start(args: list[str], env: dict[str, str], cwd: Path) -> Process:
    """`imgsearch ARGS`, once it has printed its URL and answers on it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsearch", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if re.search(r"serving http://", line):
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    found.wait(60)
    match = next((re.search(r"(http://\S+)", line) for line in output if "serving" in line), None)
    if match is None:
        _stop(proc)
        pytest.fail("imgsearch serve printed no URL:\n" + "".join(output))
    served = Process(proc, output, match.group(1))
    try:
        _wait_listening(served)
    except BaseException:
        proc.kill()
        raise
    return served


def _wait_listening(served: Process) -> None:
    port = int(re.search(r":(\d+)/", served.url).group(1))  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except ConnectionRefusedError:  # the URL is printed just before uvicorn listens
            time.sleep(0.05)
    pytest.fail("imgsearch serve never listened:\n" + "".join(served.output))


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("imgsearch serve ignored SIGTERM")


@pytest.fixture(scope="module")
def site(tiny: tinyclip.TinyCheckpoint, tiny_embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("websec")
    folder = root / "library"
    draw_shapes(folder, per_class=1)
    victim = folder / "victim.png"
    shutil.copy(folder / "red-circle-0.png", victim)
    (root / "secret.txt").write_text(MARKER + "\n")
    _secret_png(root / "secret.png")
    home = root / "home"
    with Library(load_settings(home, overrides=tiny_overrides(tiny), environ={}), embedder=tiny_embedder) as lib:
        lib.index([folder])
        image_id, victim_id = lib.image_id_of(folder / "blue-square-0.png"), lib.image_id_of(victim)
        images = lib.status().images
    assert image_id is not None and victim_id is not None
    env = _env(home, tiny) | {"IMGSEARCH_SERVE__MAX_UPLOAD_MB": str(MAX_UPLOAD_MB)}
    served = _start(["serve", "--port", "0"], env, root)
    try:
        token = json.loads((home / "serve.json").read_text())["token"]
        port = int(urlsplit(served.url).port or 0)  # the printed URL carries the token: the owner's way in
        secrets = root / "secret.txt", root / "secret.png"
        yield Site(port, token, home, folder, *secrets, victim, image_id, victim_id, images, served.output)
    finally:
        _stop(served.proc)


# ---- the attacks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    head: str  # request line and headers, with <port> <token> <id> <secret> <secret-png> <root> to fill in
    refused: tuple[int, ...]  # the statuses that count as refused (200: answered, but see hits_inside)
    body: bytes = b""
    chunks: tuple[bytes, ...] | None = None
    hits_inside: bool = False  # a 200 answer names only images of the indexed folder


def get(target: str, *headers: str, refused: tuple[int, ...] = (404,), host: str = "127.0.0.1:<port>") -> Attack:
    return Attack("\r\n".join([f"GET {target} HTTP/1.1", f"Host: {host}", *headers]), refused)


def query(target: str, refused: tuple[int, ...] = (200,)) -> Attack:
    return Attack(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:<port>", refused, hits_inside=True)


def host(value: str, refused: tuple[int, ...] = (421,)) -> Attack:
    return get("/api/status", refused=refused, host=value)


def post(target: str, *headers: str, body: bytes = TAG_BODY, refused: tuple[int, ...] = (403,)) -> Attack:
    kind = [] if any(h.lower().startswith("content-type") for h in headers) else ["Content-Type: application/json"]
    lines = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1:<port>", *kind, *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return Attack("\r\n".join(lines), refused, body=body)


def upload(*headers: str, refused: tuple[int, ...] = (413,), chunks: tuple[bytes, ...] | None = None) -> Attack:
    lines = ["POST /api/search/image HTTP/1.1", "Host: 127.0.0.1:<port>", MULTIPART, *headers]
    return Attack("\r\n".join(lines), refused, chunks=chunks)


def method(verb: str, target: str, *headers: str) -> Attack:
    return Attack("\r\n".join([f"{verb} {target} HTTP/1.1", "Host: 127.0.0.1:<port>", *headers]), (405,))


TAGS = "/api/images/<id>/tags"
TOKEN = "X-Imgsearch-Token: <token>"
MULTIPART = "Content-Type: multipart/form-data; boundary=xx"
CHUNKED = "Transfer-Encoding: chunked"
UPLOAD_START = (
    b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
)
TOO_BIG = (UPLOAD_START, *(b"\x00" * 8192 for _ in range(LIMIT // 8192 + 4)), b"\r\n--xx--\r\n")  # > LIMIT


def _bomb_png(side: int = 50_000) -> bytes:
    """The head of a PNG claiming side x side pixels (2.5 gigapixels), with one row of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", zlib.compress(bytes(side + 1))) + chunk(b"IEND", b"")


def _multipart(data: bytes) -> bytes:
    return UPLOAD_START + data + b"\r\n--xx--\r\n"


HUGE_ID = "99999999999999999999"
ATTACKS: list[Any] = [
    # path traversal: nothing in a request names a file
    pytest.param(get("/static/../../../etc/passwd"), id="static-dotdot"),
    pytest.param(get("/static/..%2f..%2f..%2fetc%2fpasswd"), id="static-encoded-slash"),
    pytest.param(get("/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"), id="static-encoded-dots"),
    pytest.param(get("/static/%252e%252e%252f%252e%252e%252fsecret.txt"), id="static-double-encoded"),
    pytest.param(get("/static/..\\..\\secret.txt", refused=(400, 404)), id="static-backslash"),
    pytest.param(get("/static/..%5c..%5csecret.txt"), id="static-encoded-backslash"),
    pytest.param(get("/static/index.html%00.png"), id="static-nul"),
    pytest.param(get("/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd", refused=(400, 404)), id="static-overlong-utf8"),
    pytest.param(get("/static//etc/passwd"), id="static-absolute"),
    pytest.param(get("/static/<secret>"), id="static-absolute-secret"),
    pytest.param(get("/static/..%2fsecret.txt"), id="static-one-up"),
    pytest.param(get("/%2e%2e/%2e%2e/%2e%2e/etc/passwd"), id="root-encoded-dots"),
    pytest.param(get("//etc/passwd"), id="root-double-slash"),
    pytest.param(get("/..;/secret.txt"), id="root-dotdot-semicolon"),
    pytest.param(get("<secret>"), id="root-secret-path"),
    pytest.param(get("/api/images/../../etc/passwd"), id="images-dotdot"),
    pytest.param(get("/api/images/<id>/../../../secret.txt"), id="images-id-dotdot"),
    pytest.param(get("/api/images/<id>/file/../../../../secret.txt"), id="file-dotdot"),
    pytest.param(get("/api/images/<id>%2f..%2f..%2fsecret.txt/file"), id="images-id-encoded-slash"),
    pytest.param(get("/api/images/<id>/thumbnail/..%2f..%2fsecret.txt"), id="thumbnail-encoded-slash"),
    pytest.param(get("/api/images/-1/file", refused=(422,)), id="images-negative-id"),
    pytest.param(get("/api/images/1.5/file", refused=(422,)), id="images-fractional-id"),
    pytest.param(get(f"/api/images/{HUGE_ID}/file", refused=(422,)), id="images-huge-id-file"),
    pytest.param(get(f"/api/images/{HUGE_ID}", refused=(422,)), id="images-huge-id"),
    pytest.param(get("/api/images/%2e%2e/file", refused=(422,)), id="images-dotdot-id"),
    pytest.param(get("/api/images/<id>%00/file", refused=(422,)), id="images-nul-id"),
    pytest.param(get("/api/images/0x1/file", refused=(422,)), id="images-hex-id"),
    pytest.param(get("/api/jobs/../../etc/passwd/image"), id="jobs-dotdot"),
    pytest.param(get("/api/jobs/%2e%2e%2f%2e%2e%2fsecret.txt/image"), id="jobs-encoded-dotdot"),
    pytest.param(get("/api/jobs/<secret>/image"), id="jobs-secret-path"),
    # the query string: text is never a file name on the server, a prefix never widens the library
    pytest.param(query("/api/search?q=/etc/passwd"), id="search-q-passwd"),
    pytest.param(query("/api/search?q=../secret.txt"), id="search-q-relative"),
    pytest.param(query("/api/search?q=<secret-png>", refused=(200, 400)), id="search-q-secret-png"),
    pytest.param(query("/api/search?q=red+circle+%2B+<secret-png>", refused=(200, 400)), id="search-q-plus-file"),
    pytest.param(query("/api/search?path_prefix=/"), id="browse-prefix-root"),
    pytest.param(query("/api/search?path_prefix=<root>"), id="browse-prefix-parent"),
    pytest.param(query("/api/search?path_prefix=../"), id="browse-prefix-relative"),
    pytest.param(query("/api/search?q=square&path_prefix=/"), id="search-prefix-root"),
    pytest.param(query("/api/match?q=<secret-png>"), id="match-secret-png"),
    # absolute-form request targets
    pytest.param(get("http://evil.com/api/status", refused=(400, 404, 421)), id="absolute-form-evil"),
    pytest.param(get("http://127.0.0.1:<port>/static/../../secret.txt", refused=(400, 404)), id="absolute-form-dotdot"),
    pytest.param(get("http://127.0.0.1:<port>/api/status", host="evil.com", refused=(421,)), id="absolute-form-host"),
    # Host headers: DNS rebinding and its disguises
    pytest.param(host("evil.com"), id="host-evil"),
    pytest.param(host("evil.com:<port>"), id="host-evil-port"),
    pytest.param(host("127.0.0.1.evil.com"), id="host-loopback-prefix"),
    pytest.param(host("localhost.evil.com"), id="host-localhost-prefix"),
    pytest.param(host("127.0.0.1:<port>@evil.com"), id="host-userinfo"),
    pytest.param(host("evil.com@127.0.0.1:<port>"), id="host-userinfo-reversed"),
    pytest.param(host("[::1].evil.com"), id="host-ipv6-prefix"),
    pytest.param(host("[::ffff:127.0.0.1]:<port>"), id="host-ipv4-mapped"),
    pytest.param(host("0.0.0.0"), id="host-any"),
    pytest.param(host("0.0.0.0:<port>"), id="host-any-port"),
    pytest.param(host("2130706433"), id="host-decimal-ip"),
    pytest.param(host("0x7f000001"), id="host-hex-ip"),
    pytest.param(host("127.1"), id="host-short-ip"),
    pytest.param(host("127.0.0.2:<port>"), id="host-other-loopback"),
    pytest.param(host("127.0.0.1:1"), id="host-other-port"),
    pytest.param(host("localhost:99999"), id="host-port-out-of-range"),
    pytest.param(host("localhost:<port>:<port>"), id="host-two-ports"),
    pytest.param(host("localhost:<port> evil.com"), id="host-space"),
    pytest.param(host("", refused=(400, 421)), id="host-empty"),
    pytest.param(Attack("GET /api/status HTTP/1.1", (400,)), id="host-missing-http11"),
    pytest.param(Attack("GET /api/status HTTP/1.0", (400,)), id="host-missing-http10"),
    pytest.param(get("/api/status", "Host: evil.com", refused=(400,)), id="host-twice"),
    # changes: POST with the token, from this origin only; no other method at all
    pytest.param(post(TAGS), id="post-no-token"),
    pytest.param(post(TAGS, "X-Imgsearch-Token: wrong"), id="post-wrong-token"),
    pytest.param(post(TAGS, "X-Imgsearch-Token: "), id="post-empty-token"),
    pytest.param(post(TAGS, TOKEN, "X-Imgsearch-Token: wrong"), id="post-two-tokens"),
    pytest.param(post(TAGS + "?token=<token>"), id="post-token-in-query"),
    pytest.param(post(TAGS, f"Cookie: {COOKIE}=<token>"), id="post-token-in-cookie"),
    pytest.param(post(TAGS, TOKEN, "Origin: http://evil.com"), id="post-foreign-origin"),
    pytest.param(post(TAGS, TOKEN, "Origin: null"), id="post-null-origin"),
    pytest.param(post(TAGS, TOKEN, "Origin: http://127.0.0.1:<port>.evil.com"), id="post-lookalike-origin"),
    pytest.param(post(TAGS, TOKEN, "Origin: http://127.0.0.1:1"), id="post-other-port-origin"),
    pytest.param(post(TAGS, TOKEN, "Sec-Fetch-Site: cross-site"), id="post-cross-site"),
    pytest.param(post(TAGS, TOKEN, "Sec-Fetch-Site: same-site"), id="post-same-site"),
    pytest.param(post("/api/generate", body=b'{"prompt": "pwned"}'), id="generate-no-token"),
    pytest.param(post("/api/label", MULTIPART, body=_multipart(b"x")), id="label-no-token"),
    pytest.param(
        post("/api/search/image", TOKEN, MULTIPART, body=_multipart(_bomb_png()), refused=(400, 422)), id="upload-bomb"
    ),
    pytest.param(
        post("/api/label", TOKEN, MULTIPART, body=_multipart(_bomb_png()), refused=(400, 422)), id="label-bomb"
    ),
    pytest.param(
        post("/api/search/image", TOKEN, MULTIPART, body=_multipart(b"<html>"), refused=(400, 422)), id="upload-html"
    ),
    pytest.param(
        post("/api/search/image", TOKEN, MULTIPART, body=_multipart(b""), refused=(400, 422)), id="upload-empty"
    ),
    pytest.param(get(TAGS, refused=(405,)), id="get-tags"),
    pytest.param(get("/api/generate", refused=(405,)), id="get-generate"),
    pytest.param(method("PUT", TAGS), id="put"),
    pytest.param(method("DELETE", "/api/images/<id>"), id="delete"),
    pytest.param(method("PATCH", TAGS), id="patch"),
    pytest.param(method("OPTIONS", TAGS, "Origin: http://evil.com", "Access-Control-Request-Method: POST"), id="cors"),
    pytest.param(method("OPTIONS", "*"), id="options-star"),
    pytest.param(method("TRACE", "/"), id="trace"),
    pytest.param(method("CONNECT", "evil.com:443"), id="connect"),
    # bodies: refused before they are read, or as soon as they grow past serve.max_upload_mb
    pytest.param(upload(TOKEN, "Content-Length: 10000000"), id="upload-length"),
    pytest.param(upload(TOKEN, f"Content-Length: {LIMIT + 1}"), id="upload-length-just-over"),
    pytest.param(upload(TOKEN, "Content-Length: -1", refused=(400, 413)), id="upload-length-negative"),
    pytest.param(upload(TOKEN, "Content-Length: 1e9", refused=(400, 413)), id="upload-length-float"),
    pytest.param(upload("Content-Length: 10000000", refused=(403, 413)), id="upload-length-no-token"),
    pytest.param(upload(TOKEN, "Content-Length: \xb2", refused=(400, 413)), id="upload-length-superscript"),
    pytest.param(upload(TOKEN, CHUNKED, refused=(400, 413, 0), chunks=TOO_BIG), id="upload-chunked"),
    pytest.param(upload(TOKEN, CHUNKED, "Content-Length: 10", refused=(400, 413, 0), chunks=TOO_BIG), id="smuggle"),
]


def send(site: Site, attack: Attack) -> rawhttp.Response:
    return site.send(attack.head, attack.body, attack.chunks)


def assert_harmless(site: Site, attack: Attack, response: rawhttp.Response) -> None:
    """Nothing secret in the answer, nothing granted to other origins, and only library images named."""
    raw = response.raw
    assert MARKER.encode() not in raw and site.secret_png.read_bytes() not in raw
    assert PASSWD not in raw
    assert site.token.encode() not in raw
    assert "access-control-allow-origin" not in response.headers
    if attack.hits_inside and response.status == 200:
        for path in _paths(json.loads(response.body)):
            assert path.startswith(str(site.folder) + os.sep), path


def _paths(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("path", "best_path") and value is not None:
                yield value
            else:
                yield from _paths(value)
    elif isinstance(data, list):
        for item in data:
            yield from _paths(item)


def test_at_least_thirty_attacks() -> None:
    assert len(ATTACKS) >= 30
    assert len({p.id for p in ATTACKS}) == len(ATTACKS)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_refused(site: Site, attack: Attack) -> None:
    response = send(site, attack)
    assert_harmless(site, attack, response)
    assert response.status in attack.refused, response.raw[:300]


def test_server_survives_every_attack_and_nothing_changed(site: Site) -> None:
    for param in ATTACKS:
        assert_harmless(site, param.values[0], send(site, param.values[0]))
    status = site.get("/api/status")
    assert status.status == 200 and json.loads(status.body)["images"] == site.images
    tags = json.loads(site.get("/api/tags").body)
    assert "pwned" not in {t["label"] for t in tags}


def test_chunked_body_past_the_limit_is_413(site: Site) -> None:
    response = send(site, upload(TOKEN, CHUNKED, chunks=TOO_BIG))
    assert response.status in (413, 0)


# ---- what must still work ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["127.0.0.1:<port>", "localhost:<port>", "LOCALHOST", "LocalHost:<port>", "[::1]:<port>", "localhost"]
)
def test_loopback_hosts_are_allowed(site: Site, value: str) -> None:
    response = site.send(f"GET /api/status HTTP/1.1\r\nHost: {value}")
    assert response.status == 200 and json.loads(response.body)["images"] == site.images


def test_change_with_token_from_own_origin_works(site: Site) -> None:
    same_origin = (TOKEN, "Origin: http://127.0.0.1:<port>", "Sec-Fetch-Site: same-origin")
    added = send(site, post(TAGS, *same_origin, body=b'{"label": "kept", "present": true}'))
    assert added.status == 200, added.raw[:300]
    assert [(t["label"], t["source"]) for t in json.loads(added.body)["tags"]] == [("kept", "hand")]
    removed = send(site, post(TAGS, TOKEN, body=b'{"label": "kept", "present": false}'))
    assert removed.status == 200 and json.loads(removed.body)["tags"] == []


def test_upload_under_the_limit_is_searched(site: Site) -> None:
    picture = (site.folder / "green-triangle-0.png").read_bytes()
    assert len(picture) < LIMIT
    response = send(site, post("/api/search/image", TOKEN, MULTIPART, body=_multipart(picture)))
    assert response.status == 200, response.raw[:300]
    hits = json.loads(response.body)["hits"]
    assert hits and all(h["path"].startswith(str(site.folder)) for h in hits)


def test_huge_content_length_is_refused_without_reading_the_body(site: Site) -> None:
    head = site.fill(upload(TOKEN, "Content-Length: 10000000").head)
    with socket.create_connection(("127.0.0.1", site.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + UPLOAD_START)
        answer = rawhttp.parse(sock.recv(65536))  # no more body comes: a server waiting for it times out here
    assert answer.status == 413


# ---- files on disk -------------------------------------------------------------------------


def test_original_is_served_as_an_image(site: Site) -> None:
    response = site.get("/api/images/<id>/file")
    assert response.status == 200
    assert response.header("content-type") == "image/png"
    assert response.body == (site.folder / "blue-square-0.png").read_bytes()
    assert response.header("x-content-type-options") == "nosniff"
    assert (response.header("content-disposition") or "inline").startswith("inline")


def test_symlink_swapped_in_after_indexing_does_not_leak(site: Site) -> None:
    saved = site.victim.read_bytes()
    site.victim.unlink()
    site.victim.symlink_to(site.secret_txt)
    try:
        response = site.get(f"/api/images/{site.victim_id}/file")
    finally:
        site.victim.unlink()
        site.victim.write_bytes(saved)
    assert MARKER.encode() not in response.raw


@pytest.mark.parametrize("target", ["/", "/api/status", "/api/images/<id>/file", "/no/such/page", "/static/app.js"])
def test_security_headers(site: Site, target: str) -> None:
    response = site.get(target)
    assert response.status in (200, 404)
    csp = response.header("content-security-policy") or ""
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert response.header("x-content-type-options") == "nosniff"
    assert response.header("x-frame-options") == "DENY"
    assert response.header("referrer-policy") == "no-referrer"


def test_refusals_carry_security_headers_and_a_json_detail(site: Site) -> None:
    response = site.send("GET /api/status HTTP/1.1\r\nHost: evil.com")
    assert response.status == 421
    assert response.header("x-frame-options") == "DENY" and response.header("content-security-policy")
    assert set(json.loads(response.body)) == {"detail"}


def test_page_carries_the_token_only_for_its_owner(site: Site) -> None:
    """The page hands out the token only to the browser that opened the URL `serve` printed (its cookie): any
    other local user can browse and search on loopback, and change nothing."""
    page = site.get("/")
    assert page.status == 200 and site.token.encode() not in page.body
    login = site.get("/?token=<token>")
    assert login.status == 303 and login.header("location") == "/"
    cookie = login.header("set-cookie").split(";")[0]
    mine = site.get("/", f"Cookie: {cookie}")
    assert mine.status == 200 and site.token.encode() in mine.body
    assert mine.header("cache-control") == "no-store"
    assert "access-control-allow-origin" not in mine.headers
    wrong = site.get("/?token=wrong")
    assert wrong.status == 401 and "set-cookie" not in wrong.headers


# ---- the discovery file --------------------------------------------------------------------


def test_discovery_file_is_private_while_serving(site: Site) -> None:
    path = site.home / "serve.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["url"] == f"http://127.0.0.1:{site.port}/"


def test_discovery_file_is_removed_on_sigterm(tmp_path: Path, tiny: tinyclip.TinyCheckpoint) -> None:
    home = tmp_path / "home"
    served = _start(["serve", "--port", "0"], _env(home, tiny), tmp_path)
    path = home / "serve.json"
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["pid"] == served.proc.pid
    finally:
        code = _stop(served.proc)
    assert code == 0, "".join(served.output)
    assert not path.exists()


# ---- refusing to start ---------------------------------------------------------------------


def _serve_fails(args: list[str], tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")} | {
        "IMGSEARCH_HOME": str(tmp_path / "home")
    }
    done = subprocess.run(
        [sys.executable, "-m", "imgsearch", "serve", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "serving" not in done.stdout
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not (tmp_path / "home" / "serve.json").exists()
    return lines[0]


def test_non_loopback_host_needs_public(tmp_path: Path) -> None:
    message = _serve_fails(["--host", "0.0.0.0", "--port", "0"], tmp_path)
    assert "0.0.0.0" in message and "--public" in message


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = _serve_fails(["--port", str(port)], tmp_path)
    assert str(port) in message


# ---- --public, in process ------------------------------------------------------------------

PUBLIC_TOKEN = "right-token"


@pytest.fixture
def public(lib: Library) -> TestClient:
    return TestClient(create_app(lib, token=PUBLIC_TOKEN, port=80, public=True), base_url="http://localhost")


@pytest.mark.parametrize(
    "target", ["/", "/api/status", "/api/search?q=cat", "/api/tags", "/openapi.json", "/static/app.js"]
)
def test_public_needs_the_token_everywhere(public: TestClient, target: str) -> None:
    response = public.get(target, follow_redirects=False)
    assert response.status_code == 401
    assert PUBLIC_TOKEN not in response.text
    assert public.get(target, headers={"Cookie": f"{COOKIE}=wrong"}).status_code == 401
    assert public.post(target, headers={"X-Imgsearch-Token": "wrong"}).status_code in (401, 403)


def test_public_accepts_the_header_or_the_cookie(public: TestClient) -> None:
    assert public.get("/api/status", headers={"X-Imgsearch-Token": PUBLIC_TOKEN}).json()["public"] is True
    public.cookies.set(COOKIE, PUBLIC_TOKEN)
    assert public.get("/api/status").status_code == 200
    assert public.get("/").status_code == 200


def test_public_cookie_alone_cannot_change_anything(public: TestClient) -> None:
    public.cookies.set(COOKIE, PUBLIC_TOKEN)
    response = public.post("/api/images/1/tags", json={"label": "pwned", "present": True})
    assert response.status_code == 403


def test_public_wrong_token_in_url_is_401(public: TestClient) -> None:
    response = public.get(f"/?token=wrong-{PUBLIC_TOKEN}", follow_redirects=False)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_public_printed_url_sets_a_strict_cookie(public: TestClient) -> None:
    response = public.get(f"/?token={PUBLIC_TOKEN}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={PUBLIC_TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert public.get("/api/status").status_code == 200  # the client kept the cookie


def _redirect(app: Any, raw_path: bytes) -> tuple[int, dict[bytes, bytes]]:
    """The Guard's answer to a GET with `?token=`, carrying the cookie already (asked without a client)."""
    path = raw_path.decode()
    scope = {
        "type": "http",
        "method": "GET",
        "path": re.sub("%2F", "/", path, flags=re.I),
        "raw_path": raw_path,
        "query_string": f"token={PUBLIC_TOKEN}".encode(),
        "headers": [(b"host", b"localhost"), (b"cookie", f"{COOKIE}={PUBLIC_TOKEN}".encode())],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def collect(message: Any) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, collect))
    return sent[0]["status"], dict(sent[0].get("headers", []))


@pytest.mark.parametrize("raw_path", [b"//evil.com/", b"/%2F%2Fevil.com/", b"/\\evil.com/"])
def test_public_token_redirect_stays_on_this_server(lib: Library, raw_path: bytes) -> None:
    status, headers = _redirect(create_app(lib, token=PUBLIC_TOKEN, port=80, public=True), raw_path)
    assert status == 303
    location = headers[b"location"].decode()
    assert location.startswith("/") and not location.startswith(("//", "/\\"))

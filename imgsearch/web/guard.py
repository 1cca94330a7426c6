"""The server's gatekeeper: an ASGI middleware every request passes before any route sees it.

- Host: only localhost, 127.0.0.1 and [::1] (and the names in serve.allowed_hosts), on the server's
  own port. A web page on another origin that re-points its DNS name at 127.0.0.1 (DNS rebinding)
  still sends its own name as Host, and is refused.
- Sec-Fetch-Site: an API request a browser says comes from another site (or another origin of this one) is
  refused, GETs too: a page elsewhere must not make a visitor's browser search (each new prompt is a model call).
- Token: every POST carries the session token in an X-Imgsearch-Token header; a cross-site page can
  neither read the token nor send that header without a CORS preflight, which is never granted. An
  Origin header, when sent, must be the server's own. The page carries the token only for the browser that
  opened the URL `serve` printed (a cookie that visit sets): on a machine shared with other users, they can
  browse and search on loopback but change nothing. With `serve --public` every request needs the token
  (header, or that cookie).
- Bodies: larger than serve.max_upload_mb are refused before they are read (Content-Length) or as
  soon as they grow past it (chunked).
- Responses get a strict Content-Security-Policy and no-sniff, no-referrer, no-framing headers.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_HEADER = "x-imgsearch-token"
COOKIE = "imgsearch_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
METHODS = frozenset({"GET", "HEAD", "POST"})
_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::([0-9]{1,5}))?$")

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Guard:
    """Refuses what must never reach a route; see the module docstring."""

    def __init__(
        self, app: ASGIApp, *, token: str, port: int, public: bool, hosts: Iterable[str], max_body: int
    ) -> None:
        self.app = app
        self.token = token
        self.port = port
        self.public = public
        self.hosts = frozenset(h.lower() for h in (*LOOPBACK_NAMES, *hosts))
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here
            return
        try:
            self.check(scope)
        except Refused as refused:
            await _refuse(send, refused.status, refused.detail)
            return
        if _query_token(scope) is not None and scope["method"] == "GET":
            await self._set_cookie_and_redirect(scope, send)
            return
        answered = [False]  # set once the Guard has refused a body that grew too large
        await self.app(scope, self._limited(receive, send, answered), _with_headers(send, answered))

    def check(self, scope: Scope) -> None:
        headers = _headers(scope)
        self._check_host(headers.get("host", []))
        method = scope["method"]
        if method not in METHODS:
            raise Refused(405, f"method {method} is not allowed")
        logging_in = method == "GET" and _query_token(scope) is not None  # checked by _set_cookie_and_redirect
        if (
            self.public
            and not logging_in
            and not self._valid(headers.get(TOKEN_HEADER))
            and not self._valid(_cookie(headers))
        ):
            raise Refused(401, "this server needs its token: open the URL `imgsearch serve` printed")
        if method == "POST":
            self._check_post(headers)
        elif scope["path"].startswith("/api/") and not _same_origin(headers):
            # A page elsewhere may make a browser GET the API (an <img>, a fetch without CORS): each new prompt
            # costs a model call. The browser says where a request comes from; tools (curl, `query`) say nothing.
            raise Refused(403, "cross-site request refused")
        length = headers.get("content-length", [""])[0]
        if length and (not length.isdigit() or int(length) > self.max_body):
            raise Refused(413, self._too_large())

    def _too_large(self) -> str:
        return f"request body over {self.max_body / 2**20:g} MB (serve.max_upload_mb)"

    def _check_host(self, values: list[str]) -> None:
        if len(values) != 1:
            raise Refused(400, "exactly one Host header is needed")
        match = _HOST.match(values[0].strip().lower())
        if not match or match.group(1) not in self.hosts:
            raise Refused(421, "unknown Host header (add it to serve.allowed_hosts if it is yours)")
        port = match.group(2)
        if port is not None and int(port) != self.port:
            raise Refused(421, "Host header names another port")

    def _check_post(self, headers: dict[str, list[str]]) -> None:
        if not self._valid(headers.get(TOKEN_HEADER)):
            raise Refused(403, "a change needs the X-Imgsearch-Token header (the page sends it)")
        origin = headers.get("origin", [None])[0]
        if origin is not None and not self._own_origin(origin, headers["host"][0]):
            raise Refused(403, "cross-origin request refused")
        if not _same_origin(headers):
            raise Refused(403, "cross-site request refused")

    def _own_origin(self, origin: str, host: str) -> bool:
        return origin.lower() in (f"http://{host.strip().lower()}", f"https://{host.strip().lower()}")

    def _valid(self, values: list[str] | str | None) -> bool:
        if isinstance(values, list):
            values = values[0] if len(values) == 1 else None
        return bool(values) and hmac.compare_digest(values.encode(), self.token.encode())  # type: ignore[union-attr]

    def _limited(self, receive: Receive, send: Send, answered: list[bool]) -> Receive:
        """Counts a body as it arrives; past the limit, answers 413 itself and tells the app the client left."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            if answered[0]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    answered[0] = True
                    await _refuse(send, 413, self._too_large())
                    return {"type": "http.disconnect"}
            return message

        return limited

    async def _set_cookie_and_redirect(self, scope: Scope, send: Send) -> None:
        if not self._valid(_query_token(scope)):
            await _refuse(send, 401, "wrong token")
            return
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        # Always to the page itself: a path from the request could be "//elsewhere.example/".
        headers = [(b"location", b"/"), (b"set-cookie", cookie.encode()), *SECURITY_HEADERS]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _headers(scope: Scope) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


def _cookie(headers: dict[str, list[str]]) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    for value in headers.get("cookie", []):
        try:
            jar.load(value)
        except Exception:  # a malformed cookie header is no token
            return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel else None


def _query_token(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def _with_headers(send: Send, answered: list[bool]) -> Send:
    async def wrapped(message: Message) -> None:
        if answered[0]:
            return  # the Guard has answered this request already
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
        await send(message)

    return wrapped


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})


def _same_origin(headers: dict[str, list[str]]) -> bool:
    """The browser's own word (Sec-Fetch-Site) that the request comes from the server's page or the user; a request
    without it (curl, `imgsearch query`) is not a browser's."""
    return headers.get("sec-fetch-site", ["same-origin"])[0] in ("same-origin", "none")


def owner(headers: Iterable[tuple[bytes, bytes]], token: str) -> bool:
    """Whether a request carries the session cookie (its browser opened the URL `serve` printed)."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        found.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    cookie = _cookie(found)
    return bool(cookie) and hmac.compare_digest(cookie.encode(), token.encode())  # type: ignore[union-attr]

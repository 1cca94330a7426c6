"""How the CLI finds a running `imgsearch serve` and asks it, so that a query costs no model load.

The server writes HOME/serve.json (its URL, token, process id and a fingerprint of the settings
that decide results) while it runs. A query is sent there only when that process is alive and the
fingerprints agree; anything else (no file, a stale one, a refused connection, a server error) and
the CLI answers by itself, so asking the server can never make a query fail or differ. Standard
library only: importing this must cost nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from imgsearch.config import Settings
from imgsearch.errors import UsageError
from imgsearch.types import Hit

TIMEOUT = 30.0  # a cold server may still be loading the model
CONNECT_TIMEOUT = 0.5


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    pid: int
    fingerprint: str


def fingerprint(settings: Settings) -> str:
    """A digest of every setting that can change a query's answer (all but the serve section)."""
    items = [(key, value) for key, value, _ in settings.items() if not key.startswith("serve.")]
    return hashlib.sha256(repr((str(settings.home), items)).encode()).hexdigest()[:32]


def announce(settings: Settings, server: Server) -> str | None:
    """Write the discovery file, readable by this user only (it holds the token). Returns why it could not be
    written (a read-only home), or None: the server runs either way, `query` then answers by itself."""
    path = settings.server_file
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(server.__dict__, out)
        os.replace(tmp, path)
    except OSError as exc:
        return f"cannot write {path} ({exc.strerror or exc}): `imgsearch query` will not ask this server"
    return None


def withdraw(settings: Settings) -> None:
    """Remove the discovery file if it is still this process's."""
    found = running(settings, check_alive=False)
    if found is not None and found.pid == os.getpid():
        with suppress(OSError):
            settings.server_file.unlink()


def running(settings: Settings, check_alive: bool = True) -> Server | None:
    """The server announced for this home, if its process is alive."""
    try:
        data = json.loads(settings.server_file.read_text(encoding="utf-8"))
        server = Server(str(data["url"]), str(data["token"]), int(data["pid"]), str(data["fingerprint"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if check_alive and not _alive(server.pid):
        return None
    return server


def query(
    settings: Settings,
    text: str,
    *,
    k: int | None,
    path_prefix: str | None,
    tags: Sequence[str],
    include_generated: bool,
    **filters: str,
) -> list[Hit] | None:
    """Hits from a running server for the same settings, or None: then the caller searches itself.

    filters: the photo filters and sort as given (after, before, camera, place, sort), which the server reads
    as `query` does. A query the server rejects (bad syntax) raises UsageError with the server's message, as a
    local search would.
    """
    server = running(settings) if settings.serve.query_via_server else None
    if server is None or server.fingerprint != fingerprint(settings):
        return None
    params: list[tuple[str, str]] = [("q", text), ("limit", str(k or settings.search.top_k))]
    params += [("tag", t) for t in tags]
    if path_prefix is not None:
        params.append(("path_prefix", str(Path(path_prefix).expanduser().resolve())))
    if include_generated:
        params.append(("include_generated", "true"))
    params += sorted(filters.items())
    answer = _get(server, "/api/search?" + urlencode(params))
    if answer is None:
        return None
    return [_hit(h) for h in answer["hits"]]


def _hit(h: dict) -> Hit:
    fields = {name: h.get(name) for name in ("raw", "taken", "taken_source", "camera", "lens", "place", "lat", "lon")}
    return Hit(int(h["id"]), str(h["path"]), float(h["score"]), copies=int(h.get("copies") or 0), **fields)


def _get(server: Server, target: str) -> dict | None:
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=CONNECT_TIMEOUT)
    try:
        conn.connect()
        conn.sock.settimeout(TIMEOUT)
        conn.request("GET", target, headers={"X-Imgsearch-Token": server.token, "Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return _decode(response.status, body)


def _decode(status: int, body: bytes) -> dict | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if status == 400 and isinstance(data, dict):
        raise UsageError(str(data.get("detail", "bad query")))
    return data if status == 200 and isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True

"""HTTP/1.x over a bare TCP socket, for requests no client library would send as written.

httpx, urllib and TestClient normalise the request target (dot segments, percent-encoding) and
set the Host header themselves, which is exactly what a security test must not let them do.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class Response:
    status: int  # 0: the server closed the connection without answering
    headers: dict[str, list[str]]  # lower-case names
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def request(
    port: int,
    head: str | bytes,
    body: bytes = b"",
    *,
    chunks: list[bytes] | None = None,
    timeout: float = 10.0,
) -> Response:
    """Send `head` (the request line and headers; the blank line is added) and read until the server closes.

    `head` goes out byte for byte (str as latin-1), so each request should say `Connection: close`.
    With `chunks`, each is sent as one chunk of a chunked body after the head, stopping quietly
    if the server hangs up early (a refused upload).
    """
    raw_head = head.encode("latin-1") if isinstance(head, str) else head
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw_head.rstrip(b"\r\n") + b"\r\n\r\n" + body)
        if chunks is not None:
            _send_chunks(sock, chunks)
        return parse(_read_all(sock))


def _send_chunks(sock: socket.socket, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
    return bytes(data)


def parse(raw: bytes) -> Response:
    """One response as read off the wire (a chunked body is decoded)."""
    if not raw:
        return Response(0, {}, b"", raw)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        rest = _dechunk(rest)
    return Response(status, headers, rest, raw)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
